"""Figures a person looks at after a training: parity with error bars, DOS overlays."""

from pathlib import Path

import numpy as np
from ase.data import chemical_symbols
from matplotlib.figure import Figure  # no pyplot: no global figure state, no display needed

SPECTRUM_PANELS = (2, 3)  # rows, columns of spectra in an overlay figure


def parity_plot(y: np.ndarray, mean: np.ndarray, std: np.ndarray, path: Path, *, title: str,
                groups: np.ndarray | None = None) -> Path:
    """Predicted mean ± std against the truth; per-site points coloured by element."""
    figure = Figure(figsize=(5, 5))
    axis = figure.subplots()
    if groups is None:
        axis.errorbar(y, mean, yerr=std, fmt="o", markersize=3, alpha=0.6, elinewidth=0.8)
    else:
        for number in np.unique(groups):
            chosen = groups == number
            axis.errorbar(y[chosen], mean[chosen], yerr=std[chosen], fmt="o", markersize=2, alpha=0.5,
                          elinewidth=0.5, label=chemical_symbols[number])
        axis.legend(fontsize=7, ncol=2)
    low, high = float(min(y.min(), mean.min())), float(max(y.max(), mean.max()))
    axis.plot([low, high], [low, high], "k--", linewidth=0.8)
    axis.set(xlabel="DFT", ylabel="predicted (ensemble mean ± std)", title=title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


def spectrum_overlays(y: np.ndarray, mean: np.ndarray, std: np.ndarray, path: Path, *, title: str,
                      energies: np.ndarray | None = None, labels: list[str] | None = None) -> Path:
    """The first spectra (a panel each, :data:`SPECTRUM_PANELS`), truth against prediction
    with a ±std band; ``labels`` title each panel (e.g. the formula)."""
    grid = energies if energies is not None else np.arange(y.shape[1])
    figure = Figure(figsize=(10, 5))
    axes = figure.subplots(*SPECTRUM_PANELS, sharex=True)
    for axis, index in zip(axes.ravel(), range(len(y)), strict=False):
        axis.plot(grid, y[index], "k", linewidth=1, label="DFT")
        axis.plot(grid, mean[index], "C1", linewidth=1, label="predicted")
        axis.fill_between(grid, mean[index] - std[index], mean[index] + std[index], color="C1", alpha=0.3)
        if labels is not None:
            axis.set_title(labels[index], fontsize=9)
    axes[0, 0].legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path
