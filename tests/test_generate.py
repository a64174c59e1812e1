"""Candidate generation: decorations of prototypes into the store, deduplicated, with
their lineage; the charge-balance filter; pymatgen's substitution predictor."""

from collections import Counter

import pytest
from ase.build import bulk
from ase.io import write
from pymatgen.core import Composition
from sqlalchemy import func, select

from workbench.errors import InputError, NotFound
from workbench.generate.prototypes import (
    AFLOW_SOURCE,
    aflow_library,
    resolve_prototype,
    source_structures,
)
from workbench.generate.store import decorate, store_decorations
from workbench.generate.substitute import (
    ChargeBalance,
    Substitution,
    explicit_substitutions,
    parse_sites,
    predicted_substitutions,
)
from workbench.io.entries import Entry
from workbench.io.importer import import_entries
from workbench.io.readers import ReadOptions
from workbench.store.engine import session_scope
from workbench.store.schema import LineageKind, Structure, StructureLineage, StructureSource

PEROVSKITE = "aflow:AB3C_cP5_221_a_c_b"  # cubic CaTiO3


def count(engine, model) -> int:
    with session_scope(engine) as session:
        return session.scalar(select(func.count()).select_from(model))


def lineage(engine) -> dict[int, tuple[int, dict]]:
    with session_scope(engine) as session:
        rows = session.execute(select(StructureLineage.structure_id, StructureLineage.parent_id,
                                      StructureLineage.kind, StructureLineage.detail)).all()
    assert {row.kind for row in rows} <= {LineageKind.SUBSTITUTION}
    return {row.structure_id: (row.parent_id, row.detail) for row in rows}


def test_aflow_library_labels_are_unique():
    library = aflow_library()
    assert len(library) == 288 == len({entry.label for entry in library})
    perovskite = next(entry for entry in library if entry.label == PEROVSKITE.removeprefix("aflow:"))
    assert Counter(perovskite.crystal.species) == {"Ca": 1, "Ti": 1, "O": 3}


def test_explicit_decorations_are_stored_with_lineage_once(engine):
    prototype = resolve_prototype(engine, PEROVSKITE)
    sites = parse_sites(["Ca=Ba,Sr,Ca", "Ti=Ti,Zr"], prototype.elements)
    report = store_decorations(engine, prototype, explicit_substitutions(sites))
    # Ca=Ca,Ti=Ti is the prototype itself: matched, not added, and not its own parent.
    assert (report.decorations, report.new_structures, report.matched) == (6, 5, 1)
    assert count(engine, Structure) == 6
    links = lineage(engine)
    assert len(links) == 5 and {parent for parent, _ in links.values()} == {prototype.structure_id}
    with session_scope(engine) as session:
        formulas = dict(session.execute(select(Structure.id, Structure.reduced_formula)).all())
        sources = session.execute(select(StructureSource.source, StructureSource.external_id)).all()
    assert sorted(formulas[structure_id] for structure_id in links) == [
        "BaTiO3", "BaZrO3", "CaZrO3", "SrTiO3", "SrZrO3"]
    barium_zirconate = next(sid for sid, formula in formulas.items() if formula == "BaZrO3")
    assert links[barium_zirconate][1] == {"prototype": PEROVSKITE, "mapping": {"Ca": "Ba", "Ti": "Zr"}}
    assert (AFLOW_SOURCE, "AB3C_cP5_221_a_c_b") in sources
    assert ("generated", f"{prototype.structure_id}:Ca=Ba,Ti=Zr") in sources

    again = store_decorations(engine, prototype, explicit_substitutions(sites))
    assert (again.new_structures, again.matched, again.known) == (0, 0, 6)
    assert count(engine, Structure) == 6 and len(lineage(engine)) == 5
    assert resolve_prototype(engine, PEROVSKITE).structure_id == prototype.structure_id


def test_a_decoration_equal_to_a_known_crystal_is_linked(engine):
    library = {entry.label: entry for entry in aflow_library()}
    strontium_titanate = Substitution({"Ca": "Sr"}).apply(library["AB3C_cP5_221_a_c_b"].crystal)
    import_entries(engine, [Entry(row="1", external_id="SrTiO3", crystal=strontium_titanate)],
                   source="known", file="test", options=ReadOptions())
    with session_scope(engine) as session:
        known = session.scalar(select(Structure.id))
    prototype = resolve_prototype(engine, PEROVSKITE)
    report = store_decorations(engine, prototype, explicit_substitutions({"Ca": ["Sr", "Ba"]}),
                               source="candidates")
    assert (report.new_structures, report.matched) == (1, 1)
    assert lineage(engine)[known][0] == prototype.structure_id
    with session_scope(engine) as session:
        sources = set(session.execute(select(StructureSource.source, StructureSource.external_id)
                                      .where(StructureSource.structure_id == known)).all())
    assert sources == {("known", "SrTiO3"), ("candidates", f"{prototype.structure_id}:Ca=Sr")}


