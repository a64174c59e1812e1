"""How many gpaw-fast relaxation steps a universal pre-relaxation saves, and how far the
universal model's relaxed cells are from GPAW's.

Four fcc-lattice crystals (primitive cells, a = (4 V)^(1/3)) start 6 % too large, as a
decoration on a prototype's geometry would. Each is relaxed by ``gpaw-fast-relax``
directly, and by the first two stages of the ``sevennet-gpaw-fast`` workflow
(``sevennet-relax``, then ``gpaw-fast-relax`` from the geometry SevenNet ended at),
through the runner on a fresh SQLite store. Lattice parameters are read from each
calculation's relaxed cell (the store may match both relaxed cells to one structure).
Prints the table of benchmarks/dft.md.

    .venv/bin/python benchmarks/relax_benchmark.py
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.build import bulk
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.dft_helpers import store_crystals
from workbench.dft.presets import BUILTIN_PRESETS, relax_preset
from workbench.dft.runner import RunOptions, queue_calculations, run_queued
from workbench.dft.workflow import stage_ends
from workbench.store.engine import make_engine, session_scope
from workbench.store.migrate import upgrade
from workbench.store.schema import Calculation
from workbench.store.types import arrays_from_bytes

STRAIN = 1.06
CRYSTALS = {
    "Al": lambda a: bulk("Al", "fcc", a=a), "Cu": lambda a: bulk("Cu", "fcc", a=a),
    "Si": lambda a: bulk("Si", "diamond", a=a), "NaCl": lambda a: bulk("NaCl", "rocksalt", a=a),
}
EXPERIMENT_A = {"Al": 4.05, "Cu": 3.61, "Si": 5.43, "NaCl": 5.64}


def relax(engine, preset, structure_ids, workdir, starts=None) -> dict[int, Calculation]:
    queue_calculations(engine, structure_ids, preset, starts=starts)
    run_queued(engine, preset, RunOptions(workdir=workdir), references=False)
    with session_scope(engine) as session:
        rows = session.scalars(select(Calculation).where(
            Calculation.preset == preset.name, Calculation.structure_id.in_(structure_ids))).all()
        session.expunge_all()
    return {row.structure_id: row for row in rows}


def lattice_a(calculation: Calculation) -> float:
    cell = arrays_from_bytes(calculation.arrays)["relaxed_cell"]
    return float((4 * abs(np.linalg.det(cell))) ** (1 / 3))


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="relax-benchmark-"))
    url = f"sqlite:///{root / 'store.db'}"
    engine = make_engine(url)
    upgrade(engine)
    ids = store_crystals(engine, {name: build(EXPERIMENT_A[name] * STRAIN) for name, build in CRYSTALS.items()})
    starts = [ids[name] for name in CRYSTALS]
    gpaw = relax_preset(BUILTIN_PRESETS["gpaw-fast"])
    universal = relax_preset(BUILTIN_PRESETS["sevennet"])
    started = time.perf_counter()
    pre = relax(engine, universal, starts, root / "dft")
    prerelaxed = {start: pre[start].results["relaxation"]["structure_id"] for start in starts}
    geometries = {end: geometry for end, geometry in stage_ends(engine, universal.name, starts).values()}
    after = relax(engine, gpaw, sorted(set(prerelaxed.values())), root / "dft", starts=geometries)
    direct = relax(engine, gpaw, starts, root / "dft")
    print(f"# {time.perf_counter() - started:.0f} s in all; store in {root}")
    print("| crystal | start a (Å) | gpaw-fast steps from the start | sevennet steps | gpaw-fast steps after sevennet "
          "| gpaw-fast s from the start | gpaw-fast s after sevennet | a sevennet (Å) | a gpaw-fast (Å) | difference |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    totals = np.zeros(2)
    for name, start in zip(CRYSTALS, starts, strict=True):
        first, second = direct[start], after[prerelaxed[start]]
        a_universal = lattice_a(pre[start])
        a_gpaw = lattice_a(first)
        steps = (first.results["relaxation"]["steps"], second.results["relaxation"]["steps"])
        totals += steps
        print(f"| {name} | {EXPERIMENT_A[name] * STRAIN:.3f} | {steps[0]} | {pre[start].results['relaxation']['steps']} "
              f"| {steps[1]} | {first.wall_time_s:.0f} | {second.wall_time_s:.0f} | {a_universal:.3f} | {a_gpaw:.3f} "
              f"| {100 * (a_universal - a_gpaw) / a_gpaw:+.1f} % |")
    print(f"# gpaw-fast steps: {totals[0]:.0f} from the start, {totals[1]:.0f} after sevennet "
          f"({100 * (1 - totals[1] / totals[0]):.0f} % saved)")


if __name__ == "__main__":
    main()
