"""One batch, planned: the pure function both a campaign round and a replay call.

:func:`plan_batch` scores every candidate with a registered function
(:data:`~workbench.acquire.scores.SCORE_FUNCTIONS`), weighs the scores by expected cost
when asked, orders the candidates (equal scores by the function's tie-break, then at
random, never by their position in the list) and takes the batch: the best ``size``, or
with embeddings a batch spread out over a shortlist of the best. The plan says, for each
chosen candidate, why, and whether the scores could tell the batch from the rest.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from workbench.acquire.batch import diverse_batch, shortlist_size
from workbench.acquire.objective import Objective
from workbench.acquire.scores import Scale, ScoreFunction, ScoreInputs, score_function
from workbench.errors import InputError

# (n, F) embeddings of every candidate, or a function of shortlist positions (m,) that
# returns their (m, F) embeddings, so that only the shortlist is ever embedded.
Embeddings = np.ndarray | Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class AcquisitionSettings:
    """How a batch is chosen; the campaign config's ``acquisition`` section and its
    defaults. ``function``: a key of ``SCORE_FUNCTIONS``; ``batch``: candidates per round;
    ``diversity``: exponent of the embedding distance in diverse batches (0: the top
    scores); ``kappa``: UCB's weight on the spread; ``cost_aware``: weigh scores by the
    expected DFT cost."""

    function: str = "probability"
    batch: int = 6
    # 0, the top scores: on the perovskite replay (benchmarks/replay.md) diverse batches
    # (1) found a median of 4 gap hits in 200 where the top scores found 7.
    diversity: float = 0.0
    kappa: float = 2.0
    cost_aware: bool = False


@dataclass(frozen=True)
class BatchPlan:
    """Per candidate (in the order given): ``scores`` as ranked (per expected second when
    cost-aware) and ``ranks`` (1 = best). ``chosen``: positions of the batch in batch
    order, each with its ``reasons`` entry. ``tied``: candidates sharing a score with both a
    chosen and a left-out candidate (0 when the scores alone decided the batch), explained
    in ``note``."""

    function: str
    scores: np.ndarray
    ranks: np.ndarray
    chosen: np.ndarray
    reasons: tuple[str, ...]
    tied: int = 0
    note: str | None = None

    @property
    def order(self) -> np.ndarray:
        """Positions, best first."""
        return np.argsort(self.ranks, kind="stable")

    def summary(self) -> dict:
        """The plan as the ledger keeps it beside the chosen rows (JSON-ready)."""
        return {"function": self.function, "candidates": len(self.scores), "chosen": len(self.chosen),
                "tied": self.tied, "note": self.note, "reasons": list(self.reasons)}


def _count(predictions: dict, count: int | None) -> int:
    if count is not None:
        return count
    if not predictions:
        raise ValueError("plan_batch needs predictions or a count of candidates")
    return len(next(iter(predictions.values()))[0])


def _check(name: str, values: np.ndarray, count: int) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries for {count} candidates")
    return values


def _last_if_nan(values: np.ndarray) -> np.ndarray:
    """NaN (no prediction) as ``-inf``, which ranks last; unlike ``np.nan_to_num``, an
    infinite value stays infinite rather than becoming a float that costs can swamp."""
    return np.where(np.isnan(values), -np.inf, values)


def plan_batch(predictions: dict[str, tuple[np.ndarray, np.ndarray]], objective: Objective,
               settings: AcquisitionSettings, *, size: int, count: int | None = None,
               costs: np.ndarray | None = None, embeddings: Embeddings | None = None,
               best_labeled: float | None = None, rng: np.random.Generator | None = None) -> BatchPlan:
    """Score, order and choose a batch of ``size`` among the candidates.

    Args:
        predictions: per objective target, the ensemble's ``(mean, std)`` arrays over the
            candidates (may be empty for ``random``, with ``count``).
        objective: what the campaign looks for.
        settings: the acquisition policy.
        size: how many to choose (at most the number of candidates).
        count: number of candidates, when ``predictions`` is empty.
        costs: expected seconds per candidate; required when ``settings.cost_aware``.
        embeddings: for a diverse batch (``settings.diversity > 0``); without them the
            batch is the top ``size``.
        best_labeled: the best label so far of the first target, for functions that
            improve on it (``ei``).
        rng: draws ``random`` scores and the order among exact ties.
    """
    function = score_function(settings.function)
    count = _count(predictions, count)
    first = objective.constraints[0]
    try:
        function.check_objective(first)
    except ValueError as error:
        raise InputError(str(error), field="acquisition.function") from None
    if function.needs_best_label and best_labeled is None:
        raise ValueError(f"acquisition {function.name!r} needs the best label so far of {first.target!r}")
    missing = [target for target in objective.targets if target not in predictions]
    if function.needs_model and missing:
        raise ValueError(f"acquisition {function.name!r} needs predictions of {', '.join(missing)}")
    rng = rng or np.random.default_rng()
    inputs = ScoreInputs(count, predictions, objective, settings.kappa, best_labeled, rng)
    scores = _last_if_nan(_check("scores", function.score(inputs), count))
    weighed = settings.cost_aware and function.scale is not Scale.NONE
    if settings.cost_aware:
        if costs is None:
            raise ValueError("cost-aware acquisition needs the expected cost of every candidate")
        scores = function.scale.per_cost(scores, _check("costs", costs, count))
    tie_break = (np.zeros(count) if function.tie_break is None
                 else _last_if_nan(_check("tie-break", function.tie_break(inputs), count)))
    # lexsort: the last key first. Exact ties in score and tie-break fall to chance.
    order = np.lexsort((rng.random(count), -tie_break, -scores))
    ranks = np.empty(count, int)
    ranks[order] = np.arange(1, count + 1)
    size = min(size, count)
    if settings.diversity > 0 and embeddings is not None and function.needs_model and size > 1:
        shortlist = order[:shortlist_size(size, count)]
        points = embeddings(shortlist) if callable(embeddings) else np.asarray(embeddings)[shortlist]
        chosen = shortlist[diverse_batch(points, size, diversity=settings.diversity)]
    else:
        chosen = order[:size]
    return _explained(function, weighed, scores, ranks, chosen, size)


def _explained(function: ScoreFunction, weighed: bool, scores: np.ndarray, ranks: np.ndarray,
               chosen: np.ndarray, size: int) -> BatchPlan:
    """The plan with a reason per chosen candidate and a note on ties at the batch's cut
    (neither applies to a function that reads no model: its order is chance)."""
    count = len(scores)
    if not function.needs_model:
        return BatchPlan(function.name, scores, ranks, chosen, tuple(f"{function.name} pick" for _ in chosen))
    label = f"{function.name}{' per expected second' if weighed else ''}"
    values = np.unique(scores)
    left_out = np.ones(count, bool)
    left_out[chosen] = False
    at_cut = np.intersect1d(scores[chosen], scores[left_out])
    tied = int(np.isin(scores, at_cut).sum())
    decided_by = f"{function.tie_break_label}, then at random" if function.tie_break_label else "chance"
    note = None
    if len(values) == 1 and count > 1:
        note = f"all {count} candidates score {values[0]:g}: the scores cannot tell them apart; ordered by {decided_by}"
    elif tied:
        note = (f"{tied} candidates share a score with the batch's cut ({', '.join(f'{v:g}' for v in at_cut)}): "
                f"the scores cannot tell them apart; ordered by {decided_by}")
    reasons = []
    for position in chosen:
        rank = int(ranks[position])
        reason = (f"diversity pick: rank {rank} of {count} by {label}, far from the batch so far in the model's "
                  "embedding" if rank > size else f"rank {rank} of {count} by {label}")
        others = int(np.sum(scores == scores[position])) - 1
        if others:
            reason += f", tied with {others} other{'s' if others > 1 else ''}"
        reasons.append(reason)
    return BatchPlan(function.name, scores, ranks, chosen, tuple(reasons), tied, note)
