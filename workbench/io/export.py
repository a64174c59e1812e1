"""Export structures and their labels to an ASE database (``.db`` or ``.json``)."""

from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from workbench.errors import OutputExists
from workbench.io.ase_db import (
    CALCULATOR_TARGETS,
    KEY_PREFIX,
    ExportRow,
    key_for_target,
    write_ase_db,
)
from workbench.store.schema import (
    Structure,
    StructureSource,
    TargetDefinition,
    TargetKind,
    TargetValue,
)
from workbench.structures.crystal import Crystal

EXPORT_BATCH = 2000


def export_ase(engine: Engine, path: Path, *, overwrite: bool = False) -> int:
    """Write every structure with its labels to a new ASE database; returns the row count."""
    if path.exists() and not overwrite:
        raise OutputExists(f"{path} exists (use overwrite to replace it)")
    with Session(engine) as session:
        definitions = {t.id: t for t in session.scalars(select(TargetDefinition))}
        metadata = {t.name: _definition_metadata(t) for t in definitions.values()}
        return write_ase_db(path, _rows(session, definitions), metadata)


def _definition_metadata(target: TargetDefinition) -> dict:
    if target.name in CALCULATOR_TARGETS:
        key = target.name
    elif target.kind is TargetKind.SCALAR:
        key = key_for_target(target.name)
    else:
        key = target.name  # arrays live in row.data under the target's own name
    return {
        "key": key,
        "kind": target.kind.value,
        "units": target.units,
        "description": target.description,
        "length": target.length,
        "site_shape": target.site_shape,
        "grid": None if target.grid is None else target.grid.tolist(),
        "grid_units": target.grid_units,
    }


def _rows(session: Session, definitions: dict[int, TargetDefinition]) -> Iterator[ExportRow]:
    last_id = 0
    while True:
        structures = session.scalars(
            select(Structure).where(Structure.id > last_id).order_by(Structure.id).limit(EXPORT_BATCH)
        ).all()
        if not structures:
            return
        ids = [s.id for s in structures]
        labels: dict[int, list[TargetValue]] = {}
        for value in session.scalars(select(TargetValue).where(TargetValue.structure_id.in_(ids))):
            labels.setdefault(value.structure_id, []).append(value)
        sources: dict[int, list[list[str]]] = {}
        for source in session.scalars(
            select(StructureSource).where(StructureSource.structure_id.in_(ids)).order_by(StructureSource.id)
        ):
            sources.setdefault(source.structure_id, []).append([source.source, source.external_id])
        for structure in structures:
            yield _export_row(structure, labels.get(structure.id, []), sources.get(structure.id, []), definitions)
        last_id = ids[-1]
        session.expunge_all()


def _export_row(structure: Structure, values: list[TargetValue], sources: list[list[str]],
                definitions: dict[int, TargetDefinition]) -> ExportRow:
    crystal = Crystal.from_stored(structure.lattice, structure.species, structure.frac_coords)
    key_value_pairs = {
        f"{KEY_PREFIX}structure_id": structure.id,
        f"{KEY_PREFIX}spacegroup": structure.spacegroup_number,
    }
    data: dict = {f"{KEY_PREFIX}sources": sources}
    results = {}
    for value in values:
        target = definitions[value.target_id]
        payload = value.value if target.kind is TargetKind.SCALAR else value.value_array
        if target.name in CALCULATOR_TARGETS:
            results[target.name] = payload
        elif target.kind is TargetKind.SCALAR:
            key_value_pairs[key_for_target(target.name)] = payload
        else:
            data[target.name] = payload
    return ExportRow(crystal, key_value_pairs, data, results)
