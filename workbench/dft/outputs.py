"""Quantities derived from a calculation's raw output: plain numbers in, plain numbers out.

The standard DOS is the representation of the ALIGNN-DOS paper (shared/seeds/002):
300 bins from -5 to 10 eV relative to the Fermi level, 0.05 eV apart, divided by the
number of valence electrons. Eigenvalues are broadened with Gaussians of width
:data:`DOS_BROADENING_EV`, since a raw histogram of a few k-points is spiky.
"""

import numpy as np
from ase.dft.bandgap import bandgap

DOS_GRID = np.linspace(-5.0, 10.0, 300, endpoint=False)
DOS_GRID_UNITS = "eV"
DOS_BROADENING_EV = 0.1
# The calculator's own DOS over all bands, kept beside the standard one.
RAW_DOS_STEP_EV = 0.01


def broadened_dos(eigenvalues: np.ndarray, weights: np.ndarray, energies: np.ndarray) -> np.ndarray:
    """States per eV per cell on ``energies`` (each level a Gaussian of width
    :data:`DOS_BROADENING_EV`), summed over spins.

    Args:
        eigenvalues: ``(spins, kpoints, bands)`` in eV.
        weights: ``(kpoints,)`` k-point weights summing to 1.
        energies: ``(points,)`` in eV, same reference as ``eigenvalues``.
    """
    spins = eigenvalues.shape[0]
    # A closed-shell band holds two electrons.
    occupancy = 2.0 / spins
    dos = np.zeros_like(energies, dtype=float)
    for spin in range(spins):
        for weight, levels in zip(weights, eigenvalues[spin]):
            offsets = (energies[:, None] - levels[None, :]) / DOS_BROADENING_EV
            dos += occupancy * weight * np.exp(-0.5 * offsets**2).sum(axis=1)
    return dos / (DOS_BROADENING_EV * np.sqrt(2.0 * np.pi))


def standard_dos(eigenvalues: np.ndarray, weights: np.ndarray, fermi_level: float,
                 valence_electrons: float) -> np.ndarray:
    """The 300-bin DOS on :data:`DOS_GRID` (relative to the Fermi level), per valence electron."""
    return broadened_dos(eigenvalues, weights, DOS_GRID + fermi_level) / valence_electrons


def raw_dos(eigenvalues: np.ndarray, weights: np.ndarray, fermi_level: float) -> tuple[np.ndarray, np.ndarray]:
    """The DOS over every computed band, energies relative to the Fermi level."""
    low = eigenvalues.min() - 1.0 - fermi_level
    high = eigenvalues.max() + 1.0 - fermi_level
    energies = np.arange(low, high, RAW_DOS_STEP_EV)
    return energies, broadened_dos(eigenvalues, weights, energies + fermi_level)


def electrons_below(eigenvalues: np.ndarray, weights: np.ndarray, fermi_level: float) -> float:
    """Electrons in states below the Fermi level: the valence count of a calculator that
    does not report it (exact for a gapped system, to a fraction of a band for a metal)."""
    occupancy = 2.0 / eigenvalues.shape[0]
    return float(occupancy * sum((weights[:, None] * (spin < fermi_level)).sum() for spin in eigenvalues))


def band_gaps(eigenvalues: np.ndarray, fermi_level: float) -> tuple[float, float]:
    """(fundamental, direct) gap in eV; zero for a metal."""
    gap, _, _ = bandgap(eigenvalues=eigenvalues, efermi=fermi_level, output=None)
    direct, _, _ = bandgap(eigenvalues=eigenvalues, efermi=fermi_level, direct=True, output=None)
    return float(gap), float(direct)


def formation_energy_per_atom(energy: float, counts: dict[str, int],
                              reference_energy_per_atom: dict[str, float]) -> float:
    """(E - sum_i n_i mu_i) / N against elemental energies per atom ``mu``."""
    atoms = sum(counts.values())
    reference = sum(n * reference_energy_per_atom[element] for element, n in counts.items())
    return (energy - reference) / atoms
