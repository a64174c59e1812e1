"""Acquisition scores over an ensemble's predictions (mean and std per candidate).

Every function takes ``(n,)`` arrays and returns ``(n,)`` scores, higher is better.
The ensemble's spread is treated as a Gaussian predictive distribution, and several
targets as independent.
"""

import numpy as np
from scipy.stats import norm

from workbench.acquire.objective import Constraint, Objective
from workbench.train.metrics import DOS_GAP_THRESHOLD, band_gap

# Floor on the predictive std: a zero spread would make probabilities 0/1 steps.
MIN_STD = 1e-9


def greedy(mean: np.ndarray, *, maximize: bool = True) -> np.ndarray:
    """The predicted value itself (exploitation)."""
    return mean if maximize else -mean


def uncertainty(std: np.ndarray) -> np.ndarray:
    """The ensemble's spread (exploration)."""
    return std


def upper_confidence_bound(mean: np.ndarray, std: np.ndarray, *, kappa: float = 2.0,
                           maximize: bool = True) -> np.ndarray:
    """``mean + kappa std`` (or ``-mean + kappa std`` when minimising)."""
    return greedy(mean, maximize=maximize) + kappa * std


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float, *,
                         maximize: bool = True, xi: float = 0.0) -> np.ndarray:
    """E[max(0, f - best - xi)] under N(mean, std²); signs flipped when minimising."""
    sigma = np.maximum(std, MIN_STD)
    improvement = (mean - best - xi) if maximize else (best - mean - xi)
    z = improvement / sigma
    return improvement * norm.cdf(z) + sigma * norm.pdf(z)


def probability_of_constraint(constraint: Constraint, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """P(low <= f <= high) under N(mean, std²)."""
    sigma = np.maximum(std, MIN_STD)
    return norm.cdf((constraint.high - mean) / sigma) - norm.cdf((constraint.low - mean) / sigma)


def probability_of_objective(objective: Objective, predictions: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """P(every constraint holds), targets independent; ``predictions`` maps target ->
    ``(mean, std)``."""
    probability = None
    for constraint in objective.constraints:
        mean, std = predictions[constraint.target]
        p = probability_of_constraint(constraint, np.asarray(mean, float), np.asarray(std, float))
        probability = p if probability is None else probability * p
    return probability


def gap_from_dos(dos: np.ndarray, grid: np.ndarray, *, threshold: float = DOS_GAP_THRESHOLD) -> np.ndarray:
    """Band gap read off DOS spectra ``(n, bins)`` on ``grid`` relative to the Fermi level
    (the same reading as the spectrum metrics: the DOS-free window around 0)."""
    return np.array([band_gap(grid, row, threshold) for row in np.atleast_2d(dos)])


def total_moment(per_site: np.ndarray, batch: np.ndarray, count: int) -> np.ndarray:
    """Sum of per-site values ``(N,)`` per structure (``batch`` ``(N,)`` gives each site's
    structure index in ``0..count-1``), e.g. the cell's total magnetic moment."""
    return np.bincount(batch, weights=per_site, minlength=count)
