"""Four worker processes at once on one store: every crystal, label and calculation once.

The workers are spawned interpreters, as separate Prefect workers or hosts would be, and
wait at a barrier so that their reads and writes overlap. Spawned workers import this
module, so it imports only what they need; the parent's helpers are imported in the tests.
"""

import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select

from workbench.dft.ingest import add_formation_energies
from workbench.dft.presets import BUILTIN_PRESETS
from workbench.dft.references import REFERENCE_SOURCE
from workbench.dft.runner import RunOptions, queue_calculations, run_queued
from workbench.io.importer import import_file
from workbench.io.readers import ReadOptions
from workbench.store.engine import make_engine, session_scope
from workbench.store.schema import (
    Calculation,
    CalculationAttempt,
    CalculationStatus,
    Structure,
    StructureSource,
    TargetDefinition,
    TargetValue,
)

WORKERS = 4
EMT = BUILTIN_PRESETS["emt"]
# Elements of the real perovskites computed here: EMT knows them, and few elements mean
# few elemental references to compute.
EMT_ELEMENTS = {"N", "Cu", "Pd", "Pt", "Au"}
TARGETS = ReadOptions(targets={"heat_ref": "heat_ref", "dir_gap": "dir_gap"})

pytestmark = pytest.mark.slow

_barrier = None


def _keep_barrier(barrier) -> None:
    global _barrier
    _barrier = barrier


def _import(database_url: str, path: str, source: str) -> int:
    engine = make_engine(database_url)
    try:
        _barrier.wait(timeout=300)
        return import_file(engine, Path(path), source=source, options=TARGETS).new_structures
    finally:
        engine.dispose()


def _run_dft(database_url: str, workdir: str) -> tuple[list[int], dict[int, str]]:
    engine = make_engine(database_url)
    try:
        _barrier.wait(timeout=300)
        report = run_queued(engine, EMT, RunOptions(workdir=Path(workdir), heartbeat_s=0.5))
        return report.done, report.failed
    finally:
        engine.dispose()


def _add_formation_energies(database_url: str) -> int:
    engine = make_engine(database_url)
    try:
        _barrier.wait(timeout=300)
        return add_formation_energies(engine, EMT.name)
    finally:
        engine.dispose()


def _together(function, calls: list[tuple]) -> list:
    """``function(*arguments)`` for each of ``calls``, each in its own process, at once."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(calls))
    with ProcessPoolExecutor(len(calls), mp_context=context, initializer=_keep_barrier,
                             initargs=(barrier,)) as pool:
        futures = [pool.submit(function, *arguments) for arguments in calls]
        return [future.result(timeout=600) for future in futures]


def _count(engine, column, *conditions) -> int:
    with session_scope(engine) as session:
        return session.scalar(select(func.count(column)).where(*conditions))


def test_four_processes_import_the_same_file_once(engine, database_url, tmp_path):
    from tests.conftest import perovskite_rows, write_csv

    rows = perovskite_rows(120)
    path = write_csv(tmp_path / "perovskites.csv", rows, ["material_id", "cif", "heat_ref", "dir_gap"])
    # Two workers per source: the same crystals reach the store under two labels at once.
    calls = [(database_url, str(path), source) for source in ("castelli", "castelli", "mirror", "mirror")]
    new_structures = _together(_import, calls)

    with session_scope(engine) as session:
        by_source = {
            source: dict(session.execute(
                select(StructureSource.external_id, StructureSource.structure_id)
                .where(StructureSource.source == source)).all())
            for source in ("castelli", "mirror")
        }
        stored = session.scalar(select(func.count(Structure.id)))
        labels = Counter(session.execute(
            select(TargetValue.structure_id, TargetDefinition.name).join(TargetDefinition)).all())
        definitions = list(session.scalars(select(TargetDefinition.name)))
    ids = {row["material_id"] for row in rows}
    assert set(by_source["castelli"]) == set(by_source["mirror"]) == ids
    # Both labels of a crystal point at one structure, and every structure was made once.
    assert by_source["castelli"] == by_source["mirror"]
    assert stored == len(set(by_source["castelli"].values())) == sum(new_structures)
    assert sorted(definitions) == ["dir_gap", "heat_ref"]
    assert set(labels.values()) == {1}
    assert len(labels) == 2 * stored


def _symbols(formula: str) -> set[str]:
    from pymatgen.core import Composition

    return {element.symbol for element in Composition(formula)}


def _emt_rows(count: int) -> list[dict]:
    """The first ``count`` labeled perovskites made of :data:`EMT_ELEMENTS` only."""
    from tests.conftest import perovskite_rows

    rows = perovskite_rows()
    return [row for row in rows if _symbols(row["formula"]) <= EMT_ELEMENTS][:count]


# PostgreSQL only: the store that workers on several hosts share (SQLite takes the same
# lock path as in the import test, and this test is the slowest here).
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_four_processes_run_each_calculation_once(engine, database_url, tmp_path):
    from tests.conftest import write_csv

    rows = _emt_rows(2)  # CuPdN3 and PdAuN3, all the bundled sample has
    path = write_csv(tmp_path / "emt.csv", rows, ["material_id", "cif"])
    import_file(engine, path, source="castelli", options=ReadOptions())
    with session_scope(engine) as session:
        structure_ids = list(session.scalars(select(StructureSource.structure_id)))
    queue_calculations(engine, structure_ids, EMT)
    elements = {element for row in rows for element in _symbols(row["formula"])}

    reports = _together(_run_dft, [(database_url, str(tmp_path / "dft"))] * WORKERS)

    done = [calculation_id for finished, _ in reports for calculation_id in finished]
    assert not any(failed for _, failed in reports)
    # Every calculation (each structure and one elemental reference per element) was run by one
    # worker, in one attempt, in one folder.
    assert len(done) == len(set(done)) == len(structure_ids) + len(elements)
    assert _count(engine, Calculation.id, Calculation.status == CalculationStatus.DONE) == len(done)
    assert _count(engine, CalculationAttempt.id) == len(done)
    assert sorted(folder.name for folder in (tmp_path / "dft").glob("emt/*/*")) == ["attempt-1"] * len(done)
    # The references were imported once, whatever worker got there first.
    assert _count(engine, StructureSource.id, StructureSource.source == REFERENCE_SOURCE) == len(elements)
    assert _count(engine, Structure.id) == len(structure_ids) + len(elements)

    with session_scope(engine) as session:
        labels = Counter(session.execute(
            select(TargetValue.structure_id, TargetDefinition.name).join(TargetDefinition)).all())
    assert set(labels.values()) == {1}
    # Each quantity of each calculation once: one value per calculation and target.
    quantities = Counter(name for _, name in labels)
    assert {"emt.energy", "emt.forces", "emt.formation_energy_per_atom"} <= set(quantities)
    assert set(quantities.values()) == {len(done)}

    # Workers that finish together compute the formation energies together: replay that.
    with session_scope(engine) as session:
        formation = session.scalar(select(TargetDefinition.id).where(
            TargetDefinition.name == "emt.formation_energy_per_atom"))
        session.execute(delete(TargetValue).where(TargetValue.target_id == formation))
    added = _together(_add_formation_energies, [(database_url,)] * WORKERS)
    assert sum(added) == len(done)
    assert _count(engine, TargetValue.id, TargetValue.target_id == formation) == len(done)

