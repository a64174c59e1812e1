"""Choosing a batch: the best scores, spread out in the model's embedding space.

Picking the top ``k`` scores tends to pick ``k`` near-copies of one crystal. Greedy
k-centre diversity instead walks down a shortlist of the best-ranked candidates and takes
each next one by its rank weight times its distance to those already chosen (distances
scaled by their median, so the trade-off does not depend on the embedding's units).
"""

import numpy as np

# Candidates considered for a batch of k: the best SHORTLIST_FACTOR * k by rank.
SHORTLIST_FACTOR = 5


def shortlist_size(size: int, count: int) -> int:
    """How many of ``count`` ranked candidates a diverse batch of ``size`` looks at."""
    return min(count, SHORTLIST_FACTOR * size)


def diverse_batch(points: np.ndarray, size: int, *, diversity: float = 1.0) -> np.ndarray:
    """Positions in a shortlist of ``size`` picks, the first one first.

    Args:
        points: ``(m, F)`` representations (e.g. ``CrystalModel.embed``) of the shortlist,
            best-ranked first.
        size: batch size (at most ``m``).
        diversity: exponent on the distance term; larger spreads the batch more, 0 takes
            the shortlist's head.
    """
    points = np.asarray(points, dtype=float)
    size = min(size, len(points))
    if diversity == 0 or size <= 1:
        return np.arange(size)
    # Rank-based weights: scores of different acquisition functions have different scales.
    weights = 1.0 - np.arange(len(points)) / len(points)
    chosen = [0]
    nearest = np.linalg.norm(points - points[0], axis=1)
    scale = np.median(nearest[nearest > 0]) if (nearest > 0).any() else 1.0
    for _ in range(size - 1):
        merit = weights * (nearest / scale) ** diversity
        merit[chosen] = -np.inf
        pick = int(np.argmax(merit))
        chosen.append(pick)
        nearest = np.minimum(nearest, np.linalg.norm(points - points[pick], axis=1))
    return np.array(chosen)