def test_charge_balance_filter_agrees_with_pymatgen(engine):
    prototype = resolve_prototype(engine, PEROVSKITE)
    sites = {"Ca": ["Ba", "Na", "La", "K"], "Ti": ["Ti", "Al", "Nb", "Cu"], "O": ["O", "F", "Cl"]}
    balance = ChargeBalance()
    expected = [substitution for substitution in explicit_substitutions(sites)
                if Composition(Counter(substitution.apply(prototype.crystal).species)).oxi_state_guesses()]
    assert [balance.crystal(s.apply(prototype.crystal)) for s in explicit_substitutions(sites)].count(True) \
        == len(expected)
    report = store_decorations(engine, prototype, explicit_substitutions(sites), charge_balance=balance)
    assert report.charge_filtered == 48 - len(expected) and report.new_structures == len(expected) > 0
    with session_scope(engine) as session:
        formulas = set(session.scalars(select(Structure.reduced_formula).where(Structure.id != prototype.structure_id)))
    assert formulas == {Composition(Counter(s.apply(prototype.crystal).species)).reduced_formula for s in expected}
    assert {"BaTiO3", "LaAlO3", "KNbO3", "KCuF3"} <= formulas and "NaTiO3" not in formulas


def test_predicted_substitutions_of_rock_salt(engine):
    from pymatgen.core.structure_prediction.substitution_probability import SubstitutionPredictor

    import_entries(engine, [Entry(row="1", external_id="NaCl",
                                  crystal=_crystal(bulk("NaCl", "rocksalt", a=5.64)))],
                   source="salts", file="test", options=ReadOptions())
    (parent,) = source_structures(engine, "salts")
    prototype = resolve_prototype(engine, str(parent))
    substitutions = predicted_substitutions(prototype.crystal, SubstitutionPredictor(threshold=0.01))
    assert substitutions and all(s.mapping.keys() == {"Na", "Cl"} for s in substitutions)
    probabilities = [s.probability for s in substitutions]
    assert probabilities == sorted(probabilities, reverse=True) and min(probabilities) > 0.01 / 10
    assert {"Na": "K", "Cl": "Cl"} in [s.mapping for s in substitutions]
    report = store_decorations(engine, prototype, substitutions, charge_balance=ChargeBalance())
    assert report.new_structures == report.decorations - report.charge_filtered > 0
    details = [detail for _, detail in lineage(engine).values()]
    assert all(detail["probability"] >= 0.001 for detail in details)
    with session_scope(engine) as session:
        formulas = set(session.scalars(select(Structure.reduced_formula)))
    assert "KCl" in formulas
    assert all(Composition(formula).oxi_state_guesses() for formula in formulas)


def _crystal(atoms):
    from workbench.structures.crystal import Crystal

    return Crystal.from_ase(atoms)


def test_prototype_from_a_file(engine, tmp_path):
    path = tmp_path / "Cu3Au.vasp"
    atoms = bulk("Cu", "fcc", a=3.75, cubic=True)
    atoms[0].symbol = "Au"
    write(path, atoms, format="vasp")
    prototype = resolve_prototype(engine, str(path))
    report = store_decorations(engine, prototype, explicit_substitutions({"Au": ["Pt", "Pd"], "Cu": ["Ni"]}))
    assert report.new_structures == 2
    with session_scope(engine) as session:
        assert session.scalar(select(StructureSource.source).where(
            StructureSource.structure_id == prototype.structure_id)) == "prototype"


@pytest.mark.parametrize(("option", "message"), [
    ("Xx=Ba", "site 'Xx' is not an element of the prototype (its elements: Ca, O, Ti)"),
    ("Ca=Ba,Qq", "unknown element 'Qq'"),
    ("Ca", "expects SITE=ELEMENT"),
])
def test_bad_sites_are_refused(option, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_sites([option], ["Ca", "O", "Ti"])


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_campaigns_decorations_are_checked_like_the_command_lines(engine):
    # What a campaign's generate section runs: an unknown element is refused by name
    # before anything is written, as `--site` refuses it.
    with pytest.raises(InputError, match="field 'sites': unknown element 'Qq'"):
        decorate(engine, PEROVSKITE, {"Ca": ["Ba", "Qq"]})
    with pytest.raises(InputError, match=f"site 'Sr' is not an element of the prototype {PEROVSKITE}"):
        decorate(engine, PEROVSKITE, {"Sr": ["Ba"]})
    assert count(engine, StructureLineage) == 0


def test_bad_prototypes_are_refused(engine, tmp_path):
    with pytest.raises(InputError, match="no prototype 'nonesuch' in the AFLOW library"):
        resolve_prototype(engine, "aflow:nonesuch")
    with pytest.raises(InputError, match=r"holds it more than once: A_tI2_139_a#1, A_tI2_139_a#2"):
        resolve_prototype(engine, "aflow:A_tI2_139_a")
    with pytest.raises(NotFound, match="no structure with id 999"):
        resolve_prototype(engine, "999")
    with pytest.raises(InputError, match="neither a structure id"):
        resolve_prototype(engine, str(tmp_path / "missing.cif"))


def test_generate_commands(engine, run_cli):
    output = run_cli("generate", "substitute", "--prototype", PEROVSKITE,
                     "--site", "Ca=Ba,Sr", "--site", "Ti=Zr,Hf", "--label", "perovskites").output
    assert "4 decorations: 4 new structures, 0 equal to stored ones" in output
    assert count(engine, Structure) == 5
    refused = run_cli("generate", "substitute", "--prototype", PEROVSKITE, "--site", "Sr=Ba", expect=1).output
    assert "site 'Sr' is not an element of the prototype" in refused
    assert "Cubic" in run_cli("generate", "prototypes", "perovskite").output
