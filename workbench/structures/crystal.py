"""The plain crystal record the store keeps: lattice, species, fractional coordinates."""

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from pymatgen.core import Lattice, Structure

# The store keeps one ordered configuration per structure; a disordered one is refused.
ORDERED_ONLY = (
    "only ordered crystals are stored; choose an ordering first "
    "(e.g. pymatgen's OrderDisorderedStructureTransformation)"
)


@dataclass(frozen=True, eq=False)
class Crystal:
    """An ordered periodic crystal.

    Attributes:
        lattice: ``(3, 3)`` lattice vectors as rows, in Å.
        species: element symbol of each site, length ``n``.
        frac_coords: ``(n, 3)`` fractional coordinates.
    """

    lattice: np.ndarray
    species: tuple[str, ...]
    frac_coords: np.ndarray

    @property
    def nsites(self) -> int:
        return len(self.species)

    @classmethod
    def from_pymatgen(cls, structure: Structure) -> "Crystal":
        if not structure.is_ordered:
            partial = [f"{index} ({site.species})" for index, site in enumerate(structure, start=1) if not site.is_ordered]
            raise ValueError(f"partial occupancy at sites {', '.join(partial[:5])}: {ORDERED_ONLY}")
        return cls(
            lattice=np.array(structure.lattice.matrix, dtype=float),
            species=tuple(site.specie.symbol for site in structure),
            frac_coords=np.array(structure.frac_coords, dtype=float),
        )

    @classmethod
    def from_stored(cls, lattice: list[list[float]], species: list[str], frac_coords: np.ndarray) -> "Crystal":
        """The crystal of a stored structure's columns (the lattice is a JSON list, which
        may hold integers)."""
        return cls(np.array(lattice, dtype=float), tuple(species), np.asarray(frac_coords, dtype=float))

    @classmethod
    def from_ase(cls, atoms: Atoms) -> "Crystal":
        if not atoms.pbc.all() or atoms.cell.rank < 3:
            raise ValueError("not a periodic crystal: ASE Atoms need pbc on all axes and a full cell")
        return cls(
            lattice=np.array(atoms.cell[:], dtype=float),
            species=tuple(atoms.get_chemical_symbols()),
            frac_coords=np.array(atoms.get_scaled_positions(wrap=False), dtype=float),
        )

    def to_pymatgen(self) -> Structure:
        return Structure(Lattice(self.lattice), list(self.species), self.frac_coords)

    def to_ase(self) -> Atoms:
        return Atoms(
            symbols=list(self.species), scaled_positions=self.frac_coords, cell=self.lattice, pbc=True
        )
