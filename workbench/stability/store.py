"""The convex hull of one level of theory in the store.

A *level* is a calculator preset (``gpaw-fast``, ``emt``) or any prefix of imported
targets: its energies are the targets ``<level>.energy_per_atom`` (total energies, the
elements' own entries as references) or, for a level that has none,
``<level>.formation_energy_per_atom`` (the elements at zero). Levels are never mixed.

:func:`update_hull` writes ``<level>.e_above_hull`` (eV/atom) for every structure whose
chemical system has a hull, with its decomposition in the value's ``detail``; run again
when new energies arrive, it rewrites what changed and nothing else. :func:`level_gaps`
lists, per chemical system, the elements without an energy at the level and the stored
competing phases (structures within the system, other than elements) without one;
:func:`queue_gaps` queues their calculations with the level's preset.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session

from workbench.errors import InputError, WorkbenchError
from workbench.stability.hull import HullEntry, chemical_system, convex_hull, element_zeros
from workbench.store.bulk import insert_ignoring_duplicates, one_writer_at_a_time
from workbench.store.engine import session_scope
from workbench.store.queries import structures_where
from workbench.store.schema import Structure, TargetDefinition, TargetKind, TargetValue

E_ABOVE_HULL = "e_above_hull"
# Energies a hull is built from, in order of preference; one kind per level.
ENERGY_BASES = ("energy_per_atom", "formation_energy_per_atom")
# ``source_file`` of the values written here: a value from elsewhere is never overwritten.
HULL_ORIGIN = "workbench hull"


class NoElementalReferences(InputError):
    """A level without any energy of an element has no hull at all."""


class HullConflict(WorkbenchError, ValueError):
    """``<level>.e_above_hull`` of a structure exists already from another origin."""


@dataclass(frozen=True)
class SystemGaps:
    """What a chemical system lacks at a level: elements without an energy, and stored
    competing phases (ids of structures within the system, not elements) without one."""

    chemical_system: str
    structures: int
    missing_elements: list[str]
    missing_phases: list[int]


@dataclass
class HullReport:
    level: str
    basis: str
    entries: int = 0
    values: int = 0
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    systems_without_hull: dict[str, list[str]] = field(default_factory=dict)


def level_values(session: Session, target: str) -> list[HullEntry]:
    """The stored values of the scalar ``target`` as entries keyed by structure id, in id order."""
    rows = session.execute(
        select(Structure.id, Structure.composition, TargetValue.value)
        .join(TargetValue, TargetValue.structure_id == Structure.id)
        .join(TargetDefinition, TargetDefinition.id == TargetValue.target_id)
        .where(TargetDefinition.name == target, TargetValue.value.is_not(None))
        .order_by(Structure.id)
    ).all()
    return [HullEntry(row.id, row.composition, row.value) for row in rows]


def level_entries(session: Session, level: str) -> tuple[str, list[HullEntry]]:
    """``(basis, entries)``: the level's energies, as the target name they come from."""
    for basis in ENERGY_BASES:
        entries = level_values(session, f"{level}.{basis}")
        if entries:
            if basis == "formation_energy_per_atom":
                entries += element_zeros(element for entry in entries for element in entry.elements)
            return f"{level}.{basis}", entries
    names = " or ".join(f"{level}.{basis}" for basis in ENERGY_BASES)
    raise InputError(f"no energies at level {level!r}: no structure has {names}", field="--level")


def update_hull(engine: Engine, level: str) -> HullReport:
    """Compute the level's hull and write ``<level>.e_above_hull``, in one transaction."""
    with session_scope(engine) as session:
        return write_hull(session, level)


