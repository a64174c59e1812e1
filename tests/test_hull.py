"""Energies above the convex hull: the pure hull on Materials Project entries pymatgen
ships, and the store's hull of EMT energies of real alloy cells, per level."""

import gzip
import json
from importlib.resources import files

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from pymatgen.analysis.phase_diagram import PatchedPhaseDiagram, PDEntry, PhaseDiagram
from pymatgen.core import Composition
from pymatgen.entries.computed_entries import ComputedEntry
from sqlalchemy import select

from tests.dft_helpers import cu3au, l12, targets_of
from workbench.dft.presets import BUILTIN_PRESETS
from workbench.dft.runner import RunOptions, queue_calculations, run_queued
from workbench.io.entries import Entry, Label
from workbench.io.importer import import_entries
from workbench.io.readers import ReadOptions
from workbench.stability.hull import HullEntry, convex_hull
from workbench.stability.predicted import derive_predictions, learned_target
from workbench.stability.store import (
    HullConflict,
    NoElementalReferences,
    level_gaps,
    levels_with_hull,
    queue_gaps,
    refresh_hulls,
    update_hull,
)
from workbench.store.engine import session_scope
from workbench.store.schema import Calculation, StructureSource, TargetKind
from workbench.structures.crystal import Crystal


@pytest.fixture(scope="module")
def mp_entries() -> list[ComputedEntry]:
    """The 423 GGA(+U) entries of pymatgen's compatibility test data (89 elements)."""
    path = files("pymatgen.analysis") / "compatibility" / "calc_compounds.json.gz"
    with gzip.open(str(path)) as stream:
        return [ComputedEntry.from_dict(record) for record in json.load(stream).values()]


# The patched diagram finds a few elements' decompositions by optimisation, and says so.
@pytest.mark.filterwarnings("ignore:No suitable PhaseDiagrams found")
def test_hull_of_mp_entries_reproduces_pymatgen(mp_entries):
    hull = convex_hull([HullEntry(entry.entry_id, entry.composition.as_dict(), entry.energy_per_atom)
                        for entry in mp_entries])
    assert not hull.missing_elements
    assert len(hull.points) == len(mp_entries)
    # pymatgen's own energies above hull over all 89 elements at once.
    patched = PatchedPhaseDiagram(mp_entries)
    for entry in mp_entries:
        point = hull.points[entry.entry_id]
        assert point.e_above_hull == pytest.approx(patched.get_e_above_hull(entry), abs=1e-6), entry.entry_id
        assert sum(point.decomposition.values()) == pytest.approx(1.0)
        if point.e_above_hull == 0:
            assert point.decomposition == {entry.entry_id: pytest.approx(1.0)}
        else:
            assert entry.entry_id not in point.decomposition
    assert 0 < sum(point.e_above_hull > 0 for point in hull.points.values()) < len(mp_entries)


def test_a_system_without_an_element_has_no_hull():
    hull = convex_hull([HullEntry(1, {"Cu": 1}, -1.0), HullEntry(2, {"Cu": 1, "Au": 1}, -2.0)])
    assert hull.points.keys() == {1}
    assert hull.missing_elements == {"Au-Cu": ["Au"]}


def emt_energy_per_atom(atoms) -> float:
    atoms = atoms.copy()
    atoms.calc = EMT()
    return atoms.get_potential_energy() / len(atoms)


def cuau_l10():
    atoms = bulk("Cu", "fcc", a=3.85, cubic=True)
    atoms.symbols[[0, 1]] = "Au"
    return atoms


def au3cu():
    atoms = bulk("Au", "fcc", a=3.95, cubic=True)
    atoms[0].symbol = "Cu"
    return atoms


CELLS = {"Cu": lambda: bulk("Cu", "fcc", a=3.61), "Au": lambda: bulk("Au", "fcc", a=4.08),
         "CuAu": cuau_l10, "Cu3Au": cu3au, "Au3Cu": au3cu}


