"""What makes two stored structures the same: descriptors, dedup key, and matching.

The dedup key is ``reduced formula | space group number | volume-per-atom bin``. Lookup
also tries the neighbouring volume bins, so two copies of one crystal that straddle a bin
edge still meet. Candidates must then agree in their geometric fingerprint (the
nearest-neighbour distance of every site, sorted within each element, to 5 %) and
finally in pymatgen's StructureMatcher. The fingerprint test is cheap and keeps
StructureMatcher away from the many same-formula, same-group crystals that differ in
which element sits where (e.g. A- and B-site swaps in perovskites).
"""

import math
from collections import Counter
from dataclasses import dataclass

import moyopy
import numpy as np
from ase.data import atomic_masses, atomic_numbers
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition

from workbench.structures.crystal import Crystal

SYMPREC = 0.1  # Å, pymatgen's SpacegroupAnalyzer default
# moyopy (a Rust successor of spglib by one of its authors) agrees with spglib on 99.7 % of
# the perovskites at this tolerance and is three times faster (benchmarks/store.md).
VOLUME_BIN_WIDTH = 0.05  # relative width of a volume-per-atom bin
SAME_POSITION_TOLERANCE = 1e-3  # Å: two sites closer than this are the same site
FINGERPRINT_RTOL = 0.05  # relative tolerance on nearest-neighbour distances
AMU_PER_A3_TO_G_PER_CM3 = 1.66053906660

# Same number of sites required: a supercell is a different structure here, because
# per-site labels are stored in the order of the stored cell's sites.
_MATCHER = StructureMatcher(
    ltol=0.2, stol=0.3, angle_tol=5, primitive_cell=False, scale=False, attempt_supercell=False
)


@dataclass(frozen=True)
class Identity:
    """Descriptors of a crystal that SQL filters on and dedup uses."""

    formula: str
    reduced_formula: str
    chemical_system: str
    composition: dict[str, float]
    elements: list[str]
    nsites: int
    volume: float
    density: float
    spacegroup_number: int
    spacegroup_symbol: str
    volume_bin: int
    fingerprint: np.ndarray

    @property
    def dedup_key(self) -> str:
        return dedup_key(self.reduced_formula, self.spacegroup_number, self.volume_bin)

    def neighbour_keys(self) -> list[str]:
        return [
            dedup_key(self.reduced_formula, self.spacegroup_number, self.volume_bin + shift)
            for shift in (-1, 0, 1)
        ]


def dedup_key(reduced_formula: str, spacegroup_number: int, volume_bin: int) -> str:
    return f"{reduced_formula}|{spacegroup_number}|{volume_bin}"


def space_group(crystal: Crystal) -> tuple[int, str]:
    """The space group's number and short Hermann-Mauguin symbol; ``(0, "unknown")`` where
    the search gives up (some badly distorted cells)."""
    numbers = [atomic_numbers[symbol] for symbol in crystal.species]
    try:
        cell = moyopy.Cell(crystal.lattice.tolist(), crystal.frac_coords.tolist(), numbers)
        number = moyopy.MoyoDataset(cell, symprec=SYMPREC).number
        return int(number), moyopy.SpaceGroupType(number).hm_short.replace(" ", "")
    except (RuntimeError, ValueError):
        return 0, "unknown"


def identify(crystal: Crystal, nearest: np.ndarray, symmetry: tuple[int, str] | None = None) -> Identity:
    """Describe a checked crystal; ``nearest`` is what :func:`check_crystal` returned.

    ``symmetry`` is the crystal's :func:`space_group` where the caller knows it already
    (decorations of one prototype share it with every decoration that puts equal elements
    on the same sites), else it is searched for.
    """
    composition = Composition(Counter(crystal.species))
    volume = float(abs(np.linalg.det(crystal.lattice)))
    number, symbol = symmetry or space_group(crystal)
    weight = float(sum(atomic_masses[atomic_numbers[element]] for element in crystal.species))
    elements = sorted(composition.chemical_system.split("-"))
    return Identity(
        formula=composition.formula,
        reduced_formula=composition.reduced_formula,
        chemical_system=composition.chemical_system,
        composition={element: float(amount) for element, amount in composition.as_dict().items()},
        elements=elements,
        nsites=crystal.nsites,
        volume=volume,
        density=weight * AMU_PER_A3_TO_G_PER_CM3 / volume,
        spacegroup_number=number,
        spacegroup_symbol=symbol,
        volume_bin=math.floor(math.log(volume / crystal.nsites) / math.log1p(VOLUME_BIN_WIDTH)),
        fingerprint=nearest[np.lexsort((nearest, np.array(crystal.species)))],
    )


def fingerprints_agree(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= FINGERPRINT_RTOL * np.maximum(a, b)))


def site_mapping(stored: Crystal, incoming: Crystal) -> np.ndarray | None:
    """If ``incoming`` is the same crystal as ``stored``, the stored index of each incoming site.

    Returns ``None`` when they differ. When both share a cell, sites are matched by
    position (so per-site labels land on the very site they were given for, even among
    symmetry-equivalent sites); otherwise StructureMatcher decides and maps.
    """
    if stored.nsites != incoming.nsites:
        return None
    if np.allclose(stored.lattice, incoming.lattice, atol=SAME_POSITION_TOLERANCE):
        mapping = _positional_mapping(stored, incoming)
        if mapping is not None:
            return mapping
    stored_structure, incoming_structure = stored.to_pymatgen(), incoming.to_pymatgen()
    if not _MATCHER.fit(stored_structure, incoming_structure):
        return None
    mapping = _MATCHER.get_mapping(stored_structure, incoming_structure)
    return None if mapping is None else np.asarray(mapping, dtype=int)



def _positional_mapping(stored: Crystal, incoming: Crystal) -> np.ndarray | None:
    """Stored index of each incoming site at the same place (modulo lattice vectors)."""
    delta = incoming.frac_coords[:, None, :] - stored.frac_coords[None, :, :]
    delta -= np.round(delta)
    distances = np.linalg.norm(delta @ stored.lattice, axis=-1)
    same_species = np.array(incoming.species)[:, None] == np.array(stored.species)[None, :]
    close = (distances < SAME_POSITION_TOLERANCE) & same_species
    if not close.any(axis=1).all():
        return None
    mapping = np.argmax(close, axis=1)
    return mapping if len(set(mapping.tolist())) == len(mapping) else None
