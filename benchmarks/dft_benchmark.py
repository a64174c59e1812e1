"""The DFT runner's overhead over calling the calculator directly, and the cost per preset.

For each preset and structure, the same calculation runs twice: directly in this process
(ASE calculator, energy, forces and eigenvalues: what the job extracts) and through the
runner (a queued calculation: its own process, folder, heartbeats, ingest into a SQLite
store). Both use one thread. The runner's time is the calculation's ``wall_time_s``
(process start to result read) plus the ingest; the overhead is relative to direct.

    .venv/bin/python benchmarks/dft_benchmark.py --out benchmarks/dft.md
"""

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from ase import Atoms
from ase.build import bulk
from sqlalchemy import select
from threadpoolctl import threadpool_limits

from workbench.dft.job import atoms_from_record, build_calculator, extract
from workbench.dft.presets import BUILTIN_PRESETS, Preset
from workbench.dft.runner import RunOptions, job_record, queue_calculations, run_queued
from workbench.io.entries import Entry
from workbench.io.importer import import_entries
from workbench.io.readers import ReadOptions, read_entries
from workbench.io.structure_text import parse_structure_text
from workbench.store import migrate
from workbench.store.engine import make_engine, session_scope
from workbench.store.schema import Calculation, StructureSource
from workbench.structures.crystal import Crystal

REPO = Path(__file__).resolve().parents[1]
POOL = REPO / "workbench" / "examples" / "perovskites_pool.json.gz"


def perovskites(count: int) -> dict[str, Atoms]:
    """The first ``count`` bundled pool perovskites (5 atoms each), read as the importer does."""
    entries = read_entries(POOL, ReadOptions())[:count]
    return {f"pool-{entry.external_id}": parse_structure_text(entry.text, entry.text_format)[0].to_ase()
            for entry in entries}


def cu3au() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.75, cubic=True)
    atoms[0].symbol = "Au"
    return atoms


def direct_seconds(preset: Preset, atoms: Atoms, workdir: Path) -> float:
    """One calculation in this process, doing what the job does."""
    record = job_record(preset, Crystal.from_ase(atoms), 0, RunOptions(workdir=workdir))
    workdir.mkdir(parents=True, exist_ok=True)
    # One BLAS thread, like the runner's jobs (RunOptions.threads=1).
    with threadpool_limits(limits=1):
        started = time.perf_counter()
        job_atoms = atoms_from_record(record["structure"])
        calculator = build_calculator(record, workdir)
        job_atoms.calc = calculator
        extract(job_atoms, calculator, record["dos"])
        return time.perf_counter() - started


def runner_seconds(preset: Preset, structures: dict[str, Atoms], root: Path) -> dict[str, tuple[float, float, float]]:
    """``{name: (time computing inside the job, attempt wall time, whole run)}`` through
    the runner, in a new store under ``root``."""
    engine = make_engine(f"sqlite:///{root / 'store.db'}")
    migrate.upgrade(engine)
    entries = [Entry(row=name, external_id=name, crystal=Crystal.from_ase(atoms)) for name, atoms in structures.items()]
    import_entries(engine, entries, source="bench", file="benchmark", options=ReadOptions())
    with session_scope(engine) as session:
        ids = dict(session.execute(select(StructureSource.external_id, StructureSource.structure_id)).all())
    timings = {}
    for name in structures:
        queue_calculations(engine, [ids[name]], preset)
        started = time.perf_counter()
        report = run_queued(engine, preset, RunOptions(workdir=root / "dft", threads=1), references=False)
        whole = time.perf_counter() - started
        if report.failed:
            raise RuntimeError(f"{preset.name} {name} failed: {report.failed}")
        with session_scope(engine) as session:
            attempt, results = session.execute(select(Calculation.wall_time_s, Calculation.results).where(
                Calculation.structure_id == ids[name], Calculation.preset == preset.name)).one()
        timings[name] = (results["compute_s"], attempt, whole)
    engine.dispose()
    return timings


