"""Universal potentials through the DFT runner in batches, against GPAW's cost per structure.

What ``workbench dft run --preset sevennet --all`` does, over the perovskite pool
(``perov5/unlabeled_pool.json.gz`` in ``WORKBENCH_DATA_DIR``, 11,356 structures, 5 atoms
each): a fresh SQLite store, the pool imported, then per preset ``run_queued`` with the
elemental references first, ``--jobs`` worker processes of one thread each and the
preset's batches, formation energies at the end. ``--limit`` takes the first structures
of the pool only (the page then extrapolates to the whole pool, and says so). GPAW is
timed on ``--gpaw`` structures of the same pool through the same runner
(``gpaw-fast``, one process per calculation), under the same machine load.

    python benchmarks/universal_benchmark.py                 # whole pool, sevennet + chgnet
    python benchmarks/universal_benchmark.py --limit 1000 --presets chgnet
"""

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import select

from workbench.dft.presets import load_preset
from workbench.dft.runner import RunOptions, queue_calculations, run_queued
from workbench.io.importer import import_entries
from workbench.io.readers import ReadOptions, read_entries
from workbench.provenance import current, format_duration
from workbench.settings import Settings
from workbench.store import migrate
from workbench.store.engine import make_engine, session_scope
from workbench.store.schema import Calculation, CalculationStatus, StructureSource

REPO = Path(__file__).resolve().parents[1]
POOL = Settings().data_dir / "perov5" / "unlabeled_pool.json.gz"
POOL_SIZE = 11_356
SOURCE = "perov5-pool"


def import_pool(engine, limit: int | None) -> list[int]:
    """The pool's first ``limit`` structures (all by default) into the store; their ids."""
    entries = read_entries(POOL, ReadOptions())
    import_entries(engine, entries[:limit] if limit else entries, source=SOURCE, file=str(POOL),
                   options=ReadOptions())
    with session_scope(engine) as session:
        return list(session.scalars(select(StructureSource.structure_id).where(
            StructureSource.source == SOURCE).order_by(StructureSource.structure_id)))


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker processes)."""
    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def compute_seconds(engine, preset: str, structure_ids: list[int]) -> list[float]:
    """Each done calculation's own compute time (inside the worker, model loading excluded)."""
    with session_scope(engine) as session:
        results = session.scalars(select(Calculation.results).where(
            Calculation.preset == preset, Calculation.status == CalculationStatus.DONE,
            Calculation.structure_id.in_(structure_ids))).all()
    return [result["compute_s"] for result in results]


def run_preset(engine, name: str, structure_ids: list[int], workdir: Path, jobs: int) -> dict:
    preset = load_preset(name)
    queue_calculations(engine, structure_ids, preset)
    load_before = os.getloadavg()[0]
    started, cpu_before = time.perf_counter(), cpu_seconds()
    report = run_queued(engine, preset, RunOptions(workdir=workdir, jobs=jobs, threads=1))
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_before
    computes = compute_seconds(engine, name, structure_ids)
    return {
        "preset": name, "structures": len(structure_ids), "done": len(report.done), "failed": len(report.failed),
        "formation": report.formation_energies, "wall": wall, "per_structure": wall / len(structure_ids),
        "cpu_per_structure": cpu / len(structure_ids),
        "compute_median": statistics.median(computes) if computes else float("nan"),
        "batch": preset.batch_size, "load": (load_before + os.getloadavg()[0]) / 2,
        "references_missing": sorted(report.references_missing),
    }


def run_gpaw(engine, structure_ids: list[int], workdir: Path) -> dict:
    preset = load_preset("gpaw-fast")
    queue_calculations(engine, structure_ids, preset)
    load_before = os.getloadavg()[0]
    started, cpu_before = time.perf_counter(), cpu_seconds()
    report = run_queued(engine, preset, RunOptions(workdir=workdir, jobs=1, threads=1), references=False)
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_before
    return {"preset": "gpaw-fast", "structures": len(structure_ids), "done": len(report.done),
            "failed": len(report.failed), "wall": wall, "per_structure": wall / len(structure_ids),
            "cpu_per_structure": cpu / len(structure_ids),
            "compute_median": statistics.median(compute_seconds(engine, "gpaw-fast", structure_ids) or [float("nan")]),
            "load": (load_before + os.getloadavg()[0]) / 2}


