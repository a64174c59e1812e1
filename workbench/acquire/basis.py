"""What a round ranks by: the model's predictions, or those of its prior alone.

A model trained with a prior (``model.prior``) learns the residual of its target against
the prior's fit (:class:`~workbench.models.prior.PriorFit`: a line in the prior plus
element weights). From a few tens of labels that residual model can be worse than the fit
by itself; until it beats the fit on held-out labels, acquisition leans on the prior: the
fit applied to each candidate's stored prior value and composition, with the fit's
held-out RMSE as every candidate's spread. Pure functions of plain data, so that a
replay can make the same choice the campaign made.
"""

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the fit only passes through: no torch to import here
    from workbench.models.prior import PriorFit

# The held-out metrics the training run records for a model with a prior
# (workbench.train.pipeline.prior_metrics) and for the model itself.
MODEL_MAE, PRIOR_MAE, PRIOR_RMSE = "mae", "prior.mae", "prior.rmse"


class Basis(enum.StrEnum):
    MODEL = "model"
    PRIOR = "prior"


@dataclass(frozen=True)
class RankingBasis:
    """Which predictions a round ranks by, and why (one line for the round's summary)."""

    basis: Basis
    why: str


def ranking_basis(metrics: Mapping[str, float | None]) -> RankingBasis:
    """The prior while the model's held-out MAE is not below its prior line's (both on the
    same test split); the model when it is, or when there is nothing to compare (no prior,
    or no held-out labels)."""
    model, prior = metrics.get(MODEL_MAE), metrics.get(PRIOR_MAE)
    if prior is None or metrics.get(PRIOR_RMSE) is None:
        return RankingBasis(Basis.MODEL, "no held-out error of a prior to compare with")
    if model is None:
        return RankingBasis(Basis.MODEL, "no held-out error of the model to compare with")
    if model < prior:
        return RankingBasis(Basis.MODEL, f"the model's test MAE {model:.3g} beats its prior's alone ({prior:.3g})")
    return RankingBasis(Basis.PRIOR, f"the model's test MAE {model:.3g} does not beat its prior's alone "
                                     f"({prior:.3g}): ranked by the prior")


def prior_predictions(fit: "PriorFit", prior_values: np.ndarray, compositions: Sequence[Mapping[str, float]],
                      rmse: float) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` of the prior's fit over the candidates (their prior values and
    compositions), and its held-out ``rmse`` as everyone's spread (NaN where a candidate has
    no prior value: it scores last)."""
    mean = fit(prior_values, compositions)
    return mean, np.full_like(mean, rmse)
