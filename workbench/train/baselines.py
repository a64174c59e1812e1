"""Baselines every model is reported beside (seeds 002 and 004).

- ``MeanBaseline``: the training mean, for any kind (the mean spectrum for a DOS).
- ``CompositionBaseline``: a scalar as a sum of per-element contributions, fitted by
  least squares on element counts (extensive targets) or fractions (intensive ones).
- ``ElementAverageBaseline``: a per-site value as the training average of its element.
"""

import numpy as np

from workbench.featurize.atom_features import MAX_ATOMIC_NUMBER


class MeanBaseline:
    def fit(self, y: list[np.ndarray]) -> "MeanBaseline":
        self.mean = np.mean(np.stack([np.asarray(value, dtype=float) for value in y]), axis=0)
        return self

    def predict(self, count: int) -> np.ndarray:
        return np.repeat(self.mean[None, ...], count, axis=0)


def composition_matrix(atomic_numbers: list[np.ndarray], *, fractions: bool) -> np.ndarray:
    counts = np.stack([np.bincount(numbers, minlength=MAX_ATOMIC_NUMBER + 1) for numbers in atomic_numbers])
    counts = counts.astype(float)
    return counts / counts.sum(axis=1, keepdims=True) if fractions else counts


class CompositionBaseline:
    """``y ≈ b + Σ_e n_e w_e`` with a small ridge penalty on the element weights."""

    ridge = 1e-6

    def __init__(self, *, extensive: bool):
        self.fractions = not extensive

    def fit(self, atomic_numbers: list[np.ndarray], y: np.ndarray) -> "CompositionBaseline":
        x = composition_matrix(atomic_numbers, fractions=self.fractions)
        self.used = x.any(axis=0)
        design = np.hstack([np.ones((len(x), 1)), x[:, self.used]])
        penalty = self.ridge * np.eye(design.shape[1])
        penalty[0, 0] = 0.0
        self.weights = np.linalg.solve(design.T @ design + penalty, design.T @ np.asarray(y, dtype=float))
        return self

    def predict(self, atomic_numbers: list[np.ndarray]) -> np.ndarray:
        x = composition_matrix(atomic_numbers, fractions=self.fractions)
        return self.weights[0] + x[:, self.used] @ self.weights[1:]  # unseen elements add nothing


class ElementAverageBaseline:
    def fit(self, atomic_numbers: np.ndarray, y: np.ndarray) -> "ElementAverageBaseline":
        y = np.asarray(y, dtype=float).reshape(len(atomic_numbers), -1)
        self.fallback = y.mean(axis=0)
        self.table = np.tile(self.fallback, (MAX_ATOMIC_NUMBER + 1, 1))
        for number in np.unique(atomic_numbers):
            self.table[number] = y[atomic_numbers == number].mean(axis=0)
        return self

    def predict(self, atomic_numbers: np.ndarray) -> np.ndarray:
        out = self.table[atomic_numbers]
        return out[:, 0] if out.shape[1] == 1 else out
