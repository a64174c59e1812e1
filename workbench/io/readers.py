"""Read structure files into :class:`Entry` records, one reader per format.

Formats are told apart by name (``*.cif``, ``POSCAR*``/``CONTCAR*``/``*.vasp``,
``*.xyz``/``*.extxyz``, ``*.csv``, ``*.db``, and ALIGNN's ``id_prop.csv``) and, for
``*.json``/``*.json.gz``, by content (an ASE JSON database or pymatgen structure dicts). Readers check the shape of the file;
physical checks happen later, in the importer. Text files must be UTF-8 and ``.gz`` files
complete: anything else is refused by name, never decoded with replacement characters.
"""

import csv
import gzip
import io
import json
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import ase.io
import numpy as np
from pymatgen.core import Structure

from workbench.errors import InputError
from workbench.io.ase_db import entries_from_atoms, read_ase_db
from workbench.io.entries import ID_COLUMNS, Entry, Label
from workbench.io.structure_text import (
    CIF_SITE_COLUMNS,
    cif_blocks,
    crystal_from_block,
    guess_text_format,
    read_poscar,
)
from workbench.store.schema import TargetKind
from workbench.structures.crystal import Crystal

STRUCTURE_COLUMNS = {"cif": "cif", "poscar": "poscar", "structure": None}
ID_PROP_COLUMN = "value"


