"""Structure checks and identity: what is refused, and what counts as the same crystal."""

import numpy as np
import pytest
from ase.build import bulk

from workbench.structures.crystal import Crystal
from workbench.structures.identity import fingerprints_agree, identify, site_mapping
from workbench.structures.validate import check_crystal


def perovskite(a_site: str, b_site: str, a: float = 4.0) -> Crystal:
    """Cubic ABO3: A at the corner, B at the body centre, O on the face centres."""
    coords = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    return Crystal(np.eye(3) * a, (a_site, b_site, "O", "O", "O"), coords)


def described(crystal: Crystal):
    return identify(crystal, check_crystal(crystal))


@pytest.mark.parametrize(("crystal", "message"), [
    (Crystal(np.eye(3) * 4, ("Na", "Cl", "Na"), np.array([[0, 0, 0], [0.5, 0.5, 0.5], [1.0, 0, 0]])),
     r"atoms 0 \(Na\) and 2 \(Na\) are 0.000 Å apart"),
    (Crystal(np.eye(3) * 4, ("Na", "Cl"), np.array([[0, 0, 0], [0.05, 0, 0]])), "0.200 Å apart"),
    (Crystal(np.diag([0.3, 4, 4]), ("Na",), np.zeros((1, 3))), "0.300 Å apart"),  # its own image
    (Crystal(np.eye(3) * 4, ("Xx",), np.zeros((1, 3))), "unknown element 'Xx'"),
    (Crystal(np.array([[1, 0, 0], [2, 0, 0], [0, 0, 1.0]]), ("Na",), np.zeros((1, 3))), "zero cell volume"),
    (Crystal(np.eye(3) * 4, ("Na",), np.full((1, 3), np.nan)), "not finite"),
])
def test_bad_structures_are_refused(crystal, message):
    with pytest.raises(ValueError, match=message):
        check_crystal(crystal)


def test_descriptors_of_a_perovskite():
    identity = described(perovskite("Sr", "Ti", a=3.905))
    assert (identity.reduced_formula, identity.formula, identity.chemical_system) == ("SrTiO3", "Sr1 Ti1 O3", "O-Sr-Ti")
    assert (identity.spacegroup_number, identity.spacegroup_symbol) == (221, "Pm-3m")
    assert identity.volume == pytest.approx(3.905**3)
    assert identity.density == pytest.approx(5.12, abs=0.01)  # SrTiO3, g/cm3
    assert identity.elements == ["O", "Sr", "Ti"] and identity.composition == {"Sr": 1.0, "Ti": 1.0, "O": 3.0}


def test_swapped_sites_share_a_key_but_not_a_fingerprint():
    abo3, bao3 = described(perovskite("Sr", "Ti")), described(perovskite("Ti", "Sr"))
    assert abo3.dedup_key == bao3.dedup_key
    assert not fingerprints_agree(abo3.fingerprint, bao3.fingerprint)
    assert site_mapping(perovskite("Sr", "Ti"), perovskite("Ti", "Sr")) is None


def test_the_same_crystal_matches_whatever_its_site_order_and_setting():
    atoms = bulk("GaAs", "zincblende", a=5.65, cubic=True)
    stored = Crystal.from_ase(atoms)
    order = np.array([7, 3, 5, 1, 6, 2, 4, 0])
    reordered = Crystal.from_ase(atoms[order])
    np.testing.assert_array_equal(site_mapping(stored, reordered), order)

    shifted = atoms.copy()
    shifted.translate([0.1, 0.2, 0.3])  # another origin: StructureMatcher decides
    mapping = site_mapping(stored, Crystal.from_ase(shifted))
    assert mapping is not None and sorted(mapping) == list(range(8))
    assert [stored.species[i] for i in mapping] == list(shifted.get_chemical_symbols())

    assert described(stored).dedup_key == described(reordered).dedup_key
    assert fingerprints_agree(described(stored).fingerprint, described(Crystal.from_ase(shifted)).fingerprint)


def test_a_supercell_is_another_structure():
    atoms = bulk("Cu", "fcc", a=3.6)
    assert site_mapping(Crystal.from_ase(atoms), Crystal.from_ase(atoms * (2, 1, 1))) is None


def test_volume_bins_neighbour_each_other():
    small, large = described(perovskite("Sr", "Ti", 3.90)), described(perovskite("Sr", "Ti", 3.93))
    assert large.dedup_key in small.neighbour_keys()
    assert site_mapping(perovskite("Sr", "Ti", 3.90), perovskite("Sr", "Ti", 3.93)) is not None


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_stored_structure_reads_back_as_the_same_crystal(engine):
    """One conversion of a stored row (import, export, prototypes and relaxations use it);
    a lattice whose JSON holds whole numbers comes back as floats."""
    from sqlalchemy import select, update

    from tests.dft_helpers import cu3au, store_crystals
    from workbench.store.engine import session_scope
    from workbench.store.schema import Structure

    [structure_id] = store_crystals(engine, {"Cu3Au": cu3au()}).values()
    original = Crystal.from_ase(cu3au())
    with session_scope(engine) as session:
        row = session.execute(select(Structure.lattice, Structure.species, Structure.frac_coords)).one()
        stored = Crystal.from_stored(row.lattice, row.species, row.frac_coords)
        session.execute(update(Structure).where(Structure.id == structure_id)
                        .values(lattice=[[4, 0, 0], [0, 4, 0], [0, 0, 4]]))
        whole = session.execute(select(Structure.lattice, Structure.species, Structure.frac_coords)).one()
    assert stored.species == original.species and stored.lattice.dtype == stored.frac_coords.dtype == float
    np.testing.assert_allclose(stored.lattice, original.lattice)
    np.testing.assert_array_equal(site_mapping(original, stored), np.arange(original.nsites))
    assert isinstance(whole.lattice[0][0], int)
    assert Crystal.from_stored(whole.lattice, whole.species, whole.frac_coords).lattice.dtype == float
