"""Metrics as the seed papers report them, plus how good the ensemble's uncertainty is."""

import numpy as np
from ase.data import chemical_symbols
from scipy.stats import spearmanr

# A DOS below this (states/eV/electron) counts as zero when reading a gap off it.
DOS_GAP_THRESHOLD = 1e-3


def uncertainty_metrics(error: np.ndarray, std: np.ndarray) -> dict[str, float]:
    """Spearman correlation of |error| with the predicted std; share of errors within
    1 and 2 std (0.68 and 0.95 for calibrated Gaussian errors)."""
    error, std = np.abs(np.ravel(error)), np.ravel(std)
    spearman = spearmanr(error, std).statistic if len(error) > 2 and np.ptp(std) > 0 else float("nan")
    return {
        "spearman_error_std": float(spearman),
        "coverage_1std": float(np.mean(error <= std)),
        "coverage_2std": float(np.mean(error <= 2 * std)),
    }


def scalar_metrics(y: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict[str, float]:
    error = mean - y
    return {"mae": float(np.mean(np.abs(error))), "rmse": float(np.sqrt(np.mean(error**2))),
            **uncertainty_metrics(error, std)}


def spectrum_metrics(y: np.ndarray, mean: np.ndarray, std: np.ndarray,
                     energies: np.ndarray | None = None) -> dict[str, float]:
    """Kaundinya et al. (2022): per-spectrum MAE over the bins and relative error of the
    mean DOS, averaged over spectra; with an energy grid (eV, Fermi level at 0), also the
    error of the DOS at the Fermi level and of the band gap read off the spectrum."""
    metrics = {
        "mae": float(np.mean(np.abs(mean - y))),
        "relative_error_mean_dos": float(np.mean(np.abs(mean.mean(1) - y.mean(1)) / np.maximum(y.mean(1), 1e-12))),
        **uncertainty_metrics(mean - y, std),
    }
    if energies is not None:
        fermi = int(np.argmin(np.abs(energies)))
        metrics["mae_dos_at_fermi"] = float(np.mean(np.abs(mean[:, fermi] - y[:, fermi])))
        gaps_true = np.array([band_gap(energies, spectrum) for spectrum in y])
        gaps_pred = np.array([band_gap(energies, spectrum) for spectrum in mean])
        metrics["mae_band_gap"] = float(np.mean(np.abs(gaps_pred - gaps_true)))
    return metrics


def band_gap(energies: np.ndarray, dos: np.ndarray, threshold: float = DOS_GAP_THRESHOLD) -> float:
    """Width of the zero-DOS window around the Fermi level (0 eV): the number of empty
    bins times the bin width; 0 for a metal."""
    fermi = int(np.argmin(np.abs(energies)))
    if dos[fermi] > threshold:
        return 0.0
    empty = dos <= threshold
    low = fermi
    while low > 0 and empty[low - 1]:
        low -= 1
    high = fermi
    while high < len(dos) - 1 and empty[high + 1]:
        high += 1
    return float((high - low + 1) * (energies[1] - energies[0]))


def per_site_metrics(y: np.ndarray, mean: np.ndarray, std: np.ndarray,
                     atomic_numbers: np.ndarray) -> dict[str, float]:
    """MAE over all sites and per element (``mae_<symbol>``), with uncertainty quality."""
    error = mean - y
    site_error = np.abs(error).reshape(len(atomic_numbers), -1).mean(axis=1)
    metrics = {"mae": float(site_error.mean()), **uncertainty_metrics(error, std)}
    for number in np.unique(atomic_numbers):
        metrics[f"mae_{chemical_symbols[number]}"] = float(site_error[atomic_numbers == number].mean())
    return metrics
