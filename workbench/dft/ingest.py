"""From a finished calculation to target values in the store.

A calculation's targets are named ``<preset>.<quantity>`` (``gpaw.band_gap``,
``emt.energy_per_atom``): results of different levels of theory are different targets.
Each ingest is one transaction that also marks the calculation done, so a crash leaves
either everything or nothing; ingesting a calculation that is done already adds nothing.

A relaxation's targets belong to the relaxed structure, which the same transaction stores
and links (:mod:`workbench.dft.relaxation`); its id is kept in the calculation's
``results["relaxation"]["structure_id"]``, and the calculation's per-site arrays are kept
in that structure's site order.
"""

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from workbench.dft.outputs import (
    DOS_GRID,
    DOS_GRID_UNITS,
    band_gaps,
    electrons_below,
    formation_energy_per_atom,
    raw_dos,
    standard_dos,
)
from workbench.dft.relaxation import in_stored_order, store_relaxed_structure
from workbench.errors import WorkbenchError
from workbench.store.bulk import insert_ignoring_duplicates, one_writer_at_a_time
from workbench.store.engine import session_scope
from workbench.store.schema import (
    Calculation,
    CalculationAttempt,
    CalculationStatus,
    Structure,
    StructureSource,
    TargetDefinition,
    TargetKind,
    TargetValue,
)
from workbench.store.types import arrays_to_bytes


@dataclass(frozen=True)
class Quantity:
    kind: TargetKind
    units: str
    description: str
    site_shape: tuple[int, ...] = ()
    grid: np.ndarray | None = None  # the axis of a spectrum
    grid_units: str = ""


# The stress tensor as a 6-point "spectrum" over its Voigt components.
VOIGT_COMPONENTS = "xx, yy, zz, yz, xz, xy"


QUANTITIES = {
    "energy": Quantity(TargetKind.SCALAR, "eV", "total energy of the cell"),
    "energy_per_atom": Quantity(TargetKind.SCALAR, "eV/atom", "total energy per atom"),
    "formation_energy_per_atom": Quantity(
        TargetKind.SCALAR, "eV/atom", "formation energy against elemental references of the same preset"),
    "magmom_total": Quantity(TargetKind.SCALAR, "muB", "total magnetic moment of the cell"),
    "fermi_level": Quantity(TargetKind.SCALAR, "eV", "Fermi level"),
    "band_gap": Quantity(TargetKind.SCALAR, "eV", "fundamental gap from the eigenvalues"),
    "direct_band_gap": Quantity(TargetKind.SCALAR, "eV", "smallest direct gap from the eigenvalues"),
    "forces": Quantity(TargetKind.PER_SITE, "eV/Å", "force on each atom", (3,)),
    "magmoms": Quantity(TargetKind.PER_SITE, "muB", "magnetic moment of each atom"),
    "charges": Quantity(TargetKind.PER_SITE, "e", "Bader partial charge of each atom"),
    "dos": Quantity(TargetKind.SPECTRUM, "states/eV/electron",
                    "electronic DOS, -5..10 eV from the Fermi level, 300 bins, per valence electron",
                    grid=DOS_GRID, grid_units=DOS_GRID_UNITS),
    "stress": Quantity(TargetKind.SPECTRUM, "eV/Å³", f"stress tensor, Voigt order {VOIGT_COMPONENTS}, "
                       "positive tensile (ASE)", grid=np.arange(6.0), grid_units=f"Voigt index ({VOIGT_COMPONENTS})"),
}


class IngestConflict(WorkbenchError, ValueError):
    """A target value the calculation would write exists already from another origin."""


def target_name(preset: str, quantity: str) -> str:
    return f"{preset}.{quantity}"