def store_energies(engine, names, *, level="emt", energies=None) -> dict[str, int]:
    """Store the cells with their EMT energy per atom as ``<level>.energy_per_atom``."""
    entries = []
    for name in names:
        atoms = CELLS[name]()
        energy = (energies or {}).get(name, emt_energy_per_atom(atoms))
        labels = {f"{level}.energy_per_atom": Label(TargetKind.SCALAR, energy, "eV/atom")} if energy is not None else {}
        entries.append(Entry(row=name, external_id=name, crystal=Crystal.from_ase(atoms), labels=labels))
    import_entries(engine, entries, source="alloys", file="test", options=ReadOptions())
    with session_scope(engine) as session:
        return dict(session.execute(select(StructureSource.external_id, StructureSource.structure_id)
                                    .where(StructureSource.source == "alloys")).all())


def pymatgen_e_above_hull(names) -> dict[str, float]:
    entries = {}
    for name in names:
        atoms = CELLS[name]()
        composition = Composition(atoms.get_chemical_formula())
        entries[name] = PDEntry(composition, emt_energy_per_atom(atoms) * composition.num_atoms)
    diagram = PhaseDiagram(list(entries.values()))
    return {name: diagram.get_e_above_hull(entry) for name, entry in entries.items()}


def e_above_hull(engine, ids: dict[str, int], level="emt") -> dict[str, float]:
    values = {}
    for name, structure_id in ids.items():
        value = targets_of(engine, structure_id).get(f"{level}.e_above_hull")
        if value is not None:
            values[name] = value.value
    return values


def test_store_hull_of_emt_alloys(engine):
    ids = store_energies(engine, ["Cu", "Au", "CuAu", "Cu3Au"])
    report = update_hull(engine, "emt")
    assert (report.basis, report.entries, report.values, report.new) == ("emt.energy_per_atom", 4, 4, 4)
    expected = pymatgen_e_above_hull(["Cu", "Au", "CuAu", "Cu3Au"])
    assert e_above_hull(engine, ids) == pytest.approx(expected, abs=1e-9)
    detail = targets_of(engine, ids["Cu3Au"])["emt.e_above_hull"].detail
    assert detail["chemical_system"] == "Au-Cu" and detail["basis"] == "emt.energy_per_atom"
    assert sum(part["fraction"] for part in detail["decomposition"]) == pytest.approx(1.0)
    assert {part["structure_id"] for part in detail["decomposition"]} <= set(ids.values())

    again = update_hull(engine, "emt")
    assert (again.new, again.updated, again.unchanged) == (0, 0, 4)

    # A new energy at the level moves the hull: the values are recomputed, not duplicated.
    ids |= store_energies(engine, ["Au3Cu"])
    moved = update_hull(engine, "emt")
    assert (moved.values, moved.new) == (5, 1)
    assert e_above_hull(engine, ids) == pytest.approx(pymatgen_e_above_hull(list(CELLS)), abs=1e-9)


def test_levels_are_never_mixed(engine):
    ids = store_energies(engine, ["Cu", "Au", "CuAu"])
    # Another level knows only CuAu, far below EMT's energies: it has no references.
    store_energies(engine, ["CuAu"], level="other", energies={"CuAu": -50.0})
    update_hull(engine, "emt")
    assert e_above_hull(engine, ids) == pytest.approx(pymatgen_e_above_hull(["Cu", "Au", "CuAu"]), abs=1e-9)
    with pytest.raises(NoElementalReferences, match="level 'other' has no elemental references.*Au, Cu"):
        update_hull(engine, "other")
    assert e_above_hull(engine, ids, "other") == {}


def test_formation_energy_basis(engine):
    """A level with formation energies only (imported) puts its elements at zero."""
    entries = [Entry(row=name, external_id=name, crystal=Crystal.from_ase(CELLS[name]()),
                     labels={"mp.formation_energy_per_atom": Label(TargetKind.SCALAR, energy, "eV/atom")})
               for name, energy in (("CuAu", -0.1), ("Cu3Au", -0.04))]
    import_entries(engine, entries, source="mp", file="test", options=ReadOptions())
    report = update_hull(engine, "mp")
    assert report.basis == "mp.formation_energy_per_atom" and report.values == 2
    with session_scope(engine) as session:
        ids = dict(session.execute(select(StructureSource.external_id, StructureSource.structure_id)
                                   .where(StructureSource.source == "mp")).all())
    values = e_above_hull(engine, ids, "mp")
    # Cu3Au against 3/4 of the way from Cu (0) to CuAu (-0.1): -0.05; it lies 0.01 above.
    assert values == pytest.approx({"CuAu": 0.0, "Cu3Au": 0.01})


