"""Shared by the DFT and campaign tests: store small crystals, read back a calculation's
ledger, a pool of EMT alloys and a campaign over it."""

from itertools import permutations

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
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


# fcc lattice constants (Å) of the metals ASE's EMT knows.
LATTICE = {"Cu": 3.61, "Ag": 4.09, "Au": 4.08, "Ni": 3.52, "Pd": 3.89, "Pt": 3.92, "Al": 4.05}


def l12(major: str, minor: str):
    """L1_2 ``major``3``minor``, lattice constant by Vegard's law."""
    atoms = bulk(major, "fcc", a=(3 * LATTICE[major] + LATTICE[minor]) / 4, cubic=True)
    atoms[0].symbol = minor
    return atoms


def b2(first: str, second: str) -> Atoms:
    """B2 (CsCl) ``first``-``second`` at the volume per atom of their fcc average."""
    a = ((LATTICE[first] ** 3 + LATTICE[second] ** 3) / 4) ** (1 / 3)  # two atoms of a^3/4 each
    return Atoms([first, second], scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=[a, a, a], pbc=True)


def l10(first: str, second: str) -> Atoms:
    """L1_0 ``first``-``second`` (fcc-based, ideal c/a) in its 2-atom tetragonal cell."""
    a = (LATTICE[first] + LATTICE[second]) / 2
    return Atoms([first, second], scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]],
                 cell=[a / np.sqrt(2), a / np.sqrt(2), a], pbc=True)


def emt_threshold(crystals: list[Atoms] | None = None) -> float:
    """The lower quartile of the EMT energy per atom of ``crystals`` (default: the 42
    L1_2 alloys, about 10 hits in the pool)."""
    energies = []
    for atoms in crystals or [l12(a, b) for a, b in permutations(LATTICE, 2)]:
        atoms = atoms.copy()
        atoms.calc = EMT()
        energies.append(atoms.get_potential_energy() / len(atoms))
    return float(np.quantile(energies, 0.25))


def campaign_document(name: str, budget: int, **overrides) -> dict:
    document = {
        "name": name,
        "candidates": {"source": "test"},
        "objective": [f"emt.energy_per_atom<={emt_threshold():.4f}"],
        "initial": 10, "budget": budget, "seed": 1,
        "model": {"members": 2, "epochs": 8, "patience": 8, "device": "cpu"},
        "acquisition": {"batch": 4},
        "dft": {"preset": "emt", "jobs": 2},
    }
    return {**document, **overrides}
