"""The DFT runner's overhead over calling the calculator directly, and the cost per preset.

For each preset and structure, the same calculation runs twice: directly in this process
(ASE calculator, energy, forces and eigenvalues: what the job extracts) and through the
runner (a queued calculation: its own process, folder, heartbeats, ingest into a SQLite
store). Both use one thread. The runner's time is the calculation's ``wall_time_s``
(process start to result read) plus the ingest; the overhead is relative to direct.

    .venv/bin/python benchmarks/dft_benchmark.py --out benchmarks/dft.md
"""

import argparse
import gzip
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from ase import Atoms
from ase.build import bulk
from ase.io import read
from sqlalchemy import select
from threadpoolctl import threadpool_limits

from workbench.dft.job import atoms_from_record, build_calculator, extract
from workbench.dft.presets import BUILTIN_PRESETS, Preset
from workbench.dft.runner import RunOptions, job_record, queue_calculations, run_queued
from workbench.io.entries import Entry
from workbench.io.importer import import_entries
from workbench.io.readers import ReadOptions
from workbench.store import migrate
from workbench.store.engine import make_engine, session_scope
from workbench.store.schema import Calculation, StructureSource
from workbench.structures.crystal import Crystal

REPO = Path(__file__).resolve().parents[1]
POOL = REPO / "workbench" / "examples" / "perovskites_pool.json.gz"


def perovskites(count: int) -> dict[str, Atoms]:
    """The first ``count`` bundled pool perovskites (5 atoms each)."""
    with gzip.open(POOL) as handle:
        pool = json.loads(handle.read())
    return {f"pool-{key}": read(io.StringIO(text), format="vasp") for key, text in list(pool.items())[:count]}


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


def runner_seconds(preset: Preset, structures: dict[str, Atoms], root: Path) -> dict[str, tuple[float, float]]:
    """``{name: (attempt wall time, whole run per calculation)}`` through the runner."""
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
            attempt = session.scalars(select(Calculation.wall_time_s).where(
                Calculation.structure_id == ids[name], Calculation.preset == preset.name)).one()
        timings[name] = (attempt, whole)
    engine.dispose()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the markdown table here too")
    parser.add_argument("--perovskites", type=int, default=3)
    parser.add_argument("--production", action="store_true", help="also run the 'gpaw' preset (slow)")
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
            direct = {name: direct_seconds(preset, atoms, Path(scratch) / "direct" / preset.name / name)
                      for name, atoms in structures.items()}
            through_runner = runner_seconds(preset, structures, Path(scratch) / preset.name)
            for name, atoms in structures.items():
                attempt, whole = through_runner[name]
                rows.append((preset.name, name, atoms.get_chemical_formula(), len(atoms),
                             direct[name], attempt, whole))
            print(f"{preset.name}: done", flush=True)

    lines = [
        "# DFT runner overhead and cost per preset",
        "",
        (f"`benchmarks/dft_benchmark.py` on {platform.processor() or platform.machine()}, "
         f"{os.cpu_count()} cores, 1 thread per calculation; GPAW from PyPI (OpenBLAS, no MPI)."),
        "",
        ("direct: the calculator called in the benchmark's process (energy, forces, eigenvalues). "
         "runner, attempt: the calculation's recorded wall time (own process, folder, result files). "
         "runner, whole: `run_queued` for that one calculation, store bookkeeping and ingest included."),
        "",
        "| preset | structure | formula | atoms | direct (s) | runner, attempt (s) | runner, whole (s) | overhead |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    totals: dict[str, list[float]] = {}
    for preset, name, formula, natoms, direct, attempt, whole in rows:
        lines.append(f"| {preset} | {name} | {formula} | {natoms} | {direct:.2f} | {attempt:.2f} | "
                     f"{whole:.2f} | {100 * (whole - direct) / direct:+.1f} % |")
        total = totals.setdefault(preset, [0.0, 0.0, 0.0])
        total[0] += direct
        total[1] += whole
        total[2] += natoms
    lines += ["", "| preset | direct, all (s) | runner, all (s) | overhead | runner s per atom |",
              "|---|---:|---:|---:|---:|"]
    for preset, (direct, whole, natoms) in totals.items():
        lines.append(f"| {preset} | {direct:.1f} | {whole:.1f} | {100 * (whole - direct) / direct:+.1f} % | "
                     f"{whole / natoms:.2f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
