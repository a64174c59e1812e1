"""Start-up time of the commands a person types many times an hour, beside ASE's ``ase db``.

Each command runs as its own process, as from a shell, against a store (and an ASE
database) of the same ten crystals: a few warm-up runs, then ``--runs`` timed runs of
every command taken in turn (so that load from other processes falls on all of them
alike). Reported: the median and fastest wall time, the median CPU time (user + sys) of
the process, which other processes' load changes less than wall time, and that CPU time
beside the ASE command that does the same kind of work (help, or listing a store).

    .venv/bin/python benchmarks/cli_startup_benchmark.py --out benchmarks/cli_startup.md

``--before COMMIT`` adds ``workbench --help`` and ``sql`` of an older commit (checked out
in a temporary git worktree) to the table, for a before/after under the same load.
"""

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BUSY_CORES = 0.25  # other processes' average load above which the times are not an idle machine's


def cpu_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``argv``; a failed run stops the benchmark."""
    cpu, start = children_cpu(), time.perf_counter()
    done = subprocess.run(argv, check=False, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr}")
    return wall, children_cpu() - cpu


def prepare(folder: Path) -> tuple[dict[str, str], Path]:
    """A workbench store and an ASE database holding the same ten crystals."""
    import ase.db
    import ase.io
    from ase.build import bulk

    crystals = [bulk(symbol) for symbol in ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al", "Fe", "W", "Mo")]
    ase.io.write(folder / "crystals.extxyz", crystals)
    with ase.db.connect(folder / "crystals.db") as database:
        for atoms in crystals:
            database.write(atoms)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("WORKBENCH_", "MLFLOW_"))}
    env["WORKBENCH_HOME"] = str(folder / "home")
    for argv in (["init"], ["import", str(folder / "crystals.extxyz"), "--jobs", "1"]):
        subprocess.run([str(BIN / "workbench"), *argv], env=env, check=True, capture_output=True)
    return env, folder / "crystals.db"


def environment(load_before: float, other_cores: float, seconds: float) -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    git = ["git", "-C", str(REPO), "--no-optional-locks"]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "workbench"], check=True,
                           capture_output=True, text=True).stdout.splitlines()
    return [
        (f"- Machine: {os.cpu_count()} cores, CPU {cpu}; load average {load_before:.2f} at the start; "
         f"other processes kept {other_cores:.1f} cores busy on average during the runs"),
        f"- Python {platform.python_version()}, {platform.system()} {platform.release()}",
        f"- Code: commit {commit}" + (f" with uncommitted changes in {len(dirty)} files under workbench/"
                                      if dirty else ""),
        f"- Run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {seconds:.0f} s in all",
    ]


@contextmanager
def older_checkout(commit: str | None, scratch: Path) -> Iterator[Path | None]:
    """A git worktree of ``commit`` for the time of the benchmark (None: no commit given)."""
    if commit is None:
        yield None
        return
    folder = scratch / "before"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), commit],
                   check=True, capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)],
                       check=True, capture_output=True)


def peer_ratio(name: str, peers: dict[str, str], cpus: dict[str, list[float]]) -> str:
    if name not in peers:
        return ""
    ratio = statistics.median(cpus[name]) / statistics.median(cpus[peers[name]])
    return f"{ratio:.1f} x `{peers[name]}`"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs of each command")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs of each command first")
    parser.add_argument("--out", type=Path, help="write the markdown here (default: print it)")
    parser.add_argument("--before", help="also time --help and sql of this older commit")
    parser.add_argument("--before-runs", type=int, default=3, help="timed runs of the older commit's commands")
    args = parser.parse_args()

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch, older_checkout(args.before, Path(scratch)) as before:
        env, ase_file = prepare(Path(scratch))
        workbench, ase = str(BIN / "workbench"), str(BIN / "ase")
        # Each workbench command with the ASE command it is compared with.
        peers = {"workbench --help": "ase db --help", 'workbench sql "SELECT 1"': "ase db crystals.db",
                 "workbench status": "ase db crystals.db"}
        commands = {
            "workbench --help": ([workbench, "--help"], env),
            'workbench sql "SELECT 1"': ([workbench, "sql", "SELECT 1"], env),
            "workbench status": ([workbench, "status"], env),
            "ase db --help": ([ase, "db", "--help"], env),
            "ase db crystals.db": ([ase, "db", str(ase_file)], env),
        }
        older = {}
        if before:
            # The console script imports the package from PYTHONPATH ahead of the installed one.
            older_env = {**env, "PYTHONPATH": str(before)}
            older = {f"workbench --help at {args.before}": ([workbench, "--help"], older_env),
                     f'workbench sql "SELECT 1" at {args.before}': ([workbench, "sql", "SELECT 1"], older_env)}
        for _ in range(args.warmup):
            for argv, command_env in commands.values():
                timed(argv, command_env)
        load_before = os.getloadavg()[0]
        walls = {name: [] for name in {**commands, **older}}
        cpus = {name: [] for name in {**commands, **older}}
        busy, ours, clock = cpu_busy_seconds(), children_cpu(), time.perf_counter()
        for run in range(args.runs):
            for name, (argv, command_env) in {**commands, **(older if run < args.before_runs else {})}.items():
                wall, cpu = timed(argv, command_env)
                walls[name].append(wall)
                cpus[name].append(cpu)
        other_cores = max(0.0, (cpu_busy_seconds() - busy) - (children_cpu() - ours)) / (time.perf_counter() - clock)

    lines = [
        "# Command-line start-up",
        "",
        ("Written by `benchmarks/cli_startup_benchmark.py`: each command as its own process, against a store "
         f"and an ASE database of the same ten crystals; {args.warmup} warm-up runs, then {args.runs} timed runs "
         "of every command in turn. Aim: `workbench --help`, `sql` and `status` answer in under a second on an "
         "idle machine. CPU time is the process's own (user + sys): other processes' load changes it less "
         "than wall time."),
        "",
        *environment(load_before, other_cores, time.perf_counter() - started),
        *([(f"- Rows `at {args.before}`: the same commands at commit {args.before} (before the command line "
            f"imported its libraries lazily), {min(args.before_runs, args.runs)} timed runs")] if args.before else []),
        "",
        "| Command | Median wall s | Fastest wall s | Median CPU s | CPU beside ASE's |",
        "|---|---:|---:|---:|---|",
        *(f"| `{name}` | {statistics.median(walls[name]):.2f} | {min(walls[name]):.2f} | "
          f"{statistics.median(cpus[name]):.2f} | {peer_ratio(name, peers, cpus)} |" for name in walls),
        "",
    ]
    if other_cores > BUSY_CORES:
        lines += [(f"The machine was busy (other processes kept {other_cores:.1f} of its {os.cpu_count()} "
                   "cores busy): the times are upper bounds and the aim is not checked by this run. The ratios to "
                   "ASE's commands, measured under the same load, are the figures to compare; re-run on an idle "
                   "machine for the absolute times."), ""]
    text = "\n".join(lines)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