def measure(preset: Preset, structures: dict[str, Atoms], scratch: Path, repeats: int):
    """Best of ``repeats`` direct and runner timings per structure; which of the two goes
    first alternates, so that warm caches and clock drift favour neither."""
    direct: dict[str, float] = {}
    through_runner: dict[str, tuple[float, float, float]] = {}
    for repeat in range(repeats):
        for mode in ("direct", "runner") if repeat % 2 == 0 else ("runner", "direct"):
            if mode == "direct":
                for name, atoms in structures.items():
                    seconds = direct_seconds(preset, atoms, scratch / f"direct-{repeat}" / preset.name / name)
                    direct[name] = min(seconds, direct.get(name, seconds))
            else:
                timings = runner_seconds(preset, structures, scratch / f"{preset.name}-{repeat}")
                for name, timing in timings.items():
                    through_runner[name] = min(timing, through_runner.get(name, timing), key=lambda t: t[2])
    return direct, through_runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the markdown table here too")
    parser.add_argument("--perovskites", type=int, default=3)
    parser.add_argument("--production", action="store_true", help="also run the 'gpaw' preset (slow)")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many, order alternated")
    args = parser.parse_args()

    cases: list[tuple[Preset, dict[str, Atoms]]] = [
        (BUILTIN_PRESETS["emt"], {"Cu": bulk("Cu"), "Cu3Au": cu3au(), "Al": bulk("Al")}),
        (BUILTIN_PRESETS["gpaw-fast"], {"Si": bulk("Si"), "Fe": bulk("Fe"), **perovskites(args.perovskites)}),
    ]
    if args.production:
        cases.append((BUILTIN_PRESETS["gpaw"], {"Si": bulk("Si"), "Fe": bulk("Fe")}))

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for preset, structures in cases:
            direct, through_runner = measure(preset, structures, Path(scratch), args.repeats)
            for name, atoms in structures.items():
                rows.append((preset.name, name, atoms.get_chemical_formula(), len(atoms),
                             direct[name], *through_runner[name]))
            print(f"{preset.name}: done", flush=True)

    lines = [
        "# DFT runner overhead and cost per preset",
        "",
        (f"`benchmarks/dft_benchmark.py --production` on {platform.processor() or platform.machine()}, "
         f"{os.cpu_count()} cores, 1 thread per calculation, best of {args.repeats} (order alternated); "
         "GPAW 26.7 from PyPI (OpenBLAS, no MPI)."),
        "",
        ("direct: the calculator called in the benchmark's process (energy, forces, eigenvalues: what "
         "the job extracts). job compute: the same work timed inside the job process. attempt: the "
         "calculation's recorded wall time (process start to result read). whole: `run_queued` for "
         "that calculation, claim, heartbeats, store and ingest included. overhead = whole - direct."),
        "",
        "| preset | structure | formula | atoms | direct (s) | job compute (s) | attempt (s) | whole (s) | overhead (s) | overhead |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    totals: dict[str, list[float]] = {}
    for preset, name, formula, natoms, direct, compute, attempt, whole in rows:
        lines.append(f"| {preset} | {name} | {formula} | {natoms} | {direct:.2f} | {compute:.2f} | {attempt:.2f} | "
                     f"{whole:.2f} | {whole - direct:+.2f} | {100 * (whole - direct) / direct:+.1f} % |")
        total = totals.setdefault(preset, [0.0, 0.0, 0.0, 0])
        total[0] += direct
        total[1] += compute
        total[2] += whole
        total[3] += natoms
    lines += ["", ("| preset | calculations | direct, all (s) | runner, all (s) | overhead | "
                   "outside the job's compute | runner s per atom |"), "|---|---:|---:|---:|---:|---:|---:|"]
    for preset, (direct, compute, whole, natoms) in totals.items():
        count = sum(row[0] == preset for row in rows)
        lines.append(f"| {preset} | {count} | {direct:.1f} | {whole:.1f} | {100 * (whole - direct) / direct:+.1f} % | "
                     f"{(whole - compute) / count:.2f} s per calculation | {whole / natoms:.2f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