def render(rows: list[dict], gpaw: dict | None, limit: int | None, jobs: int, wall: float) -> str:
    lines = [
        "# Universal potentials in batches, against GPAW",
        "",
        current().line(wall_seconds=wall),
        "",
        (f"`benchmarks/universal_benchmark.py{f' --limit {limit}' if limit else ''}`: the perovskite pool "
        f"(`perov5/unlabeled_pool.json.gz`, {POOL_SIZE:,} structures of 5 atoms) imported into a fresh SQLite "
        f"store, then what `workbench dft run --preset NAME --all --jobs {jobs}` does: the elemental references "
        f"first, {jobs} worker processes of one thread, each computing a batch of structures with the model "
        "loaded once, every structure ingested with its own attempt, formation energies at the end."),
        "",
        ("wall: the whole run (references, batches, model loading, ingest, formation energies). per structure: "
        "wall / structures. CPU: the CPU time of the runner and its worker processes per structure, model "
        "loading and ingest included; it does not grow when other processes share the cores, as wall time "
        "does. compute: the median time of one structure inside its worker (the model's own work, wall). "
        "load: the machine's 1-minute load average during the run (2 cores: above 2 means other processes "
        "shared them)."),
        "",
        ("| preset | structures | done | failed | formation energies | batch size | wall | per structure, wall (s) "
        f"| CPU per structure (s) | compute, median (s) | whole pool on {jobs} free cores, from CPU | load |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        pool = row["cpu_per_structure"] * POOL_SIZE / jobs
        lines.append(
            f"| {row['preset']} | {row['structures']:,} | {row['done']:,} | {row['failed']} | {row['formation']:,} "
            f"| {row['batch']} | {format_duration(row['wall'])} | {row['per_structure']:.3f} "
            f"| {row['cpu_per_structure']:.3f} | {row['compute_median']:.3f} | {format_duration(pool)} "
            f"| {row['load']:.1f} |")
    if gpaw is not None:
        pool = gpaw["cpu_per_structure"] * POOL_SIZE / jobs
        lines.append(
            f"| gpaw-fast (no references) | {gpaw['structures']} | {gpaw['done']} | {gpaw['failed']} | – | 1 "
            f"| {format_duration(gpaw['wall'])} | {gpaw['per_structure']:.1f} | {gpaw['cpu_per_structure']:.1f} "
            f"| {gpaw['compute_median']:.1f} | {format_duration(pool)} | {gpaw['load']:.1f} |")
    missing = sorted({element for row in rows for element in row["references_missing"]})
    references = rows[0]["done"] + rows[0]["failed"] - rows[0]["structures"] if rows else 0
    lines += [
        "",
        f"done counts the {references} elemental references computed first (each model its own)."
        if references else "",
        "",
        " ".join(f"gpaw-fast costs {gpaw['cpu_per_structure'] / row['cpu_per_structure']:,.0f} times the CPU "
                 f"of `{row['preset']}` per structure, measured under the same load." for row in rows)
        if gpaw is not None else "",
        "",
        (f"Whole pool on {jobs} free cores: CPU per structure × {POOL_SIZE:,} / {jobs}, the wall time of the run "
         "on cores nobody else uses. benchmarks/dft.md measured `gpaw-fast` at 20–23 s per 5-atom perovskite "
         "of this pool on an idle core."),
        "",
        ("Under a load far above the core count, CPU time grows too (shared caches and hyper-threads, the "
         "hypervisor's steal): compare gpaw-fast's CPU per structure here with the idle figure of "
         "benchmarks/dft.md to see by how much. The free-core estimates are then upper bounds."
         if max(row["load"] for row in rows) > 2 * jobs else ""),
        "",
        f"Formation energies need a reference of every element; ASE builds none for {', '.join(missing)} "
        "(import one with `--source elemental-reference`), so structures holding them have none."
        if missing else "Every element had a reference.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["sevennet", "chgnet"])
    parser.add_argument("--limit", type=int, default=None, help="only the first N structures of the pool")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--gpaw", type=int, default=2, help="structures timed with gpaw-fast (0: none)")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "universal.md")
    arguments = parser.parse_args()
    if not POOL.is_file():
        sys.exit(f"{POOL} is missing: set WORKBENCH_DATA_DIR to the folder holding perov5/")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="universal-benchmark-") as folder:
        root = Path(folder)
        engine = make_engine(f"sqlite:///{root / 'store.db'}")
        migrate.upgrade(engine)
        structure_ids = import_pool(engine, arguments.limit)
        rows = []
        for name in arguments.presets:
            rows.append(run_preset(engine, name, structure_ids, root / "dft", arguments.jobs))
            print(rows[-1], flush=True)
        gpaw = run_gpaw(engine, structure_ids[:arguments.gpaw], root / "dft") if arguments.gpaw else None
        print(gpaw, flush=True)
        engine.dispose()
    arguments.output.write_text(render(rows, gpaw, arguments.limit, arguments.jobs, time.perf_counter() - started))
    print(f"wrote {arguments.output}")


if __name__ == "__main__":
    main()
