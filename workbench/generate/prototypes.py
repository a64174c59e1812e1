"""Where a prototype comes from: a stored structure, a structure file, or the AFLOW
prototype library that pymatgen ships (288 prototypes, Mehl et al. 2017).

A prototype that is not stored yet is imported first (source ``aflow-prototype`` with its
label as external id, or ``prototype`` for a file), so that every candidate's lineage
points at a stored parent.
"""

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select

from workbench.errors import InputError, NotFound
from workbench.io.entries import Entry
from workbench.io.importer import check_entry, import_entries
from workbench.io.readers import ReadOptions, read_entries
from workbench.store.engine import session_scope
from workbench.store.schema import Structure, StructureSource
from workbench.structures.crystal import Crystal

AFLOW_PREFIX = "aflow:"
AFLOW_SOURCE = "aflow-prototype"
FILE_SOURCE = "prototype"
# Labels the library holds more than once are told apart by a suffix: "A_tI2_139_a#2".
DUPLICATE_MARK = "#"


@dataclass(frozen=True)
class Prototype:
    """A stored structure to decorate, and how the user named it."""

    structure_id: int
    crystal: Crystal
    name: str

    @property
    def elements(self) -> list[str]:
        return sorted(set(self.crystal.species))


@dataclass(frozen=True)
class LibraryPrototype:
    """One prototype of pymatgen's AFLOW library."""

    label: str
    mineral: str
    pearson: str
    strukturbericht: str
    crystal: Crystal


def aflow_library() -> list[LibraryPrototype]:
    """pymatgen's AFLOW prototypes, in the library's order, each with a unique label."""
    import gzip
    import json
    from importlib.resources import files

    from pymatgen.core import Structure

    # Plain JSON, not monty's loadfn: rebuilding the StructureNL objects takes 40 times longer.
    with gzip.open(str(files("pymatgen.analysis") / "prototypes" / "aflow_prototypes.json.gz")) as stream:
        records = json.load(stream)
    counts: dict[str, int] = {}
    for record in records:
        counts[record["tags"]["aflow"]] = counts.get(record["tags"]["aflow"], 0) + 1
    seen: dict[str, int] = {}
    library = []
    for record in records:
        tags = record["tags"]
        label = tags["aflow"]
        if counts[label] > 1:
            seen[label] = seen.get(label, 0) + 1
            label = f"{label}{DUPLICATE_MARK}{seen[label]}"
        library.append(LibraryPrototype(
            label=label, mineral=str(tags.get("mineral", "")), pearson=str(tags.get("pearson", "")),
            strukturbericht=str(tags.get("strukturbericht", "")),
            crystal=Crystal.from_pymatgen(Structure.from_dict(record["snl"])),
        ))
    return library


def resolve_prototype(engine: Engine, spec: str) -> Prototype:
    """The prototype ``spec`` names: a stored structure id, ``aflow:<label>`` or a file."""
    if spec.isdigit():
        return stored_prototype(engine, int(spec), spec)
    if spec.startswith(AFLOW_PREFIX):
        return _from_library(engine, spec.removeprefix(AFLOW_PREFIX), spec)
    path = Path(spec)
    if path.exists():
        return _from_file(engine, path, spec)
    raise InputError(
        f"prototype {spec!r} is neither a structure id, an {AFLOW_PREFIX}<label> of the AFLOW "
        "library (`workbench generate prototypes`) nor an existing file", field="--prototype")


def stored_prototype(engine: Engine, structure_id: int, name: str) -> Prototype:
    with session_scope(engine) as session:
        row = session.execute(select(Structure.lattice, Structure.species, Structure.frac_coords)
                              .where(Structure.id == structure_id)).one_or_none()
    if row is None:
        raise NotFound(f"no structure with id {structure_id} to use as prototype")
    crystal = Crystal.from_stored(row.lattice, row.species, row.frac_coords)
    return Prototype(structure_id, crystal, name)


def source_structures(engine: Engine, source: str) -> list[int]:
    """Ids, ascending, of the structures recorded under a source label."""
    with session_scope(engine) as session:
        return sorted(set(session.scalars(
            select(StructureSource.structure_id).where(StructureSource.source == source))))


def _from_library(engine: Engine, label: str, name: str) -> Prototype:
    library = {entry.label: entry for entry in aflow_library()}
    if label not in library:
        alike = sorted(known for known in library if known.split(DUPLICATE_MARK)[0] == label)
        hint = f"; the library holds it more than once: {', '.join(alike)}" if alike else ""
        raise InputError(f"no prototype {label!r} in the AFLOW library{hint}", field="--prototype")
    entry = Entry(row=label, external_id=label, crystal=library[label].crystal)
    return _store(engine, entry, AFLOW_SOURCE, "pymatgen aflow_prototypes.json.gz", name)


def _from_file(engine: Engine, path: Path, name: str) -> Prototype:
    entries = read_entries(path, ReadOptions())
    if len(entries) != 1:
        raise InputError(f"holds {len(entries)} structures; a prototype file holds one", file=str(path))
    checked = check_entry(entries[0])
    if isinstance(checked, InputError):
        raise checked.located(file=str(path))
    entry = Entry(row=checked.entry.row, external_id=checked.entry.external_id, crystal=checked.crystal)
    return _store(engine, entry, FILE_SOURCE, str(path), name)


def _store(engine: Engine, entry: Entry, source: str, file: str, name: str) -> Prototype:
    """Import the prototype (a stored equal crystal is linked) and return it as stored."""
    import_entries(engine, [entry], source=source, file=file, options=ReadOptions())
    with session_scope(engine) as session:
        structure_id = session.scalars(select(StructureSource.structure_id).where(
            StructureSource.source == source, StructureSource.external_id == entry.external_id)).one()
    return stored_prototype(engine, structure_id, name)
