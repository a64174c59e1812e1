"""A model's prior: the fit of its target on a stored prior target and on composition.

A universal potential's formation energies are taken against its own elemental
references, a data set's against others (Castelli's perovskite ``heat_ref`` against
references of its own), and the two differ by a sum over the crystal's elements. So the
fit is ``slope * prior + intercept + Σ_e w_e c_e``, with ``c_e`` the count of element
``e`` in the cell, or its fraction for a target pooled by mean (``per_atom``), and a ridge
penalty on the element weights ``w_e`` (not on the slope nor the intercept) chosen by
leave-one-out error. From a handful of labels the weights stay near 0 and the fit is the
least-squares line; from hundreds they correct the references.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from ase.data import atomic_numbers, chemical_symbols

# Ridge penalties tried on the element weights, 1e-4 to 1e4 (in units of the design's
# squared columns: counts of a few atoms, fractions below 1); the least leave-one-out
# error wins. Wide enough that both ends are reached: no weights, and least squares.
PENALTIES = tuple(float(penalty) for penalty in np.logspace(-4, 4, 17))
# A leverage this close to 1 is a point the fit passes through: leaving it out is
# undefined in closed form, not a measured error.
LEVERAGE_TOLERANCE = 1e-8


@dataclass(frozen=True)
class PriorFit:
    """``slope * prior + intercept + Σ_e element_weights[e] * c_e``, fitted on a training
    split (:meth:`fit`); ``c_e`` counts element ``e`` in the cell, or is its fraction with
    ``per_atom``. Elements without a weight (none in the training split) add nothing.
    ``penalty``: the ridge penalty the weights were fitted with. ``held_out_rmse``: the
    fit's leave-one-out RMS error on its training split, what it misses labels it was not
    fitted to by (on few labels the fit can pass through every one: its residuals there
    say nothing); 0 in fits saved before it was kept."""

    target: str
    slope: float
    intercept: float
    # Fits saved before the element weights existed are the line alone.
    element_weights: dict[str, float] = field(default_factory=dict)
    per_atom: bool = False
    penalty: float = 0.0
    held_out_rmse: float = 0.0

    @classmethod
    def fit(cls, target: str, prior: np.ndarray, y: np.ndarray, compositions: Sequence[Mapping[str, float]], *,
            per_atom: bool) -> "PriorFit":
        """The fit of ``y`` on the prior values and the ``compositions`` (element -> count
        in the cell) of the same structures."""
        prior, y = np.asarray(prior, dtype=float), np.asarray(y, dtype=float)
        elements = sorted({element for composition in compositions for element in composition})
        design = np.column_stack([prior, np.ones(len(prior)), _element_columns(compositions, elements, per_atom)])
        penalized = np.r_[0.0, 0.0, np.ones(len(elements))]
        penalty = min(PENALTIES, key=lambda candidate: _leave_one_out_error(design, y, candidate * penalized))
        weights = _ridge(design, y, penalty * penalized)
        return cls(target, float(weights[0]), float(weights[1]),
                   {element: float(weight) for element, weight in zip(elements, weights[2:], strict=True)},
                   per_atom, penalty, _held_out_rmse(design, y, penalty * penalized))

    def __call__(self, prior: np.ndarray, compositions: Sequence[Mapping[str, float]]) -> np.ndarray:
        """The fit at these prior values and compositions."""
        elements = sorted(self.element_weights)
        columns = _element_columns(compositions, elements, self.per_atom)
        weights = np.array([self.element_weights[element] for element in elements])
        return self.slope * np.asarray(prior, dtype=float) + self.intercept + columns @ weights

    def element_table(self) -> np.ndarray:
        """The element weights by atomic number, ``(len(chemical_symbols),)``; 0 where none."""
        table = np.zeros(len(chemical_symbols))
        for element, weight in self.element_weights.items():
            table[atomic_numbers[element]] = weight
        return table

    def term(self, prior: torch.Tensor, numbers: torch.Tensor, batch: torch.Tensor, graphs: int,
             table: torch.Tensor) -> torch.Tensor:
        """The fit over a batch of graphs: ``prior`` ``(B,)``, the atoms' atomic
        ``numbers`` ``(N,)`` and the graph each belongs to, ``batch`` ``(N,)``, with
        :meth:`element_table` as a tensor on their device; ``(B,)``."""
        per_graph = torch.zeros(graphs, dtype=prior.dtype, device=prior.device)
        composition = per_graph.index_add(0, batch, table[numbers])
        if self.per_atom:
            composition = composition / per_graph.index_add(0, batch, torch.ones_like(table[numbers]))
        return self.slope * prior + self.intercept + composition

    def params(self) -> dict[str, str | float | bool]:
        """What an MLflow run records as parameters (``prior.*``); :meth:`from_params` reads them."""
        return {"prior.target": self.target, "prior.slope": self.slope, "prior.intercept": self.intercept,
                "prior.per_atom": self.per_atom, "prior.penalty": self.penalty,
                "prior.held_out_rmse": self.held_out_rmse,
                **{f"prior.weight.{element}": weight for element, weight in sorted(self.element_weights.items())}}

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> "PriorFit":
        """The fit from an MLflow run's parameters (strings)."""
        prefix = "prior.weight."
        return cls(params["prior.target"], float(params["prior.slope"]), float(params["prior.intercept"]),
                   {key.removeprefix(prefix): float(value) for key, value in params.items() if key.startswith(prefix)},
                   params.get("prior.per_atom") == "True", float(params.get("prior.penalty", 0.0)),
                   float(params.get("prior.held_out_rmse", 0.0)))


