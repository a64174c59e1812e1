"""Acquisition scores over an ensemble's predictions (mean and std per candidate).

Each score function is one entry of :data:`SCORE_FUNCTIONS`, declaring what it needs (a
one-sided objective, the best label so far, a model at all) and the scale of its scores,
which says how cost-aware acquisition weighs them. Adding a function is one entry; the
campaign config's allowed ``acquisition.function`` names are this table's keys.

The ensemble's spread is treated as a Gaussian predictive distribution, and several
targets as independent. Higher scores are better.
"""

import enum
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from workbench.acquire.objective import Constraint, Objective

# Floor on the predictive std: a zero spread would make probabilities 0/1 steps.
MIN_STD = 1e-9
SQRT_2PI = np.sqrt(2 * np.pi)
# The baseline function's name: what a random round ranks by, as its ledger rows say.
RANDOM = "random"


def greedy(mean: np.ndarray, *, maximize: bool = True) -> np.ndarray:
    """The predicted value itself (exploitation)."""
    return mean if maximize else -mean


def upper_confidence_bound(mean: np.ndarray, std: np.ndarray, *, kappa: float = 2.0,
                           maximize: bool = True) -> np.ndarray:
    """``mean + kappa std`` (or ``-mean + kappa std`` when minimising)."""
    return greedy(mean, maximize=maximize) + kappa * std


def improvement_z(mean: np.ndarray, std: np.ndarray, best: float, *, maximize: bool = True) -> np.ndarray:
    """Predicted improvement on ``best`` in units of the std."""
    return ((mean - best) if maximize else (best - mean)) / np.maximum(std, MIN_STD)


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float, *,
                         maximize: bool = True, xi: float = 0.0) -> np.ndarray:
    """E[max(0, f - best - xi)] under N(mean, std²); signs flipped when minimising."""
    # scipy here, not at the top: the campaign config reads this registry and should load fast.
    from scipy.special import ndtr

    sigma = np.maximum(std, MIN_STD)
    z = improvement_z(mean, std, best + (xi if maximize else -xi), maximize=maximize)
    return sigma * (z * ndtr(z) + np.exp(-0.5 * z**2) / SQRT_2PI)


