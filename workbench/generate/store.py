"""Decorations of a prototype into the store, with their lineage.

Each batch of decorations is one transaction: the importer's writer matches every
decoration against the stored crystals (dedup key, fingerprint, StructureMatcher), adds
the new ones under the ``source`` label with the external id ``<parent id>:<mapping>``
and records the source of the ones that equal a stored crystal on that crystal (linked,
not added); then each decoration's lineage (parent, substitution) is recorded. Running
the same generation again adds nothing: decorations whose external id is stored under
the label already are skipped before they are described.

All decorations share the prototype's geometry, so its nearest-neighbour distances are
computed once, and the space group once per pattern of equal elements on its sites.
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

from sqlalchemy import Engine, select

from workbench.errors import ImportFailed
from workbench.generate.prototypes import Prototype
from workbench.generate.substitute import (
    ChargeBalance,
    Substitution,
    check_sites,
    explicit_substitutions,
)
from workbench.io.entries import Entry
from workbench.io.importer import Checked, FileReport, StructureWriter
from workbench.io.readers import ReadOptions
from workbench.store.bulk import insert_ignoring_duplicates, one_of, one_writer_at_a_time
from workbench.store.engine import session_scope
from workbench.store.schema import LineageKind, StructureLineage, StructureSource
from workbench.structures.crystal import Crystal
from workbench.structures.identity import identify, space_group
from workbench.structures.validate import check_crystal

DEFAULT_SOURCE = "generated"
BATCH_SIZE = 2000  # decorations per transaction


@dataclass
class GenerateReport:
    """What one generation did. ``matched`` counts decorations equal to a stored crystal
    (or to another decoration of this run), which were linked, not added; ``known`` those
    generated before under the same label, left as they are."""

    parent_id: int
    decorations: int = 0
    charge_filtered: int = 0
    new_structures: int = 0
    matched: int = 0
    known: int = 0


def external_id(parent_id: int, substitution: Substitution) -> str:
    return f"{parent_id}:{substitution.label}"


def store_decorations(
    engine: Engine,
    prototype: Prototype,
    substitutions: Iterable[Substitution],
    *,
    source: str = DEFAULT_SOURCE,
    charge_balance: ChargeBalance | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> GenerateReport:
    """Store every substitution of ``prototype`` (those passing ``charge_balance``, if
    given) as a candidate under ``source``; one transaction per batch."""
    report = GenerateReport(prototype.structure_id)
    describe = _Describer(prototype.crystal)
    file = f"workbench generate --prototype {prototype.name}"
    for batch in _batched(substitutions, BATCH_SIZE):
        decorations: dict[str, tuple[Substitution, Crystal]] = {}
        for substitution in batch:
            crystal = substitution.apply(prototype.crystal)
            if charge_balance is not None and not charge_balance.crystal(crystal):
                report.charge_filtered += 1
                continue
            decorations[external_id(prototype.structure_id, substitution)] = (substitution, crystal)
        if decorations:
            _write_batch(engine, prototype, decorations, describe, source=source, file=file, report=report)
        report.decorations += len(batch)
        if on_progress:
            on_progress(len(batch))
    return report


def decorate(engine: Engine, prototype: str, sites: dict[str, list[str]], *, source: str = DEFAULT_SOURCE,
             charge_balanced: bool = False) -> GenerateReport:
    """Every combination of the ``sites`` choices (``{prototype element: [elements]}``) in
    the prototype ``prototype`` names (:func:`~workbench.generate.prototypes.resolve_prototype`),
    stored under ``source``: what a campaign's ``generate`` section runs."""
    from workbench.generate.prototypes import resolve_prototype

    parent = resolve_prototype(engine, prototype)
    check_sites(sites, parent.elements, prototype=prototype, field="sites")
    return store_decorations(engine, parent, explicit_substitutions(sites), source=source,
                             charge_balance=ChargeBalance() if charge_balanced else None)


def _write_batch(engine: Engine, prototype: Prototype, decorations: dict[str, tuple[Substitution, Crystal]],
                 describe: "_Describer", *, source: str, file: str, report: GenerateReport) -> None:
    with session_scope(engine) as session:
        # The importer's lock: both decide what is new from what they read.
        one_writer_at_a_time(session, "import")
        # Generated before: its source row and lineage were written together, and its
        # external id names parent and mapping, so it is the same crystal.
        known = set(session.scalars(select(StructureSource.external_id).where(
            StructureSource.source == source, one_of(session, StructureSource.external_id, list(decorations)))))
        report.known += len(known)
        checked = [
            Checked(Entry(row=name, external_id=name, crystal=crystal), crystal, describe(crystal))
            for name, (_, crystal) in decorations.items() if name not in known
        ]
        if not checked:
            return
        written = FileReport(file=file)
        writer = StructureWriter(session, source=source, file=file, options=ReadOptions())
        errors = writer.write(checked, written)
        if errors:  # the prototype passed the checks, so a decoration cannot fail them
            raise ImportFailed(errors)
        names = [item.entry.external_id for item in checked]
        structure_ids = dict(session.execute(
            select(StructureSource.external_id, StructureSource.structure_id)
            .where(StructureSource.source == source, one_of(session, StructureSource.external_id, names))
        ).all())
        lineage = [
            {"structure_id": structure_ids[name], "parent_id": prototype.structure_id,
             "kind": LineageKind.SUBSTITUTION, "detail": _detail(prototype, decorations[name][0])}
            for name in names if structure_ids[name] != prototype.structure_id
        ]
        insert_ignoring_duplicates(session, StructureLineage.__table__, lineage)
        report.new_structures += written.new_structures
        report.matched += written.matched_structures


def _detail(prototype: Prototype, substitution: Substitution) -> dict:
    detail = {"prototype": prototype.name, "mapping": substitution.mapping}
    if substitution.probability is not None:
        detail["probability"] = substitution.probability
    return detail


class _Describer:
    """Identities of decorations of one geometry: the neighbour distances once, the space
    group once per pattern of which sites hold equal elements."""

    def __init__(self, prototype: Crystal) -> None:
        self.nearest = check_crystal(prototype)
        self.symmetry: dict[tuple[int, ...], tuple[int, str]] = {}

    def __call__(self, crystal: Crystal):
        first: dict[str, int] = {}
        pattern = tuple(first.setdefault(element, index) for index, element in enumerate(crystal.species))
        if pattern not in self.symmetry:
            self.symmetry[pattern] = space_group(crystal)
        return identify(crystal, self.nearest, self.symmetry[pattern])


def _batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
