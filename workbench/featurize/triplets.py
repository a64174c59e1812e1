"""Bond-angle triplets (the line graph of a crystal graph), built on demand.

A triplet is an ordered pair of distinct edges ``(e1, e2)`` that end at the same centre
atom ``i``: ``e1 = j -> i`` and ``e2 = k -> i``. Its angle is the one at ``i`` between the
bond vectors of the two edges. Edges are pairs even when ``j`` and ``k`` are one atom in
two periodic images. With 12 neighbours that is 132 triplets per atom: cheap to build,
too many to store.
"""

import numpy as np


def bond_angle_triplets(edge_index: np.ndarray, edge_vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Triplets of a graph whose edges are sorted by target.

    Args:
        edge_index: ``(2, E)`` rows ``(source, target)``, sorted by target.
        edge_vector: ``(E, 3)`` bond vectors (source minus target).

    Returns:
        ``triplet_index`` ``(2, T)`` int64, rows ``(e1, e2)`` (edge indices), and
        ``cosines`` ``(T,)``, the cosine of the angle between the two bonds.
    """
    targets = edge_index[1]
    if len(targets) and np.any(np.diff(targets) < 0):
        raise ValueError("edges must be sorted by target")
    degree = np.bincount(targets, minlength=int(targets.max()) + 1 if len(targets) else 0)
    starts = np.cumsum(degree) - degree
    per_edge = degree[targets]  # every edge pairs with each edge of its centre
    first = np.repeat(np.arange(len(targets)), per_edge)
    position = np.arange(len(first)) - np.repeat(np.cumsum(per_edge) - per_edge, per_edge)
    second = starts[targets[first]] + position
    distinct = first != second
    first, second = first[distinct], second[distinct]
    unit = edge_vector / np.linalg.norm(edge_vector, axis=1, keepdims=True)
    cosines = np.einsum("ij,ij->i", unit[first], unit[second]).clip(-1.0, 1.0)
    return np.stack([first, second]).astype(np.int64), cosines
