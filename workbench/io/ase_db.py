"""ASE databases in and out.

Import: a row's structure becomes a structure; calculator results (energy, free energy,
total magnetic moment; forces, magnetic moments and charges per site) become targets of
the same name; numeric key-value pairs become scalar targets; arrays in ``data`` become
spectra (or per-site values, where the file's metadata says so).

Export writes the same layout, with scalar targets as key-value pairs named
``wb_<target>``, and the target definitions in the database's metadata, so that
re-importing an export restores everything.
"""

import io
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import ase.db
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from workbench.errors import InputError
from workbench.io.entries import FRAME_ID_KEYS, Entry, Label
from workbench.store.schema import TargetKind
from workbench.structures.crystal import Crystal

KEY_PREFIX = "wb_"
METADATA_KEY = "workbench"
# ASE calculator properties and the kind and units of the targets they feed.
CALCULATOR_TARGETS: dict[str, tuple[TargetKind, str]] = {
    "energy": (TargetKind.SCALAR, "eV"),
    "free_energy": (TargetKind.SCALAR, "eV"),
    "magmom": (TargetKind.SCALAR, "μB"),
    "forces": (TargetKind.PER_SITE, "eV/Å"),
    "magmoms": (TargetKind.PER_SITE, "μB"),
    "charges": (TargetKind.PER_SITE, "e"),
}
# Per-atom arrays of an Atoms object that describe the structure, not a property of it.
STRUCTURAL_ARRAYS = {"numbers", "positions", "species", "Z", "mass", "masses", "tags", "momenta", "initial_magmoms", "initial_charges"}

TargetFor = Callable[[str], str | None]


def key_for_target(target: str) -> str:
    """A legal, prefixed ASE key-value name for a target name."""
    return KEY_PREFIX + re.sub(r"[^0-9a-zA-Z_]", "_", target)


def entries_from_atoms(
    frames: Iterable[Atoms], stem: str, target_for: TargetFor, *, row_word: str
) -> list[Entry]:
    """Entries from Atoms objects as ASE's extxyz reader returns them."""
    entries = []
    for index, atoms in enumerate(frames, start=1):
        info = atoms.info
        id_key = next((key for key in FRAME_ID_KEYS if key in info), None)
        external_id = str(info[id_key]) if id_key else f"{stem}:{index}"
        row = f"{row_word} {index}"
        labels: dict[str, Label] = {}
        for name, values in atoms.arrays.items():
            if name not in STRUCTURAL_ARRAYS and np.issubdtype(values.dtype, np.number):
                _add(labels, target_for, name, TargetKind.PER_SITE, np.array(values, dtype=float), "")
        for name, value in info.items():
            if name == id_key:
                continue  # a numeric id is the frame's id, not a label
            if isinstance(value, int | float | np.floating) and not isinstance(value, bool):
                _add(labels, target_for, name, TargetKind.SCALAR, float(value), "")
        _add_calculator_results(labels, target_for, atoms.calc.results if atoms.calc else {})
        entries.append(_entry(row, external_id, atoms, labels))
    return entries


def read_ase_db(path: Path, target_for: TargetFor, *, json_text: str | None = None) -> list[Entry]:
    """Entries of an ASE database: SQLite at ``path``, or JSON given as ``json_text``.

    JSON comes as text because the caller has read it already, gunzipped where the name
    ends in ``.gz``; ASE would open the path itself and cannot read gzip.
    """
    if json_text is None:
        database = ase.db.connect(str(path), type="db")
    else:
        database = ase.db.connect(io.StringIO(json_text), type="json")
    definitions = database.metadata.get(METADATA_KEY, {}).get("targets", {})
    key_to_target = {spec["key"]: name for name, spec in definitions.items()}
    entries = []
    for row in database.select():
        where = f"row id {row.id}"
        origins = [(str(source), str(external_id))
                   for source, external_id in row.data.get(f"{KEY_PREFIX}sources", [])]
        external_id = origins[0][1] if origins else row.unique_id
        labels: dict[str, Label] = {}
        for key, value in row.key_value_pairs.items():
            if definitions and key not in key_to_target:
                continue  # a workbench export: only its target keys are labels
            if isinstance(value, int | float | np.number) and not isinstance(value, bool | np.bool_):
                name = key_to_target.get(key, key)
                spec = definitions.get(name, {})
                _add(labels, target_for, name, TargetKind.SCALAR, float(value), spec.get("units", ""))
        for key, value in row.data.items():
            if key.startswith(KEY_PREFIX):
                continue
            name = key_to_target.get(key, key)
            spec = definitions.get(name, {})
            kind = TargetKind(spec.get("kind", TargetKind.SPECTRUM))
            grid = None if spec.get("grid") is None else np.asarray(spec["grid"], dtype=float)
            target = target_for(name)
            if target:
                labels[target] = Label(kind, np.asarray(value, dtype=float), spec.get("units", ""),
                                       grid, spec.get("grid_units", ""))
        results = {prop: row.get(prop) for prop in CALCULATOR_TARGETS if row.get(prop) is not None}
        _add_calculator_results(labels, target_for, results, definitions)
        entry = _entry(where, external_id, row.toatoms(), labels)
        entry.origins = origins
        entries.append(entry)
    return entries


def _entry(row: str, external_id: str, atoms: Atoms, labels: dict[str, Label]) -> Entry:
    try:
        return Entry(row, external_id, Crystal.from_ase(atoms), labels=labels)
    except ValueError as error:
        return Entry(row, external_id, error=InputError(str(error)))


def _add_calculator_results(labels: dict[str, Label], target_for: TargetFor, results: dict,
                            definitions: dict[str, dict] | None = None) -> None:
    """Labels of calculator results, in ASE's units unless an export's definition of the
    target says otherwise (a target named ``energy`` may be in eV/atom)."""
    for prop, (kind, units) in CALCULATOR_TARGETS.items():
        if prop in results and results[prop] is not None:
            value = results[prop]
            value = float(value) if kind is TargetKind.SCALAR else np.array(value, dtype=float)
            units = (definitions or {}).get(prop, {}).get("units", units)
            _add(labels, target_for, prop, kind, value, units)


def _add(labels: dict[str, Label], target_for: TargetFor, name: str, kind: TargetKind,
         value: float | np.ndarray, units: str) -> None:
    target = target_for(name)
    if target:
        labels[target] = Label(kind, value, units)


def write_ase_db(path: Path, rows: Iterable["ExportRow"], definitions: dict[str, dict]) -> int:
    """Write rows to a new ASE database (``.db`` or ``.json``); returns the number written."""
    database = ase.db.connect(str(path), append=False)
    count = 0
    with database:
        for row in rows:
            database.write(row.atoms, key_value_pairs=row.key_value_pairs, data=row.data)
            count += 1
    database.metadata = {METADATA_KEY: {"targets": definitions}}
    return count


class ExportRow:
    """One structure as an ASE row: Atoms with results attached, key-value pairs, data."""

    def __init__(self, crystal: Crystal, key_value_pairs: dict, data: dict, results: dict) -> None:
        self.atoms = crystal.to_ase()
        if results:
            self.atoms.calc = SinglePointCalculator(self.atoms, **results)
        self.key_value_pairs = key_value_pairs
        self.data = data
