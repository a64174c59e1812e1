"""Shared by the DFT tests: store small crystals, read back a calculation's ledger."""

from ase import Atoms
from ase.build import bulk
from sqlalchemy import Engine, select

from workbench.io.entries import Entry
from workbench.io.importer import import_entries
from workbench.io.readers import ReadOptions
from workbench.store.engine import session_scope
from workbench.store.schema import (
    Calculation,
    CalculationAttempt,
    StructureSource,
    TargetDefinition,
    TargetValue,
)
from workbench.structures.crystal import Crystal


def cu3au() -> Atoms:
    """L1_2 Cu3Au, 4 atoms, a = 3.75 Å (EMT knows both elements)."""
    atoms = bulk("Cu", "fcc", a=3.75, cubic=True)
    atoms[0].symbol = "Au"
    return atoms


def store_crystals(engine: Engine, crystals: dict[str, Atoms]) -> dict[str, int]:
    """Import ``{name: atoms}`` under source ``test``; returns ``{name: structure id}``."""
    entries = [Entry(row=name, external_id=name, crystal=Crystal.from_ase(atoms))
               for name, atoms in crystals.items()]
    import_entries(engine, entries, source="test", file="tests", options=ReadOptions())
    with session_scope(engine) as session:
        rows = session.execute(select(StructureSource.external_id, StructureSource.structure_id)
                               .where(StructureSource.source == "test")).all()
    return dict(rows)


def calculation_of(engine: Engine, structure_id: int, preset: str) -> tuple[Calculation, list[CalculationAttempt]]:
    with session_scope(engine) as session:
        calculation = session.scalars(select(Calculation).where(
            Calculation.structure_id == structure_id, Calculation.preset == preset)).one()
        attempts = session.scalars(select(CalculationAttempt).where(
            CalculationAttempt.calculation_id == calculation.id).order_by(CalculationAttempt.number)).all()
        return calculation, list(attempts)


def targets_of(engine: Engine, structure_id: int) -> dict[str, TargetValue]:
    with session_scope(engine) as session:
        rows = session.execute(
            select(TargetDefinition.name, TargetValue)
            .join(TargetValue, TargetValue.target_id == TargetDefinition.id)
            .where(TargetValue.structure_id == structure_id)
        ).all()
        return dict(rows)


def count_rows(engine: Engine, model) -> int:
    with session_scope(engine) as session:
        return len(session.scalars(select(model.id)).all())