def write_hull(session: Session, level: str) -> HullReport:
    """:func:`update_hull` in the caller's transaction (a campaign's ingest writes the hull
    and the outcomes judged on it together)."""
    # Two updates at once would both insert the values they find missing.
    one_writer_at_a_time(session, f"hull {level}")
    basis, entries = level_entries(session, level)
    if not any(len(entry.elements) == 1 for entry in entries):
        elements = sorted({element for entry in entries for element in entry.elements})
        raise NoElementalReferences(
            f"level {level!r} has no elemental references: no structure of a single element has "
            f"{basis}; the hull needs one for each of {', '.join(elements)} "
            f"(`workbench hull --level {level} --queue` queues them)", field="--level")
    hull = convex_hull(entries)
    report = HullReport(level=level, basis=basis, entries=len(entries),
                        systems_without_hull=hull.missing_elements)
    target_id = _target_id(session, level)
    existing = {row.structure_id: row for row in session.execute(
        select(TargetValue.id, TargetValue.structure_id, TargetValue.value, TargetValue.detail,
               TargetValue.source_file).where(TargetValue.target_id == target_id))}
    new_rows, changed_rows = [], []
    for key, point in hull.points.items():
        if not isinstance(key, int):
            continue  # an element's zero of the formation-energy basis
        detail = {
            "basis": basis, "chemical_system": point.chemical_system,
            "decomposition": [{"structure_id": part, "fraction": fraction}
                              for part, fraction in sorted(point.decomposition.items(), key=str)],
        }
        report.values += 1
        previous = existing.get(key)
        if previous is None:
            new_rows.append({"structure_id": key, "target_id": target_id, "value": point.e_above_hull,
                             "detail": detail, "source_file": HULL_ORIGIN})
        elif previous.source_file != HULL_ORIGIN:
            raise HullConflict(
                f"structure {key} has a value of {level}.{E_ABOVE_HULL} from "
                f"{previous.source_file or 'elsewhere'}; the hull would overwrite it")
        elif math.isclose(previous.value, point.e_above_hull, rel_tol=1e-9, abs_tol=1e-9) \
                and previous.detail == detail:
            report.unchanged += 1
        else:
            changed_rows.append({"id": previous.id, "value": point.e_above_hull, "detail": detail})
    if new_rows:
        session.execute(insert(TargetValue), new_rows)
    if changed_rows:
        session.execute(update(TargetValue), changed_rows)
    report.new, report.updated = len(new_rows), len(changed_rows)
    return report


def hull_level(target: str) -> str | None:
    """The level whose hull ``target`` is (``gpaw-fast`` of ``gpaw-fast.e_above_hull``), or ``None``."""
    level, _, quantity = target.rpartition(".")
    return level if level and quantity == E_ABOVE_HULL else None


def levels_with_hull(session: Session, levels: Iterable[str]) -> list[str]:
    """Those of ``levels`` that have a hull target in the store (``workbench hull`` or a
    campaign wrote ``<level>.e_above_hull`` before)."""
    names = {f"{level}.{E_ABOVE_HULL}": level for level in levels}
    return sorted(names[name] for name in session.scalars(
        select(TargetDefinition.name).where(TargetDefinition.name.in_(names))))


def refresh_hulls(session: Session, levels: Iterable[str]) -> dict[str, HullReport | str]:
    """Rewrite the hull of each level, in the caller's transaction, after new energies
    arrived: per level its report, or why it has no hull yet (no energies or no
    elemental reference at the level). Idempotent: values that did not change stay.
    Raises :class:`HullConflict` where a value it would overwrite came from elsewhere: a
    campaign judged on that hull must stop and say so."""
    reports: dict[str, HullReport | str] = {}
    for level in dict.fromkeys(levels):
        try:
            reports[level] = write_hull(session, level)
        except InputError as error:
            # The energies that called for the refresh are stored already: say why, not fail them.
            reports[level] = str(error)
    return reports


def _target_id(session: Session, level: str) -> int:
    name = f"{level}.{E_ABOVE_HULL}"
    insert_ignoring_duplicates(session, TargetDefinition.__table__, [{
        "name": name, "kind": TargetKind.SCALAR, "units": "eV/atom",
        "description": f"energy above the convex hull of the {level} energies in the store",
    }])
    definition = session.scalars(select(TargetDefinition).where(TargetDefinition.name == name)).one()
    if definition.kind is not TargetKind.SCALAR:
        raise HullConflict(f"target {name!r} exists as {definition.kind.value}, not scalar")
    return definition.id


