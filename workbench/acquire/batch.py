"""Choosing a batch: the best scores, spread out in the model's embedding space.

Picking the top ``k`` scores tends to pick ``k`` near-copies of one crystal. Greedy
k-centre diversity instead walks down a shortlist of the best-scored candidates and takes
each next one by score times its distance to those already chosen (distances scaled by
their median, so the trade-off does not depend on the embedding's units).
"""

import numpy as np

# Candidates considered for a batch of k: the best SHORTLIST_FACTOR * k by score.
SHORTLIST_FACTOR = 5


def select_batch(scores: np.ndarray, size: int, embeddings: np.ndarray | None = None, *,
                 diversity: float = 1.0) -> np.ndarray:
    """Indices of ``size`` candidates, best first.

    Args:
        scores: ``(n,)`` acquisition scores, higher is better.
        size: batch size.
        embeddings: ``(n, F)`` representations (e.g. ``CrystalModel.embed``); without them,
            or with ``diversity=0``, the batch is the top ``size`` scores.
        diversity: exponent on the distance term; larger spreads the batch more.
    """
    order = np.argsort(-scores, kind="stable")
    size = min(size, len(scores))
    if embeddings is None or diversity == 0 or size <= 1:
        return order[:size]
    shortlist = order[: max(size, SHORTLIST_FACTOR * size)]
    points = np.asarray(embeddings, dtype=float)[shortlist]
    # Rank-based weights: scores of different acquisition functions have different scales.
    weights = 1.0 - np.arange(len(shortlist)) / len(shortlist)
    chosen = [0]
    nearest = np.linalg.norm(points - points[0], axis=1)
    scale = np.median(nearest[nearest > 0]) if (nearest > 0).any() else 1.0
    for _ in range(size - 1):
        merit = weights * (nearest / scale) ** diversity
        merit[chosen] = -np.inf
        pick = int(np.argmax(merit))
        chosen.append(pick)
        nearest = np.minimum(nearest, np.linalg.norm(points - points[pick], axis=1))
    return shortlist[chosen]
