"""Physical sanity checks a structure must pass before it is stored."""

import numpy as np
from ase.data import chemical_symbols
from pymatgen.core import Lattice, Structure

from workbench.structures.crystal import Crystal

# Closer than this, two atoms are a parsing or unit error, not chemistry.
MIN_INTERATOMIC_DISTANCE = 0.5  # Å
ELEMENT_SYMBOLS = frozenset(chemical_symbols[1:])


def check_crystal(crystal: Crystal) -> None:
    """Raise ``ValueError`` naming the first problem found, if any."""
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
    structure = Structure(Lattice(crystal.lattice), list(crystal.species), crystal.frac_coords)
    # Includes periodic images, so a too-short lattice vector is caught as well.
    centers, neighbors, _, distances = structure.get_neighbor_list(MIN_INTERATOMIC_DISTANCE)
    if len(distances):
        closest = int(np.argmin(distances))
        i, j = int(centers[closest]), int(neighbors[closest])
        raise ValueError(
            f"atoms {i} ({crystal.species[i]}) and {j} ({crystal.species[j]}) are "
            f"{distances[closest]:.3f} Å apart, closer than {MIN_INTERATOMIC_DISTANCE} Å"
        )