def level_gaps(engine: Engine, level: str, *, phases_where: str | None = None) -> list[SystemGaps]:
    """Per chemical system with energies at the level (elements aside), the elements and
    competing phases without one. ``phases_where`` (an SQL condition on ``structures``)
    narrows the competing phases considered, e.g. to one source's."""
    allowed = None if phases_where is None else set(
        structures_where(engine, phases_where, option="--phases-where"))
    with session_scope(engine) as session:
        _, entries = level_entries(session, level)
        stored = session.execute(select(Structure.id, Structure.elements).where(Structure.nelements >= 2)).all()
    with_energy = {entry.key for entry in entries}
    elements_with_energy = {next(iter(entry.elements)) for entry in entries if len(entry.elements) == 1}
    systems: dict[frozenset[str], int] = {}
    for entry in entries:
        if isinstance(entry.key, int) and len(entry.elements) > 1:
            systems[entry.elements] = systems.get(entry.elements, 0) + 1
    without = [(row.id, frozenset(row.elements)) for row in stored
               if row.id not in with_energy and (allowed is None or row.id in allowed)]
    gaps = []
    for system in sorted(systems, key=chemical_system):
        missing_elements = sorted(system - elements_with_energy)
        missing_phases = [structure_id for structure_id, elements in without if elements <= system]
        if missing_elements or missing_phases:
            gaps.append(SystemGaps(chemical_system(system), systems[system], missing_elements, missing_phases))
    return gaps


@dataclass(frozen=True)
class QueuedGaps:
    calculation_ids: list[int]
    references_unavailable: dict[str, str]


def queue_gaps(engine: Engine, level: str, gaps: list[SystemGaps]) -> QueuedGaps:
    """Queue calculations, with the level's preset, of the missing elemental references
    (the stored ones, else ASE's reference states) and competing phases."""
    from workbench.dft.presets import load_preset
    from workbench.dft.references import reference_structure_ids
    from workbench.dft.runner import queue_calculations

    preset = load_preset(level)
    elements = {element for gap in gaps for element in gap.missing_elements}
    references, unavailable = reference_structure_ids(engine, elements)
    phases = [structure_id for gap in gaps for structure_id in gap.missing_phases]
    structure_ids = list(dict.fromkeys([*references.values(), *phases]))
    return QueuedGaps(queue_calculations(engine, structure_ids, preset) if structure_ids else [], unavailable)


@dataclass(frozen=True)
class BinaryHull:
    """A binary system at a level, for a figure: per entry its key (a structure id, or an
    element's zero of the formation-energy basis), the fraction of the second element,
    its formation energy per atom against the system's lowest elemental energies, and its
    energy above the hull (0 on it)."""

    system: str  # "A-B"
    keys: list
    fraction: list[float]
    formation_energy: list[float]
    e_above_hull: list[float]


def binary_hulls(session: Session, level: str, structure_ids: Iterable[int], *, limit: int) -> list[BinaryHull]:
    """The hulls of the binary systems ``structure_ids`` lie in at ``level``, the ``limit``
    systems holding most of them first; systems lacking an element's energy are left out."""
    try:
        _, entries = level_entries(session, level)
    except InputError:  # no energies at the level yet
        return []
    chosen = set(structure_ids)
    counts: dict[frozenset[str], int] = {}
    for entry in entries:
        if entry.key in chosen and len(entry.elements) == 2:
            counts[entry.elements] = counts.get(entry.elements, 0) + 1
    hulls = []
    for system in sorted(counts, key=lambda system: (-counts[system], sorted(system))):
        within = [entry for entry in entries if entry.elements <= system]
        first, second = sorted(system)
        references = {element: min((e.energy_per_atom for e in within if e.elements == {element}), default=None)
                      for element in (first, second)}
        if None in references.values():
            continue  # no hull without both elements
        points = convex_hull(within).points
        fractions = [entry.composition.get(second, 0.0) / sum(entry.composition.values()) for entry in within]
        hulls.append(BinaryHull(
            chemical_system(system), [entry.key for entry in within], fractions,
            [entry.energy_per_atom - (1 - x) * references[first] - x * references[second]
             for entry, x in zip(within, fractions, strict=True)],
            [points[entry.key].e_above_hull for entry in within]))
        if len(hulls) == limit:
            break
    return hulls
