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