def derive(results: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    """Add the derived quantities (per-atom energy, gaps, DOS) to a job's raw output."""
    results = dict(results)
    arrays = dict(arrays)
    results["energy_per_atom"] = results["energy"] / results["natoms"]
    if "eigenvalues" in arrays and "fermi_level" in results:
        eigenvalues, weights = arrays["eigenvalues"], arrays["kpoint_weights"]
        fermi = results["fermi_level"]
        results["band_gap"], results["direct_band_gap"] = band_gaps(eigenvalues, fermi)
        arrays["dos_raw_energies"], arrays["dos_raw"] = raw_dos(eigenvalues, weights, fermi)
        if not results.get("valence_electrons"):
            results["valence_electrons"] = electrons_below(eigenvalues, weights, fermi)
        arrays["dos"] = standard_dos(eigenvalues, weights, fermi, results["valence_electrons"])
    return results, arrays


def _definition(session: Session, name: str, quantity: Quantity) -> TargetDefinition:
    spectrum = quantity.kind is TargetKind.SPECTRUM
    # Concurrent ingests define the same targets: insert-or-ignore, then read it back.
    insert_ignoring_duplicates(session, TargetDefinition.__table__, [{
        "name": name, "kind": quantity.kind, "units": quantity.units, "description": quantity.description,
        "length": len(quantity.grid) if spectrum else None,
        "site_shape": list(quantity.site_shape) if quantity.kind is TargetKind.PER_SITE else None,
        "grid": quantity.grid,
        "grid_units": quantity.grid_units,
    }])
    definition = session.scalars(select(TargetDefinition).where(TargetDefinition.name == name)).one()
    if definition.kind is not quantity.kind:
        raise IngestConflict(f"target {name!r} exists as {definition.kind.value}, not {quantity.kind.value}")
    return definition


def target_structure_id(calculation: Calculation) -> int:
    """The structure a calculation's targets belong to: the relaxed one for a relaxation."""
    return (calculation.results or {}).get("relaxation", {}).get("structure_id", calculation.structure_id)


# :func:`target_structure_id` as an SQL expression over ``calculations``.
TARGET_STRUCTURE_ID = func.coalesce(Calculation.results[("relaxation", "structure_id")].as_integer(),
                                    Calculation.structure_id)


def write_targets(session: Session, calculation: Calculation, values: dict) -> int:
    """Store ``{quantity: value}`` as target values of the calculation (on
    :func:`target_structure_id`); returns how many are new."""
    new = 0
    structure_id = target_structure_id(calculation)
    # Relaxations from different starts may end in the same structure: the first keeps its values.
    relaxed = "relaxation" in (calculation.results or {})
    for quantity, value in values.items():
        name = target_name(calculation.preset, quantity)
        definition = _definition(session, name, QUANTITIES[quantity])
        existing = session.scalars(select(TargetValue).where(
            TargetValue.structure_id == structure_id, TargetValue.target_id == definition.id,
        )).one_or_none()
        if existing is not None:
            if existing.calculation_id != calculation.id and not relaxed:
                raise IngestConflict(
                    f"structure {structure_id} has a value of {name!r} from "
                    f"{existing.source_file or 'another calculation'}; calculation {calculation.id} "
                    "would contradict it"
                )
            continue
        scalar = definition.kind is TargetKind.SCALAR
        session.add(TargetValue(
            structure_id=structure_id, target_id=definition.id,
            value=float(value) if scalar else None,
            value_array=None if scalar else np.asarray(value, dtype=float),
            calculation_id=calculation.id, source_file=calculation.workdir,
        ))
        new += 1
    return new


def target_values(results: dict, arrays: dict[str, np.ndarray]) -> dict:
    """``{quantity: value}`` of every quantity of :data:`QUANTITIES` the output holds."""
    return {
        name: (results if quantity.kind is TargetKind.SCALAR else arrays)[name]
        for name, quantity in QUANTITIES.items()
        if name in (results if quantity.kind is TargetKind.SCALAR else arrays)
    }


def ingest_outputs(engine: Engine, calculation_id: int, results: dict, arrays: dict[str, np.ndarray],
                   *, wall_time_s: float, attempt: dict | None = None) -> bool:
    """Mark the calculation done with its outputs and targets, in one transaction, which
    also closes the attempt that computed them (``attempt``: its ``number`` and the
    values to record on it), so that a worker killed here leaves neither half.

    Returns ``False`` (and writes nothing) when the calculation is done already.
    """
    results, arrays = derive(results, arrays)
    with session_scope(engine) as session:
        calculation = session.get(Calculation, calculation_id, with_for_update=True)
        if calculation.status is CalculationStatus.DONE:
            return False
        if "relaxation" in results:
            relaxed_id, mapping = store_relaxed_structure(session, calculation, results["relaxation"], arrays)
            results["relaxation"] = results["relaxation"] | {"structure_id": relaxed_id}
            per_site = {name for name, quantity in QUANTITIES.items() if quantity.kind is TargetKind.PER_SITE}
            arrays = in_stored_order(arrays, per_site, mapping)
        calculation.results = results
        write_targets(session, calculation, target_values(results, arrays))
        calculation.arrays = arrays_to_bytes(arrays)
        calculation.status = CalculationStatus.DONE
        calculation.reason = None
        calculation.finished_at = datetime.now(UTC)
        calculation.wall_time_s = wall_time_s
        if attempt is not None:
            fields = {key: value for key, value in attempt.items() if key != "number"}
            session.execute(update(CalculationAttempt).where(
                CalculationAttempt.calculation_id == calculation_id, CalculationAttempt.number == attempt["number"]
            ).values(status=CalculationStatus.DONE, finished_at=calculation.finished_at, **fields))
    return True


def reference_energies(session: Session, preset: str) -> dict[str, float]:
    """Energy per atom of each element's done reference calculation with ``preset``."""
    from workbench.dft.references import REFERENCE_SOURCE

    rows = session.execute(
        select(StructureSource.external_id, Calculation.results)
        .join(Calculation, Calculation.structure_id == StructureSource.structure_id)
        .where(StructureSource.source == REFERENCE_SOURCE, Calculation.preset == preset,
               Calculation.status == CalculationStatus.DONE)
    ).all()
    return {element: results["energy_per_atom"] for element, results in rows}


def add_formation_energies(engine: Engine, preset: str) -> int:
    """Formation energies of done calculations that lack one and whose references are done."""
    name = target_name(preset, "formation_energy_per_atom")
    added = 0
    with session_scope(engine) as session:
        # Workers that finish together would both find a formation energy missing.
        one_writer_at_a_time(session, f"formation-energies {preset}")
        references = reference_energies(session, preset)
        have = select(TargetValue.structure_id).join(TargetDefinition).where(TargetDefinition.name == name)
        rows = session.execute(
            select(Calculation, Structure.species)
            .join(Structure, Structure.id == Calculation.structure_id)
            .where(Calculation.preset == preset, Calculation.status == CalculationStatus.DONE,
                   TARGET_STRUCTURE_ID.not_in(have))
        ).all()
        for calculation, species in rows:
            counts = Counter(species)
            if not set(counts) <= set(references):
                continue
            energy = formation_energy_per_atom(calculation.results["energy"], counts, references)
            calculation.results = {**calculation.results, "formation_energy_per_atom": energy}
            added += write_targets(session, calculation, {"formation_energy_per_atom": energy})
    return added
