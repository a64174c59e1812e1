"""Import structure files into the store: one transaction per file, idempotent.

Per file: read entries; parse, check and describe each structure (in worker processes
when there are many); then, in one transaction, match each to a stored structure
(source and external id first, then dedup key and StructureMatcher), record its source,
and add its labels. Importing the same file twice adds nothing. A bad entry fails the
whole file unless ``skip_bad`` is set, in which case it is reported and left out.
"""

import math
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, insert, select, tuple_

from workbench.errors import ImportFailed, InputError
from workbench.io.entries import Entry, Label
from workbench.io.readers import ReadOptions, read_entries
from workbench.io.structure_text import parse_structure_text
from workbench.store.bulk import insert_returning_ids, one_of, one_writer_at_a_time
from workbench.store.engine import session_scope
from workbench.store.schema import (
    Structure,
    StructureSource,
    TargetDefinition,
    TargetKind,
    TargetValue,
)
from workbench.structures.crystal import Crystal
from workbench.structures.identity import Identity, fingerprints_agree, identify, site_mapping
from workbench.structures.validate import check_crystal

CHUNK_SIZE = 1000  # entries matched and written per round trip
PARALLEL_THRESHOLD = 64  # below this many entries, worker processes cost more than they save


@dataclass
class Checked:
    """An entry whose structure parsed, passed the checks and was described."""

    entry: Entry
    crystal: Crystal
    identity: Identity


@dataclass
class FileReport:
    file: str
    entries: int = 0
    new_structures: int = 0
    matched_structures: int = 0
    new_sources: int = 0
    new_labels: int = 0
    unchanged_labels: int = 0
    skipped: list[InputError] = field(default_factory=list)


def check_entry(entry: Entry) -> Checked | InputError:
    """Parse (if needed), check and describe one entry. Runs in worker processes."""
    if entry.error is not None:
        return entry.error.located(row=entry.row)
    try:
        crystal = entry.crystal
        if crystal is None:
            crystal, site_columns = parse_structure_text(entry.text or "", entry.text_format or "")
            for column, values in site_columns.items():
                if column in entry.site_targets:
                    target, units = entry.site_targets[column]
                    entry.labels.setdefault(target, Label(TargetKind.PER_SITE, values, units))
        nearest = check_crystal(crystal)
        entry.text = None  # parsed: no need to send it back to the main process
        return Checked(entry, crystal, identify(crystal, nearest))
    except InputError as error:
        return error.located(row=entry.row)
    except Exception as error:  # noqa: BLE001 - any parser failure is bad input of this row
        return InputError(str(error) or type(error).__name__, row=entry.row)