def composition_of(numbers: Sequence[int]) -> dict[str, float]:
    """Element -> count, from the atomic numbers of a cell's atoms."""
    symbols, counts = np.unique(np.asarray(numbers), return_counts=True)
    return {chemical_symbols[int(number)]: float(count) for number, count in zip(symbols, counts, strict=True)}


def _element_columns(compositions: Sequence[Mapping[str, float]], elements: list[str], per_atom: bool) -> np.ndarray:
    columns = np.zeros((len(compositions), len(elements)))
    position = {element: index for index, element in enumerate(elements)}
    for row, composition in enumerate(compositions):
        atoms = sum(composition.values())
        for element, count in composition.items():
            if element in position:
                columns[row, position[element]] = count / atoms if per_atom else count
    return columns


def _ridge(design: np.ndarray, y: np.ndarray, penalties: np.ndarray) -> np.ndarray:
    """Least squares with ``penalties[j] * w_j²`` added, as one augmented least-squares
    problem (well defined even where columns are collinear, as counts summing to the cell
    size are with the intercept)."""
    augmented = np.vstack([design, np.diag(np.sqrt(penalties))])
    target = np.concatenate([y, np.zeros(len(penalties))])
    weights, *_ = np.linalg.lstsq(augmented, target, rcond=None)
    return weights


def _leave_one_out(design: np.ndarray, y: np.ndarray, penalties: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ridge fit's residuals and leverages (the diagonal ``h`` of its hat matrix)."""
    inverse = np.linalg.pinv(design.T @ design + np.diag(penalties))
    leverage = np.einsum("ij,jk,ik->i", design, inverse, design)
    return y - design @ _ridge(design, y, penalties), leverage


def _leave_one_out_error(design: np.ndarray, y: np.ndarray, penalties: np.ndarray) -> float:
    """Mean squared leave-one-out residual of the ridge fit, in closed form:
    ``r_i / (1 - h_ii)``; a point the fit passes through (``h_ii`` = 1) counts as missed
    by a huge error, so that a penalty which interpolates is not chosen for it."""
    residuals, leverage = _leave_one_out(design, y, penalties)
    held_out = residuals / np.maximum(1.0 - leverage, np.finfo(float).eps)
    return float(np.mean(held_out**2))


def _held_out_rmse(design: np.ndarray, y: np.ndarray, penalties: np.ndarray) -> float:
    """Root mean squared leave-one-out residual of the ridge fit over the points it does
    not pass through (each left out, it would have been missed by ``r_i / (1 - h_ii)``);
    0 where it passes through all of them (two points and a line)."""
    residuals, leverage = _leave_one_out(design, y, penalties)
    informative = leverage < 1.0 - LEVERAGE_TOLERANCE
    if not informative.any():
        return 0.0
    return float(np.sqrt(np.mean((residuals[informative] / (1.0 - leverage[informative])) ** 2)))
