"""Predicted energies above the hull: an objective on ``<level>.e_above_hull``.

A model does not learn the energy above the hull: it depends on every other phase of the
system, and changes when a new one is computed. It learns the formation energy per atom
at the level (:data:`LEARNED`), and a candidate's predicted energy above the hull is its
predicted formation energy minus the formation energy of the level's current hull at its
composition (pymatgen's ``PhaseDiagram.get_hull_energy_per_atom`` over the level's stored
formation energies, each element at 0). The hull is taken as known: the ensemble's
spread carries over unchanged.

The formation energies stored at a level are against its elemental reference
calculations, so this hull is the hull of :func:`workbench.stability.store.update_hull`
shifted by those references: the two give the same energy above the hull.
"""

from collections.abc import Iterable

import numpy as np
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from workbench.stability.hull import by_system, element_zeros, elements_of, entries_within, pd_entry
from workbench.stability.store import hull_level, level_values
from workbench.store.bulk import one_of
from workbench.store.engine import session_scope
from workbench.store.schema import Structure

# What a model learns in place of the energy above the hull, at the same level.
LEARNED = "formation_energy_per_atom"

Predictions = dict[str, tuple[np.ndarray, np.ndarray]]


def learned_target(target: str) -> str:
    """The target a model learns for ``target``: ``<level>.formation_energy_per_atom`` for
    ``<level>.e_above_hull``, any other target itself."""
    level = hull_level(target)
    return target if level is None else f"{level}.{LEARNED}"


def formation_hull(session: Session, level: str,
                   compositions: list[dict[str, float]]) -> np.ndarray:
    """Formation energy per atom (eV/atom) of the level's hull at each composition, from
    the level's stored formation energies with every element at 0."""
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.core import Composition

    asked = [elements_of(composition) for composition in compositions]
    entries = level_values(session, f"{level}.{LEARNED}")
    entries += element_zeros({element for elements in [*asked, *(entry.elements for entry in entries)]
                              for element in elements})
    systems = by_system(entries)
    diagrams: dict[frozenset[str], PhaseDiagram] = {}
    energies = np.empty(len(compositions))
    for position, (composition, system) in enumerate(zip(compositions, asked, strict=True)):
        if system not in diagrams:
            diagrams[system] = PhaseDiagram([pd_entry(entries[index]) for index in entries_within(system, systems)])
        energies[position] = diagrams[system].get_hull_energy_per_atom(Composition(composition))
    return energies


def derive_predictions(engine: Engine, targets: Iterable[str], predictions: Predictions,
                       structure_ids: list[int]) -> Predictions:
    """``predictions`` (per learned target, over ``structure_ids``) with the prediction of
    every objective target in ``targets`` a model does not learn itself added: the energy
    above the level's current hull."""
    derived = dict(predictions)
    for target in targets:
        level, learned = hull_level(target), learned_target(target)
        if target in derived or level is None or learned not in predictions:
            continue
        mean, std = predictions[learned]
        with session_scope(engine) as session:
            compositions = dict(session.execute(select(Structure.id, Structure.composition).where(
                one_of(session, Structure.id, structure_ids))).all())
            hull = formation_hull(session, level, [compositions[i] for i in structure_ids])
        derived[target] = (np.asarray(mean, float) - hull, np.asarray(std, float))
    return derived

