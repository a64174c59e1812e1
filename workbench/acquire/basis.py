"""What a round ranks by: the model's predictions, or those of its prior alone.

A model trained with a prior (``model.prior``) learns the residual of its target against
the prior's least-squares line. From a few tens of labels that residual model can be
worse than the line by itself; until it beats the line on held-out labels, acquisition
leans on the prior: the line applied to each candidate's stored prior value, with the
line's held-out RMSE as every candidate's spread. Pure functions of plain data, so that a
replay can make the same choice the campaign made.
"""

import enum
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

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


def prior_predictions(prior_values: np.ndarray, slope: float, intercept: float,
                      rmse: float) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` of the prior's line over the candidates: ``slope * value +
    intercept``, and its held-out ``rmse`` as everyone's spread (NaN where a candidate has
    no prior value: it scores last)."""
    mean = slope * np.asarray(prior_values, dtype=float) + intercept
    return mean, np.full_like(mean, rmse)