def log_probability_of_constraint(constraint: Constraint, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """log P(low <= f <= high) under N(mean, std²), accurate far in either tail.

    ``P = Φ(b) - Φ(a)`` is taken on the side of the mean where it is not a difference of
    two numbers close to 1: with the window above the mean, as ``Φ(-a) - Φ(-b)``. Then
    ``log P = log Φ(hi) + log(1 - exp(log Φ(lo) - log Φ(hi)))``, never underflowing to
    log 0 for a candidate many spreads away from the window.
    """
    from scipy.special import log_ndtr

    sigma = np.maximum(np.asarray(std, float), MIN_STD)
    mean = np.asarray(mean, float)
    a, b = (constraint.low - mean) / sigma, (constraint.high - mean) / sigma
    above = a > 0
    hi, lo = np.where(above, -a, b), np.where(above, -b, a)
    log_hi, log_lo = log_ndtr(hi), log_ndtr(lo)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(log_lo == -np.inf, log_hi, log_hi + np.log1p(-np.exp(log_lo - log_hi)))


def log_probability_of_objective(objective: Objective,
                                 predictions: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """log P(every constraint holds), targets independent; ``predictions`` maps target ->
    ``(mean, std)``."""
    return sum(log_probability_of_constraint(constraint, *predictions[constraint.target])
               for constraint in objective.constraints)


def probability_of_objective(objective: Objective,
                             predictions: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """P(every constraint holds) (may round to 0 far from the window: rank by the log)."""
    return np.exp(log_probability_of_objective(objective, predictions))


@dataclass(frozen=True)
class ScoreInputs:
    """What a score function may read: per objective target the ensemble's ``(mean, std)``
    over ``count`` candidates, the objective, the UCB ``kappa``, the best label so far of
    the first target (towards its bound) and a random generator."""

    count: int
    predictions: dict[str, tuple[np.ndarray, np.ndarray]]
    objective: Objective
    kappa: float
    best_labeled: float | None
    rng: np.random.Generator

    @property
    def first(self) -> tuple[Constraint, np.ndarray, np.ndarray]:
        """The first constraint and its target's mean and std."""
        constraint = self.objective.constraints[0]
        mean, std = self.predictions[constraint.target]
        return constraint, np.asarray(mean, float), np.asarray(std, float)

    def spread(self) -> np.ndarray:
        """Summed std over the objective's targets."""
        return sum(np.asarray(self.predictions[target][1], float) for target in self.objective.targets)

    def closeness(self) -> np.ndarray:
        """Minus the summed distance of the means outside their bounds."""
        return -sum(constraint.distance(self.predictions[constraint.target][0])
                    for constraint in self.objective.constraints)


class Scale(enum.StrEnum):
    """What a score's numbers are, and so how cost-aware acquisition divides by cost."""

    LOG = "log"  # the log of a positive quantity: minus log(cost)
    POSITIVE = "positive"  # >= 0: divided by cost
    SIGNED = "signed"  # any sign: its margin over the worst candidate, divided by cost
    NONE = "none"  # not weighed by cost (random)

    def per_cost(self, scores: np.ndarray, costs: np.ndarray) -> np.ndarray:
        """``scores`` weighed by ``costs``. A score that is not finite (``-inf``: no
        prediction, ranked last) is kept as it is, and the signed margin is taken over the
        worst finite score: an infinite one would make every margin infinite."""
        finite = np.isfinite(scores)
        if self is Scale.LOG:
            weighed = scores - np.log(costs)
        elif self is Scale.POSITIVE:
            weighed = scores / costs
        elif self is Scale.SIGNED:
            weighed = (scores - np.min(scores, where=finite, initial=np.inf)) / costs
        else:
            return scores
        return np.where(finite, weighed, scores)


@dataclass(frozen=True)
class ScoreFunction:
    """One acquisition function: its scores, what decides between equal scores, and what
    it needs. ``one_sided``: it pushes the first objective target towards its bound, so a
    window (``1<=x<=2``) is refused; ``needs_best_label``: it improves on the best label so
    far; ``needs_model``: it reads predictions (all but ``random``)."""

    name: str
    description: str
    score: Callable[[ScoreInputs], np.ndarray]
    scale: Scale
    tie_break: Callable[[ScoreInputs], np.ndarray] | None = None
    tie_break_label: str = ""
    one_sided: bool = False
    needs_best_label: bool = False
    needs_model: bool = True

    def check_objective(self, first: Constraint) -> None:
        """Raise ValueError if the function is ``one_sided`` and ``first`` (the objective's
        first constraint) is a window."""
        if self.one_sided and first.is_window:
            raise ValueError(f"function {self.name!r} needs a one-sided first objective constraint "
                             f"(e.g. 'heat_ref<1.0'), not the window {first}; use 'probability'")


def _ucb(inputs: ScoreInputs) -> np.ndarray:
    constraint, mean, std = inputs.first
    return upper_confidence_bound(mean, std, kappa=inputs.kappa, maximize=constraint.maximizes)


def _ei(inputs: ScoreInputs) -> np.ndarray:
    constraint, mean, std = inputs.first
    return expected_improvement(mean, std, inputs.best_labeled, maximize=constraint.maximizes)


def _ei_z(inputs: ScoreInputs) -> np.ndarray:
    constraint, mean, std = inputs.first
    return improvement_z(mean, std, inputs.best_labeled, maximize=constraint.maximizes)


def _greedy(inputs: ScoreInputs) -> np.ndarray:
    constraint, mean, _ = inputs.first
    return greedy(mean, maximize=constraint.maximizes)


SCORE_FUNCTIONS: dict[str, ScoreFunction] = {entry.name: entry for entry in (
    ScoreFunction("probability", "log of the probability of meeting every constraint",
                  lambda inputs: log_probability_of_objective(inputs.objective, inputs.predictions), Scale.LOG,
                  tie_break=ScoreInputs.closeness, tie_break_label="closeness of the means to the objective"),
    ScoreFunction("ucb", "mean + kappa std of the first target, towards its bound", _ucb, Scale.SIGNED,
                  tie_break=ScoreInputs.spread, tie_break_label="spread", one_sided=True),
    ScoreFunction("ei", "expected improvement on the best label of the first target", _ei, Scale.POSITIVE,
                  tie_break=_ei_z, tie_break_label="improvement in stds", one_sided=True, needs_best_label=True),
    ScoreFunction("greedy", "mean of the first target, towards its bound", _greedy, Scale.SIGNED,
                  tie_break=ScoreInputs.spread, tie_break_label="spread", one_sided=True),
    ScoreFunction("uncertainty", "spread of the objective's targets", ScoreInputs.spread, Scale.POSITIVE,
                  tie_break=ScoreInputs.closeness, tie_break_label="closeness of the means to the objective"),
    ScoreFunction(RANDOM, "uniform random (the baseline; never weighed by cost)",
                  lambda inputs: inputs.rng.random(inputs.count), Scale.NONE, needs_model=False),
)}


def score_function(name: str) -> ScoreFunction:
    """The registered function ``name``; the error lists the known ones."""
    if name not in SCORE_FUNCTIONS:
        raise ValueError(f"unknown acquisition function {name!r}; known: {', '.join(SCORE_FUNCTIONS)}")
    return SCORE_FUNCTIONS[name]