def import_file(
    engine: Engine,
    path: Path,
    *,
    source: str,
    options: ReadOptions,
    skip_bad: bool = False,
    executor: Executor | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> FileReport:
    """Import one file in one transaction; raise :class:`ImportFailed` and write nothing
    if any entry is bad and ``skip_bad`` is false."""
    return import_entries(
        engine, read_entries(path, options), source=source, file=str(path), options=options,
        skip_bad=skip_bad, executor=executor, on_progress=on_progress, on_total=on_total,
    )


def import_entries(
    engine: Engine,
    entries: list[Entry],
    *,
    source: str,
    file: str,
    options: ReadOptions,
    skip_bad: bool = False,
    executor: Executor | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> FileReport:
    """Import entries built in code (``file`` names where they came from) like a file."""
    report = FileReport(file=file, entries=len(entries))
    if on_total:
        on_total(len(entries))
    errors = [error.located(file=file) for error in _duplicate_id_errors(entries)]
    bad_rows = {error.row for error in errors}
    entries = [entry for entry in entries if entry.row not in bad_rows]
    if executor is not None and len(entries) >= PARALLEL_THRESHOLD:
        chunksize = max(1, min(256, len(entries) // 32))
        checked_stream: Iterable = executor.map(check_entry, entries, chunksize=chunksize)
    else:
        checked_stream = map(check_entry, entries)

    with session_scope(engine) as session:
        # Concurrent imports of the same crystals would each find them missing and add them.
        one_writer_at_a_time(session, "import")
        writer = StructureWriter(session, source=source, file=file, options=options)
        for chunk in _batched(checked_stream, CHUNK_SIZE):
            good = []
            for item in chunk:
                if isinstance(item, InputError):
                    errors.append(item.located(file=file))
                else:
                    good.append(item)
            errors.extend(error.located(file=file) for error in writer.write(good, report))
            if on_progress:
                on_progress(len(chunk))
        if errors and not skip_bad:
            raise ImportFailed(sorted(errors, key=_row_order))
    report.skipped = sorted(errors, key=_row_order)
    return report


def _row_order(error: InputError) -> tuple[int, str]:
    digits = "".join(ch if ch.isdigit() else " " for ch in error.row or "").split()
    return (int(digits[0]) if digits else 0, error.row or "")


def _duplicate_id_errors(entries: list[Entry]) -> list[InputError]:
    first_row: dict[str, str] = {}
    errors = []
    for entry in entries:
        if entry.error is not None:
            continue  # refused by its reader, for that reason; its id (perhaps empty) claims nothing
        if entry.external_id in first_row:
            errors.append(InputError(
                f"duplicate id {entry.external_id!r} (first at {first_row[entry.external_id]})",
                row=entry.row,
            ))
        else:
            first_row[entry.external_id] = entry.row
    return errors


def _batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


@dataclass(frozen=True)
class _New:
    """A structure this batch will insert, by its position in the insert."""

    index: int


@dataclass(frozen=True)
class _Candidate:
    """A structure an entry may duplicate: its crystal and fingerprint."""

    crystal: Crystal
    fingerprint: np.ndarray

    @classmethod
    def of(cls, item: Checked) -> "_Candidate":
        return cls(item.crystal, item.identity.fingerprint)


@dataclass(frozen=True)
class _LabelSeen:
    value: float | None
    value_array: np.ndarray | None
    source_file: str | None
    source_row: str | None


class StructureWriter:
    """Matches checked entries to structures and writes them, within one session (the
    importer's, and ``workbench.generate``'s for decorations of a prototype)."""

    def __init__(self, session, *, source: str, file: str, options: ReadOptions) -> None:
        self.session = session
        self.source = source
        self.file = file
        self.options = options
        self.targets = {t.name: t for t in session.scalars(select(TargetDefinition))}
        # Structures this file added, by dedup key, so duplicates inside the file meet.
        self.added: dict[str, list[tuple[int, _Candidate]]] = {}

    def write(self, batch: list[Checked], report: FileReport) -> list[InputError]:
        errors: list[InputError] = []
        known_sources = self._known_sources([item.entry.external_id for item in batch])
        stored = self._stored_candidates([item for item in batch if item.entry.external_id not in known_sources])
        candidate_ids = {sid for sid, _, _ in known_sources.values()}
        candidate_ids |= {sid for pairs in stored.values() for sid, _ in pairs}
        candidate_ids |= {sid for pairs in self.added.values() for sid, _ in pairs}
        labelled = self._existing_labels(candidate_ids)
        new_items: list[Checked] = []
        new_by_key: dict[str, list[tuple[_New, _Candidate]]] = {}
        planned: list[tuple[Checked, int | _New, bool, list[dict]]] = []
        for item in batch:
            defined_before = set(self.targets)
            try:
                labels = {name: self._checked_label(name, label, item)
                          for name, label in item.entry.labels.items()}
                ref, mapping, known = self._match(item, known_sources, stored, new_by_key)
                is_new = ref is None
                if is_new:
                    ref = _New(len(new_items))
                label_rows = self._label_rows(item, ref, mapping, labels, labelled, report)
            except InputError as error:
                self._forget_targets(set(self.targets) - defined_before)
                errors.append(error.located(row=item.entry.row))
                continue
            if is_new:
                new_items.append(item)
                new_by_key.setdefault(item.identity.dedup_key, []).append((ref, _Candidate.of(item)))
            else:
                report.matched_structures += 1
            planned.append((item, ref, known, label_rows))

        new_ids: list[int] = []
        if new_items:
            new_ids = insert_returning_ids(
                self.session, Structure.__table__, [_structure_row(item) for item in new_items]
            )
            for item, structure_id in zip(new_items, new_ids, strict=True):
                self.added.setdefault(item.identity.dedup_key, []).append((structure_id, _Candidate.of(item)))
            report.new_structures += len(new_ids)
        value_rows, source_rows = [], []
        stored_origins = self._stored_origins(batch)
        for item, ref, known, label_rows in planned:
            structure_id = new_ids[ref.index] if isinstance(ref, _New) else ref
            value_rows.extend(dict(row, structure_id=structure_id) for row in label_rows)
            if not known:
                source_rows.append(self._source_row(self.source, item.entry.external_id, structure_id))
            for origin in item.entry.origins:
                if origin not in stored_origins and origin != (self.source, item.entry.external_id):
                    stored_origins.add(origin)
                    source_rows.append(self._source_row(*origin, structure_id))
        if source_rows:
            self.session.execute(insert(StructureSource), source_rows)
            report.new_sources += len(source_rows)
        if value_rows:
            self.session.execute(insert(TargetValue), value_rows)
            report.new_labels += len(value_rows)
        return errors

    def _known_sources(self, external_ids: list[str]) -> dict[str, tuple[int, str, Crystal]]:
        rows = self.session.execute(
            select(StructureSource.external_id, Structure.id, Structure.reduced_formula,
                   Structure.lattice, Structure.species, Structure.frac_coords)
            .join(Structure, Structure.id == StructureSource.structure_id)
            .where(StructureSource.source == self.source,
                   one_of(self.session, StructureSource.external_id, external_ids))
        )
        return {
            row.external_id: (row.id, row.reduced_formula,
                              Crystal.from_stored(row.lattice, row.species, row.frac_coords))
            for row in rows
        }

    def _stored_candidates(self, batch: list[Checked]) -> dict[str, list[tuple[int, "_Candidate"]]]:
        keys = {key for item in batch for key in item.identity.neighbour_keys()}
        candidates: dict[str, list[tuple[int, _Candidate]]] = {}
        if not keys:
            return candidates
        rows = self.session.execute(
            select(Structure.id, Structure.dedup_key, Structure.fingerprint, Structure.lattice,
                   Structure.species, Structure.frac_coords)
            .where(one_of(self.session, Structure.dedup_key, keys))
        )
        for row in rows:
            crystal = Crystal.from_stored(row.lattice, row.species, row.frac_coords)
            candidates.setdefault(row.dedup_key, []).append((row.id, _Candidate(crystal, row.fingerprint)))
        return candidates

    def _match(self, item: Checked, known_sources, stored, new_by_key
               ) -> tuple[int | _New | None, np.ndarray, bool]:
        """``(stored id, new structure of this batch, or None; site mapping; whether the
        source row exists already)``."""
        identity_mapping = np.arange(item.crystal.nsites)
        known = known_sources.get(item.entry.external_id)
        if known is not None:
            structure_id, formula, crystal = known
            mapping = site_mapping(crystal, item.crystal)
            if mapping is None:
                raise InputError(
                    f"id {item.entry.external_id!r} of source {self.source!r} is already stored as "
                    f"structure {structure_id} ({formula}), which this structure does not match"
                )
            return structure_id, mapping, True
        for key in item.identity.neighbour_keys():
            pairs = stored.get(key, []) + self.added.get(key, []) + new_by_key.get(key, [])
            for ref, candidate in pairs:
                if not fingerprints_agree(candidate.fingerprint, item.identity.fingerprint):
                    continue
                mapping = site_mapping(candidate.crystal, item.crystal)
                if mapping is not None:
                    return ref, mapping, False
        return None, identity_mapping, False

    def _checked_label(self, name: str, label: Label, item: Checked) -> Label:
        """The label checked against its target definition, which is created on first use."""
        if label.kind is TargetKind.SPECTRUM and np.ndim(label.value) != 1:
            # Before _define, which takes the spectrum's length from it.
            raise InputError(f"spectrum has shape {np.shape(label.value)}, expected a 1-d array", field=name)
        definition = self.targets.get(name)
        if definition is None:
            definition = self._define(name, label)
        if definition.kind != label.kind:
            raise InputError(f"target {name!r} is {definition.kind.value}, not {label.kind.value}", field=name)
        if label.kind is TargetKind.SCALAR:
            if not math.isfinite(label.value):
                raise InputError(f"value {label.value} is not finite", field=name)
            return label
        value = np.asarray(label.value, dtype=float)
        if not np.isfinite(value).all():
            raise InputError("array holds NaN or infinite values", field=name)
        if label.kind is TargetKind.SPECTRUM:
            if len(value) != definition.length:
                raise InputError(
                    f"spectrum has shape {value.shape}, expected ({definition.length},)", field=name
                )
        elif value.shape[:1] != (item.crystal.nsites,) or list(value.shape[1:]) != definition.site_shape:
            expected = (item.crystal.nsites, *definition.site_shape)
            raise InputError(
                f"per-site array has shape {value.shape}, expected {expected} "
                f"({item.crystal.nsites} sites)", field=name,
            )
        return Label(label.kind, value, label.units)

    def _define(self, name: str, label: Label) -> TargetDefinition:
        value = np.asarray(label.value)
        grid, grid_units = self.options.grids.get(name, (label.grid, label.grid_units))
        if label.kind is TargetKind.SPECTRUM and grid is not None and len(grid) != value.shape[-1]:
            raise InputError(f"the grid has {len(grid)} points, the spectrum {value.shape[-1]}", field=name)
        definition = TargetDefinition(
            name=name,
            kind=label.kind,
            units=self.options.units.get(name, label.units),
            description="",
            grid=grid if label.kind is TargetKind.SPECTRUM else None,
            grid_units=grid_units if label.kind is TargetKind.SPECTRUM and grid is not None else "",
            length=len(value) if label.kind is TargetKind.SPECTRUM else None,
            site_shape=list(value.shape[1:]) if label.kind is TargetKind.PER_SITE else None,
        )
        self.session.add(definition)
        self.session.flush()
        self.targets[name] = definition
        return definition

    def _forget_targets(self, names: set[str]) -> None:
        """Delete targets that a rejected entry defined: later entries must not be checked
        against its kind, length or shape, and ``skip_bad`` must not commit them."""
        for name in names:
            self.session.delete(self.targets.pop(name))
        if names:
            self.session.flush()  # before a later entry defines the same name again

    def _existing_labels(self, structure_ids: set[int]) -> dict[tuple, "_LabelSeen"]:
        if not structure_ids:
            return {}
        rows = self.session.execute(
            select(TargetValue.structure_id, TargetValue.target_id, TargetValue.value,
                   TargetValue.value_array, TargetValue.source_file, TargetValue.source_row)
            .where(one_of(self.session, TargetValue.structure_id, structure_ids))
        )
        return {
            (row.structure_id, row.target_id): _LabelSeen(row.value, row.value_array, row.source_file, row.source_row)
            for row in rows
        }

    def _label_rows(self, item: Checked, ref: int | _New, mapping: np.ndarray,
                    labels: dict[str, Label], labelled: dict, report: FileReport) -> list[dict]:
        """Rows to insert for an entry's labels; a label equal to the stored one is skipped,
        a different one is a conflict. ``labelled`` and ``report`` learn of the rows planned
        here only once all labels passed, so that a rejected entry leaves no trace."""
        rows, seen, unchanged = [], {}, 0
        for name, label in labels.items():
            target = self.targets[name]
            value, array = None, None
            if label.kind is TargetKind.SCALAR:
                value = float(label.value)
            elif label.kind is TargetKind.PER_SITE:
                array = np.empty_like(label.value)
                array[mapping] = label.value  # into the stored structure's site order
            else:
                array = label.value
            previous = labelled.get((ref, target.id))
            if previous is not None:
                if _same_value(previous, value, array):
                    unchanged += 1
                    continue
                raise InputError(
                    f"{name} is already {_describe_value(previous.value, previous.value_array)} "
                    f"for this structure (from {previous.source_file}, {previous.source_row}); "
                    f"this entry gives {_describe_value(value, array)}",
                    field=name,
                )
            row = {"target_id": target.id, "value": value, "value_array": array,
                   "source_file": self.file, "source_row": item.entry.row[:64]}
            seen[(ref, target.id)] = _LabelSeen(value, array, self.file, item.entry.row)
            rows.append(row)
        labelled.update(seen)
        report.unchanged_labels += unchanged
        return rows

    def _source_row(self, source: str, external_id: str, structure_id: int) -> dict:
        return {"structure_id": structure_id, "source": source, "external_id": external_id,
                "file": self.file}

    def _stored_origins(self, batch: list[Checked]) -> set[tuple[str, str]]:
        origins = {origin for item in batch for origin in item.entry.origins}
        if not origins:
            return set()
        pair = tuple_(StructureSource.source, StructureSource.external_id)
        rows = self.session.execute(
            select(StructureSource.source, StructureSource.external_id).where(pair.in_(sorted(origins)))
        )
        return {(row.source, row.external_id) for row in rows}


def _structure_row(item: Checked) -> dict:
    identity, crystal = item.identity, item.crystal
    return {
        "formula": identity.formula,
        "reduced_formula": identity.reduced_formula,
        "chemical_system": identity.chemical_system,
        "composition": identity.composition,
        "elements": identity.elements,
        "nsites": identity.nsites,
        "nelements": len(identity.elements),
        "lattice": crystal.lattice.tolist(),
        "species": list(crystal.species),
        "frac_coords": crystal.frac_coords,
        "volume": identity.volume,
        "density": identity.density,
        "spacegroup_number": identity.spacegroup_number,
        "spacegroup_symbol": identity.spacegroup_symbol,
        "dedup_key": identity.dedup_key,
        "fingerprint": identity.fingerprint,
    }


def _same_value(previous, value: float | None, array: np.ndarray | None) -> bool:
    if value is not None:
        return previous.value is not None and math.isclose(previous.value, value, rel_tol=1e-9, abs_tol=1e-12)
    return (
        previous.value_array is not None
        and previous.value_array.shape == array.shape
        and np.allclose(previous.value_array, array, rtol=1e-9, atol=1e-12)
    )


def _describe_value(value: float | None, array: np.ndarray | None) -> str:
    return f"{value:g}" if value is not None else f"an array of shape {array.shape}"
