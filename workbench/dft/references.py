"""Elemental reference structures for formation energies.

Each element's reference is a structure stored under the source
:data:`REFERENCE_SOURCE` with the element symbol as its external id, computed once per
preset like any other structure. By default it is ASE's reference state of the element
(``ase.data.reference_states``: the crystal at its experimental lattice constant, or the
dimer in a box for H, N, O, F); elements whose reference state ASE cannot build (Cl, Ga,
Mn, B, P, S, ...) need one imported by the user::

    workbench import Mn-alpha.cif --source elemental-reference   # file stem = "Mn"
"""

from ase import Atoms
from ase.build import bulk
from ase.data import atomic_numbers, reference_states
from sqlalchemy import Engine, select

from workbench.errors import WorkbenchError
from workbench.io.entries import Entry
from workbench.io.importer import import_entries
from workbench.io.readers import ReadOptions
from workbench.store.engine import session_scope
from workbench.store.schema import StructureSource
from workbench.structures.crystal import Crystal

REFERENCE_SOURCE = "elemental-reference"
# Vacuum around a dimer: its periodic images must not interact.
DIMER_VACUUM_A = 4.0


class ReferenceUnavailable(WorkbenchError, ValueError):
    """ASE has no buildable reference state for an element."""


def reference_atoms(element: str) -> Atoms:
    """ASE's reference state of ``element`` as a periodic cell."""
    state = reference_states[atomic_numbers[element]]
    if state is None:
        raise ReferenceUnavailable(f"ASE has no reference state for {element}")
    if state["symmetry"] == "diatom":
        dimer = Atoms([element, element], positions=[[0.0, 0.0, 0.0], [0.0, 0.0, state["d"]]])
        dimer.center(vacuum=DIMER_VACUUM_A)
        dimer.pbc = True
        return dimer
    try:
        return bulk(element)
    except (ValueError, KeyError, TypeError) as error:
        raise ReferenceUnavailable(
            f"ASE cannot build the {state['symmetry']} reference state of {element} ({error}); "
            f"import one with --source {REFERENCE_SOURCE} and external id {element!r}"
        ) from error


def reference_structure_ids(engine: Engine, elements: set[str]) -> tuple[dict[str, int], dict[str, str]]:
    """The stored reference structure of each element, adding ASE's where none is stored.

    Returns ``({element: structure id}, {element: why it has none})``.
    """
    with session_scope(engine) as session:
        stored = dict(session.execute(
            select(StructureSource.external_id, StructureSource.structure_id)
            .where(StructureSource.source == REFERENCE_SOURCE)
        ).all())
    missing = sorted(elements - set(stored))
    entries, unavailable = [], {}
    for element in missing:
        try:
            atoms = reference_atoms(element)
        except ReferenceUnavailable as error:
            unavailable[element] = str(error)
            continue
        entries.append(Entry(row=element, external_id=element, crystal=Crystal.from_ase(atoms)))
    if entries:
        import_entries(engine, entries, source=REFERENCE_SOURCE, file="ase.data.reference_states",
                       options=ReadOptions())
        with session_scope(engine) as session:
            stored = dict(session.execute(
                select(StructureSource.external_id, StructureSource.structure_id)
                .where(StructureSource.source == REFERENCE_SOURCE)
            ).all())
    return {element: stored[element] for element in elements if element in stored}, unavailable