def test_gaps_are_listed_and_queued(engine):
    ids = store_energies(engine, ["Cu", "CuAu"])
    without = store_energies(engine, ["Cu3Au"], energies={"Cu3Au": None})
    gaps = level_gaps(engine, "emt")
    assert [(gap.chemical_system, gap.missing_elements, gap.missing_phases) for gap in gaps] == [
        ("Au-Cu", ["Au"], [without["Cu3Au"]])]
    assert level_gaps(engine, "emt", phases_where="nsites < 4")[0].missing_phases == []

    report = update_hull(engine, "emt")  # Cu alone has a hull; Au-Cu waits for Au
    assert report.systems_without_hull == {"Au-Cu": ["Au"]}
    assert e_above_hull(engine, ids) == {"Cu": 0.0}

    queued = queue_gaps(engine, "emt", gaps)
    assert len(queued.calculation_ids) == 2 and not queued.references_unavailable
    with session_scope(engine) as session:
        calculations = session.execute(select(Calculation.structure_id, Calculation.preset)).all()
        reference = session.scalars(select(StructureSource.structure_id).where(
            StructureSource.source == "elemental-reference", StructureSource.external_id == "Au")).one()
    assert sorted(calculations) == sorted([(reference, "emt"), (without["Cu3Au"], "emt")])


def test_a_value_from_elsewhere_is_not_overwritten(engine):
    store_energies(engine, ["Cu", "Au"])
    entry = Entry(row="CuAu", external_id="CuAu", crystal=Crystal.from_ase(cuau_l10()), labels={
        "emt.energy_per_atom": Label(TargetKind.SCALAR, emt_energy_per_atom(cuau_l10())),
        "emt.e_above_hull": Label(TargetKind.SCALAR, 0.5)})
    import_entries(engine, [entry], source="alloys", file="mine.csv", options=ReadOptions())
    with pytest.raises(HullConflict, match="from mine.csv"):
        update_hull(engine, "emt")
    # A refresh after new energies refuses the same way (a campaign judged on it stops).
    with pytest.raises(HullConflict, match="from mine.csv"), session_scope(engine) as session:
        refresh_hulls(session, ["emt"])


def test_a_dft_run_whose_hull_cannot_be_rewritten_keeps_its_results(engine, tmp_path):
    """An imported ``emt.e_above_hull`` makes the level one with a hull, which the run's
    new energies cannot rewrite: the run reports why, after its work is stored."""
    entry = Entry(row="CuAu", external_id="CuAu", crystal=Crystal.from_ase(cuau_l10()),
                  labels={"emt.e_above_hull": Label(TargetKind.SCALAR, 0.5)})
    import_entries(engine, [entry], source="alloys", file="mine.csv", options=ReadOptions())
    ids = store_energies(engine, ["Cu", "Au"], energies={"Cu": None, "Au": None})
    emt = BUILTIN_PRESETS["emt"]
    queue_calculations(engine, list(ids.values()), emt)
    report = run_queued(engine, emt, RunOptions(workdir=tmp_path / "dft"))
    assert len(report.done) == 3 and report.formation_energies == 3
    assert "from mine.csv" in report.hull
    assert targets_of(engine, ids["CuAu"])["emt.e_above_hull"].value == 0.5


def test_hull_command(engine, run_cli):
    store_energies(engine, ["Cu", "CuAu"])
    store_energies(engine, ["Cu3Au"], energies={"Cu3Au": None})
    output = run_cli("hull", "--level", "emt", "--queue").output
    assert "Au-Cu" in output and "Queued 2 calculations with preset emt" in output
    assert "emt.e_above_hull from 2 emt.energy_per_atom energies: 1 structures (1 new" in output
    assert "no energies at level 'nonesuch'" in run_cli("hull", "--level", "nonesuch", expect=1).output


