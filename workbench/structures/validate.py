"""Physical sanity checks a structure must pass before it is stored."""

import numpy as np
from ase.data import chemical_symbols
from pymatgen.optimization.neighbors import find_points_in_spheres

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
    centers, neighbors, distances = neighbour_pairs(crystal, MIN_INTERATOMIC_DISTANCE)
    if len(distances):
        closest = int(np.argmin(distances))
        i, j = int(centers[closest]), int(neighbors[closest])
        raise ValueError(
            f"atoms {i} ({crystal.species[i]}) and {j} ({crystal.species[j]}) are "
            f"{distances[closest]:.3f} Å apart, closer than {MIN_INTERATOMIC_DISTANCE} Å"
        )
    return nearest_neighbour_distances(crystal)


def neighbour_pairs(crystal: Crystal, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(center, neighbour, distance)`` of every pair closer than ``radius``, periodic images
    included (pymatgen's neighbour search on plain arrays, without building a Structure)."""
    cartesian = np.ascontiguousarray(crystal.frac_coords @ crystal.lattice)
    centers, neighbors, offsets, distances = find_points_in_spheres(
        cartesian, cartesian, float(radius), np.ones(3, dtype=np.int64),
        np.ascontiguousarray(crystal.lattice, dtype=float),
    )
    # Each site finds itself in its own cell; two distinct atoms at one place stay in.
    itself = (centers == neighbors) & ~offsets.any(axis=1)
    return centers[~itself], neighbors[~itself], distances[~itself]


def nearest_neighbour_distances(crystal: Crystal) -> np.ndarray:
    """Distance from each site to its nearest neighbour, periodic images included."""
    radius = 2.0 * (abs(np.linalg.det(crystal.lattice)) / crystal.nsites) ** (1 / 3)
    while True:
        centers, _, distances = neighbour_pairs(crystal, radius)
        nearest = np.full(crystal.nsites, np.inf)
        np.minimum.at(nearest, centers, distances)
        if np.isfinite(nearest).all():
            return nearest
        radius *= 2
