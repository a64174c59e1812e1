"""Relaxed structures into the store, linked to the structures they came from.

A relaxation's calculation belongs to the structure it started from; its ingest stores
the relaxed crystal through the importer's :class:`~workbench.io.importer.StructureWriter`
under the source :data:`RELAXATION_SOURCE` (external id ``<preset>:<parent id>``), so a
relaxed structure equal to a stored crystal is linked to that crystal, not added. The
lineage row (kind ``relaxation``) records preset, calculation, steps and convergence,
and the calculation's targets go on the relaxed structure. A relaxed crystal matched to a
stored one may list its sites in another order: its per-site outputs are put in the
stored structure's order (:func:`in_stored_order`).
"""

from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from workbench.errors import InputError, WorkbenchError
from workbench.io.entries import Entry
from workbench.io.importer import FileReport, StructureWriter, check_entry
from workbench.io.readers import ReadOptions
from workbench.store.bulk import insert_ignoring_duplicates, one_writer_at_a_time
from workbench.store.engine import session_scope
from workbench.store.schema import (
    Calculation,
    LineageKind,
    Structure,
    StructureLineage,
    StructureSource,
)
from workbench.structures.crystal import Crystal
from workbench.structures.identity import site_mapping

RELAXATION_SOURCE = "relaxation"


class RelaxedStructureRefused(WorkbenchError, ValueError):
    """A relaxation ended in a structure that fails the store's checks (e.g. atoms too close)."""


def external_id(preset: str, parent_id: int) -> str:
    return f"{preset}:{parent_id}"


def store_relaxed_structure(session: Session, calculation: Calculation, relaxation: dict,
                            arrays: dict[str, np.ndarray]) -> tuple[int, np.ndarray]:
    """Store the relaxed crystal of ``calculation`` (deduplicated) and its lineage;
    returns the id of the structure that holds it and the stored index of each relaxed site."""
    parent = session.get(Structure, calculation.structure_id)
    crystal = Crystal(np.asarray(arrays["relaxed_cell"]), tuple(parent.species),
                      np.asarray(arrays["relaxed_frac_coords"]))
    name = external_id(calculation.preset, parent.id)
    checked = check_entry(Entry(row=name, external_id=name, crystal=crystal))
    file = calculation.workdir or f"calculation {calculation.id}"
    if isinstance(checked, InputError):
        raise RelaxedStructureRefused(f"calculation {calculation.id} ({calculation.preset}) relaxed structure "
                                      f"{parent.id} into a structure the store refuses: {checked}")
    # The importer's lock: both decide what is new from what they read.
    one_writer_at_a_time(session, "import")
    errors = StructureWriter(session, source=RELAXATION_SOURCE, file=file, options=ReadOptions()).write(
        [checked], FileReport(file=file))
    if errors:
        raise RelaxedStructureRefused(f"calculation {calculation.id}: {errors[0]}")
    relaxed_id = session.scalars(select(StructureSource.structure_id).where(
        StructureSource.source == RELAXATION_SOURCE, StructureSource.external_id == name)).one()
    stored = session.get(Structure, relaxed_id)
    mapping = site_mapping(Crystal.from_stored(stored.lattice, stored.species, stored.frac_coords), crystal)
    if mapping is None:  # the writer matched them, so this cannot happen unless the store changed meanwhile
        raise RelaxedStructureRefused(f"calculation {calculation.id}: structure {relaxed_id} no longer matches "
                                      "the relaxed crystal")
    if relaxed_id != parent.id:  # a relaxation that moved nothing leaves the structure as it was
        insert_ignoring_duplicates(session, StructureLineage.__table__, [{
            "structure_id": relaxed_id, "parent_id": parent.id, "kind": LineageKind.RELAXATION,
            "detail": {"preset": calculation.preset, "calculation_id": calculation.id,
                       "steps": relaxation["steps"], "converged": relaxation["converged"]},
        }])
    return relaxed_id, mapping


def in_stored_order(arrays: dict[str, np.ndarray], per_site: set[str], mapping: np.ndarray) -> dict[str, np.ndarray]:
    """``arrays`` with the per-site ones (and the relaxed coordinates) moved into the
    stored structure's site order: site ``i`` of the relaxation is stored site ``mapping[i]``."""
    moved = dict(arrays)
    for name in per_site & set(arrays) | {"relaxed_frac_coords"}:
        reordered = np.empty_like(arrays[name])
        reordered[mapping] = arrays[name]
        moved[name] = reordered
    return moved


def relaxation_products(engine: Engine, preset: str) -> set[int]:
    """Structures that are the result of a relaxation with ``preset`` (not relaxed again
    by ``--all``)."""
    with session_scope(engine) as session:
        rows = session.execute(select(StructureLineage.structure_id, StructureLineage.detail)
                               .where(StructureLineage.kind == LineageKind.RELAXATION)).all()
    return {structure_id for structure_id, detail in rows if detail.get("preset") == preset}


@dataclass(frozen=True)
class RelaxationSummary:
    """One relaxation as ``workbench relax`` reports it."""

    calculation_id: int
    structure_id: int
    relaxed_structure_id: int | None
    status: str
    steps: int | None = None
    converged: bool | None = None
    fmax: float | None = None
    fmax_limit: float | None = None
    step_limit: int | None = None
    energy: float | None = None


def relaxation_summaries(engine: Engine, calculation_ids: list[int]) -> list[RelaxationSummary]:
    """The outcome of each of ``calculation_ids``: relaxed structure, steps, convergence."""
    with session_scope(engine) as session:
        calculations = session.scalars(select(Calculation).where(Calculation.id.in_(calculation_ids))
                                       .order_by(Calculation.id)).all()
        summaries = []
        for calculation in calculations:
            results = calculation.results or {}
            relaxation = results.get("relaxation", {})
            summaries.append(RelaxationSummary(
                calculation.id, calculation.structure_id, relaxation.get("structure_id"),
                calculation.status.value, relaxation.get("steps"), relaxation.get("converged"),
                relaxation.get("fmax"), relaxation.get("fmax_limit"), relaxation.get("step_limit"),
                results.get("energy")))
    return summaries