def test_refresh_is_idempotent_and_says_why_a_level_has_no_hull(engine):
    """What a campaign's ingest calls in its own transaction when new energies arrive."""
    store_energies(engine, ["Cu", "Au", "CuAu"])
    with session_scope(engine) as session:
        assert levels_with_hull(session, ["emt", "nothing"]) == []
        first = refresh_hulls(session, ["emt", "nothing"])
    assert first["emt"].new == 3 and "no energies at level 'nothing'" in first["nothing"]
    ids = store_energies(engine, ["Cu3Au"])
    with session_scope(engine) as session:
        assert levels_with_hull(session, ["emt", "nothing"]) == ["emt"]
        again = refresh_hulls(session, ["emt"])
    assert (again["emt"].new, again["emt"].updated + again["emt"].unchanged) == (1, 3)
    with session_scope(engine) as session:
        assert refresh_hulls(session, ["emt"])["emt"].unchanged == 4
    assert e_above_hull(engine, ids) == pytest.approx(pymatgen_e_above_hull(["Cu", "Au", "CuAu", "Cu3Au"]), abs=1e-9)


def test_predicted_e_above_hull_is_formation_energy_over_the_hull(engine):
    """Each structure's formation energy, given as if a model predicted it, minus the
    hull's at its composition is the energy above the hull the store computes from the
    total energies; a system without phases at the level has its elements at zero."""
    energies = {name: emt_energy_per_atom(CELLS[name]()) for name in CELLS}
    formation = {}
    for name, cell in CELLS.items():
        composition = Composition(cell().get_chemical_formula())
        formation[name] = energies[name] - sum(composition.get_atomic_fraction(element) * energies[element.symbol]
                                               for element in composition)
    entries = [Entry(row=name, external_id=name, crystal=Crystal.from_ase(CELLS[name]()), labels={
        "emt.energy_per_atom": Label(TargetKind.SCALAR, energies[name], "eV/atom"),
        "emt.formation_energy_per_atom": Label(TargetKind.SCALAR, formation[name], "eV/atom")})
        for name in CELLS]
    entries.append(Entry(row="Ni3Al", external_id="Ni3Al", crystal=Crystal.from_ase(l12("Ni", "Al"))))
    import_entries(engine, entries, source="alloys", file="test", options=ReadOptions())
    with session_scope(engine) as session:
        ids = dict(session.execute(select(StructureSource.external_id, StructureSource.structure_id)
                                   .where(StructureSource.source == "alloys")).all())
    update_hull(engine, "emt")
    names = list(CELLS)
    order = [ids[name] for name in [*names, "Ni3Al"]]
    mean = np.array([formation[name] for name in names] + [-0.05])
    std = np.linspace(0.01, 0.06, len(order))
    assert learned_target("emt.e_above_hull") == "emt.formation_energy_per_atom"
    assert learned_target("emt.band_gap") == "emt.band_gap"
    derived = derive_predictions(engine, ["emt.e_above_hull"], {"emt.formation_energy_per_atom": (mean, std)}, order)
    above, spread = derived["emt.e_above_hull"]
    stored = e_above_hull(engine, ids)
    assert above[:-1] == pytest.approx([stored[name] for name in names], abs=1e-9)
    assert above[-1] == pytest.approx(-0.05)  # below the Ni-Al line of the bare elements
    assert spread == pytest.approx(std)  # the hull is taken as known
    # Predicted 0.1 eV/atom higher, a candidate lies that much further above the hull.
    higher = derive_predictions(engine, ["emt.e_above_hull"], {"emt.formation_energy_per_atom": (mean + 0.1, std)},
                                order)["emt.e_above_hull"][0]
    assert higher == pytest.approx(above + 0.1)  # against the stored hull, not the predictions


def test_dft_run_keeps_an_existing_hull_current(engine, run_cli):
    """New formation energies from `workbench dft run` rewrite a hull the store has, with no
    second `workbench hull`; a level without a hull gets none."""
    store_energies(engine, ["Cu", "Au", "CuAu"], energies={"Cu": None, "Au": None, "CuAu": None})
    output = run_cli("dft", "run", "--preset", "emt", "--all").output
    assert "formation energies added" in output and "hull" not in output
    run_cli("hull", "--level", "emt")
    ids = store_energies(engine, ["Cu3Au"], energies={"Cu3Au": None})
    output = run_cli("dft", "run", "--preset", "emt", "--all").output
    assert "Energies above the emt hull rewritten: 1 new" in output
    assert "emt.e_above_hull" in targets_of(engine, ids["Cu3Au"])