@dataclass(frozen=True)
class ReadOptions:
    """How to read labels.

    ``targets`` maps a column, array, info or key-value name in the file to a target name
    (``--target NAME=COLUMN``); when empty, every numeric column becomes a target of the
    same name. ``units`` gives units for targets the import creates, and ``grids`` the
    axis (values and their units) of spectra it creates.
    """

    targets: dict[str, str] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    grids: dict[str, tuple[np.ndarray, str]] = field(default_factory=dict)

    def target_for(self, column: str) -> str | None:
        if not self.targets:
            return column
        return self.targets.get(column)


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".cif"):
        return "cif"
    if name.startswith(("poscar", "contcar")) or name.endswith((".vasp", ".poscar")):
        return "poscar"
    if name.endswith((".xyz", ".extxyz")):
        return "extxyz"
    if name == "id_prop.csv":
        return "id-prop"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith(".db"):
        return "ase-db"
    if name.endswith((".json", ".json.gz")):
        return "json"
    raise InputError(
        "unknown file type (expected .cif, POSCAR/CONTCAR/.vasp, .xyz/.extxyz, .json, .db, .csv)",
        file=str(path),
    )


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given; a directory stands for every readable file below it, sorted."""
    files = []
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file():
                    try:
                        detect_format(child)
                    except InputError:
                        continue
                    files.append(child)
        elif path.is_file():
            files.append(path)
        else:
            raise InputError("no such file or directory", file=str(path))
    return files


def read_entries(path: Path, options: ReadOptions) -> list[Entry]:
    """All entries of one file; raises :class:`InputError` if the file cannot be read at all."""
    reader = {
        "cif": _read_cif_file,
        "poscar": _read_poscar_file,
        "extxyz": _read_extxyz,
        "csv": _read_csv,
        "id-prop": _read_id_prop,
        "ase-db": lambda p, o: read_ase_db(p, o.target_for),
        "json": _read_json,
    }[detect_format(path)]
    try:
        return reader(path, options)
    except InputError as error:
        raise error.located(file=str(path)) from None
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read file: {error}", file=str(path)) from None


def read_text(path: Path) -> str:
    """A text file's content: gunzipped if its name ends in ``.gz``, decoded as UTF-8 (a
    leading byte-order mark is dropped). Raises :class:`InputError` naming the file if it
    is not a complete gzip stream or not UTF-8."""
    data = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as error:
            raise InputError(f"not a complete gzip file, truncated or damaged ({error})", file=str(path)) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise InputError(
            f"not UTF-8 text: byte 0x{data[error.start]:02x} on line {line} is not valid UTF-8 "
            "(save the file as UTF-8)", file=str(path),
        ) from None


def _read_cif_file(path: Path, options: ReadOptions) -> list[Entry]:
    blocks = cif_blocks(read_text(path))
    entries = []
    for index, block in enumerate(blocks, start=1):
        external_id = path.stem if len(blocks) == 1 else block.name
        row = f"block {index} (data_{block.name})"
        try:
            crystal, site_columns = crystal_from_block(block)
        except ValueError as error:  # this block only: --skip-bad can leave it out
            entries.append(Entry(row, external_id, error=InputError(str(error))))
            continue
        entries.append(Entry(row, external_id, crystal, labels=_site_column_labels(site_columns, options)))
    return entries


def _site_column_labels(site_columns: dict[str, np.ndarray], options: ReadOptions) -> dict[str, Label]:
    targets = _site_targets(options)
    return {targets[column][0]: Label(TargetKind.PER_SITE, values, targets[column][1])
            for column, values in site_columns.items() if column in targets}


def _site_targets(options: ReadOptions) -> dict[str, tuple[str, str]]:
    """Per-site CIF columns that become labels under ``options``: column -> (target, units)."""
    targets = {}
    for column in CIF_SITE_COLUMNS.values():
        target = options.target_for(column)
        if target:
            targets[column] = (target, options.units.get(target, "e"))
    return targets


def _read_poscar_file(path: Path, options: ReadOptions) -> list[Entry]:
    return [Entry("file", path.name, read_poscar(read_text(path)))]


def _read_extxyz(path: Path, options: ReadOptions) -> list[Entry]:
    frames = ase.io.read(io.StringIO(read_text(path)), index=":", format="extxyz")
    return entries_from_atoms(frames, path.stem, options.target_for, row_word="frame")


def _read_json(path: Path, options: ReadOptions) -> list[Entry]:
    text = read_text(path)
    document = json.loads(text)
    if isinstance(document, dict) and "nextid" in document:
        return read_ase_db(path, options.target_for, json_text=text)
    if isinstance(document, dict) and "lattice" in document and "sites" in document:
        items = [(path.stem, document)]
    elif isinstance(document, list):
        items = [(f"{path.stem}:{index}", item) for index, item in enumerate(document)]
    elif isinstance(document, dict):
        items = list(document.items())
    else:
        raise InputError("JSON must hold a structure dict, a list of them, or a mapping id -> structure")
    entries = []
    for index, (external_id, item) in enumerate(items, start=1):
        row = f"entry {index} (id {external_id})"
        if isinstance(item, str):
            entries.append(Entry(row, str(external_id), text=item, text_format=guess_text_format(item),
                                 site_targets=_site_targets(options)))
        elif isinstance(item, dict):
            try:
                structure = Structure.from_dict(item)
                entries.append(Entry(row, str(external_id), Crystal.from_pymatgen(structure),
                                     labels=_property_labels(structure.properties, options)))
            except (KeyError, ValueError, TypeError) as error:
                bad = InputError(f"not a usable pymatgen structure dict: {error}")
                entries.append(Entry(row, str(external_id), error=bad))
        else:
            bad = InputError("expected a structure dict or a POSCAR/CIF string")
            entries.append(Entry(row, str(external_id), error=bad))
    return entries


def _property_labels(properties: dict, options: ReadOptions) -> dict[str, Label]:
    labels = {}
    for key, value in (properties or {}).items():
        target = options.target_for(key)
        if target and isinstance(value, int | float) and not isinstance(value, bool):
            labels[target] = Label(TargetKind.SCALAR, float(value), options.units.get(target, ""))
    return labels


def _read_csv(path: Path, options: ReadOptions) -> list[Entry]:
    csv.field_size_limit(sys.maxsize)  # CIF columns are long
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    columns = reader.fieldnames or []
    lowered = {column.lower(): column for column in columns}
    structure_column = next((lowered[name] for name in STRUCTURE_COLUMNS if name in lowered), None)
    if structure_column is None:
        raise InputError(f"no structure column: expected one of {', '.join(STRUCTURE_COLUMNS)}")
    id_column = next((lowered[name] for name in ID_COLUMNS if name in lowered), None)
    rows = list(reader)
    site_columns = set(CIF_SITE_COLUMNS.values())  # read from the CIFs, not the table
    missing = [column for column in options.targets if column not in columns and column not in site_columns]
    if missing:
        raise InputError(f"--target names columns not in the file: {', '.join(missing)}")
    target_columns = _csv_target_columns(columns, rows, options, {structure_column, id_column})
    fixed_format = STRUCTURE_COLUMNS[structure_column.lower()]
    entries = []
    for number, row in enumerate(rows, start=1):
        external_id = (row.get(id_column) or "").strip() if id_column else str(number)
        where = f"row {number}" + (f" (id {external_id})" if id_column and external_id else "")
        text = row.get(structure_column) or ""
        text_format = fixed_format or guess_text_format(text)
        entry = Entry(where, external_id, text=text, text_format=text_format, site_targets=_site_targets(options))
        if not external_id:  # this row's error, so that --skip-bad leaves out just this row
            entry.error = InputError(f"empty {id_column}", row=where, field=id_column)
            entries.append(entry)
            continue
        try:
            for column, target in target_columns.items():
                cell = (row.get(column) or "").strip()
                if cell:  # an empty cell is a missing label, not an error
                    entry.labels[target] = Label(TargetKind.SCALAR, _csv_number(cell, where, column),
                                                 options.units.get(target, ""))
        except InputError as error:
            entry.error = error
        entries.append(entry)
    return entries


def _read_id_prop(path: Path, options: ReadOptions) -> list[Entry]:
    """ALIGNN's dataset layout: rows of ``structure file, value[, value ...]``, no header.

    The values are read as column ``value``: a scalar if there is one per row, else a
    spectrum. Name the target with ``--target NAME=value``.
    """
    target = options.target_for(ID_PROP_COLUMN)
    entries = []
    for number, row in enumerate(csv.reader(io.StringIO(read_text(path), newline="")), start=1):
        if not row:
            continue
        file_name, cells = row[0].strip(), row[1:]
        where = f"row {number} (id {file_name})"
        text_format = "cif" if file_name.lower().endswith(".cif") else "poscar"
        entry = Entry(where, file_name, text_format=text_format, site_targets=_site_targets(options))
        try:
            structure_path = path.parent / file_name
            if not structure_path.is_file():
                raise InputError(f"structure file {file_name!r} not found next to {path.name}")
            entry.text = read_text(structure_path)
            values = [_csv_number(cell, where, f"{ID_PROP_COLUMN} {index}")
                      for index, cell in enumerate(cells, 1)]
            if target and values:
                kind = TargetKind.SCALAR if len(values) == 1 else TargetKind.SPECTRUM
                value = values[0] if kind is TargetKind.SCALAR else np.array(values)
                entry.labels[target] = Label(kind, value, options.units.get(target, ""))
        except InputError as error:
            entry.error = error
        entries.append(entry)
    return entries


def _csv_target_columns(
    columns: list[str], rows: list[dict], options: ReadOptions, reserved: set[str | None]
) -> dict[str, str]:
    if options.targets:
        return {column: target for column, target in options.targets.items() if column in columns}
    targets = {}
    for column in columns:
        if column in reserved or not column.strip():
            continue  # unnamed columns are row indexes written by pandas
        # The first filled cell decides, not the first row's: an empty cell is a missing
        # label (see _read_csv), and must not hide the column's labels in every other row.
        first_value = next((row[column] for row in rows if (row.get(column) or "").strip()), "")
        try:
            float(first_value)
        except ValueError:
            continue
        targets[column] = column
    return targets


def _csv_number(cell: str, row: str, column: str) -> float:
    try:
        return float(cell)
    except ValueError:
        raise InputError(f"{cell!r} is not a number", row=row, field=column) from None
