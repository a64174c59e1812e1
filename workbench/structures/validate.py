"""Physical sanity checks a structure must pass before it is stored."""

import numpy as np
from ase.data import chemical_symbols
from pymatgen.core import Structure

from workbench.structures.crystal import Crystal

# Closer than this, two atoms are a parsing or unit error, not chemistry.
MIN_INTERATOMIC_DISTANCE = 0.5  # Å
ELEMENT_SYMBOLS = frozenset(chemical_symbols[1:])


def check_crystal(crystal: Crystal) -> np.ndarray:
    """Raise ``ValueError`` naming the first problem found, if any.

    Returns the nearest-neighbour distance of each site (periodic images included), which
    the spacing check needs and the structure's fingerprint reuses.
    """
    if crystal.nsites == 0:
        raise ValueError("structure has no atoms")
    unknown = sorted({symbol for symbol in crystal.species if symbol not in ELEMENT_SYMBOLS})
    if unknown:
        raise ValueError(f"unknown element {', '.join(map(repr, unknown))}")
    if crystal.lattice.shape != (3, 3) or crystal.frac_coords.shape != (crystal.nsites, 3):
        raise ValueError("lattice must be 3x3 and coordinates n x 3")
    if not (np.isfinite(crystal.lattice).all() and np.isfinite(crystal.frac_coords).all()):
        raise ValueError("lattice or coordinates are not finite")
    if abs(np.linalg.det(crystal.lattice)) < 1e-6:
        raise ValueError("lattice vectors are linearly dependent (zero cell volume)")
    structure = crystal.to_pymatgen()
    nearest = nearest_neighbour_distances(structure)
    if nearest.min() < MIN_INTERATOMIC_DISTANCE:
        centers, neighbors, _, distances = structure.get_neighbor_list(MIN_INTERATOMIC_DISTANCE)
        closest = int(np.argmin(distances))
        i, j = int(centers[closest]), int(neighbors[closest])
        raise ValueError(
            f"atoms {i} ({crystal.species[i]}) and {j} ({crystal.species[j]}) are "
            f"{distances[closest]:.3f} Å apart, closer than {MIN_INTERATOMIC_DISTANCE} Å"
        )
    return nearest


def nearest_neighbour_distances(structure: Structure) -> np.ndarray:
    """Distance from each site to its nearest neighbour, periodic images included."""
    radius = 2.0 * (structure.volume / len(structure)) ** (1 / 3)
    while True:
        centers, _, _, distances = structure.get_neighbor_list(radius)
        nearest = np.full(len(structure), np.inf)
        np.minimum.at(nearest, centers, distances)
        if np.isfinite(nearest).all():
            return nearest
        radius *= 2
