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
    unit = edge_vector / np.linalg.norm(edge_vector, axis=1, keepdims=True)
    if len(degree) and (degree == degree[0]).all():
        return _uniform_triplets(len(degree), int(degree[0]), unit)
    starts = np.cumsum(degree) - degree
    per_edge = degree[targets]  # every edge pairs with each edge of its centre
    first = np.repeat(np.arange(len(targets)), per_edge)
    position = np.arange(len(first)) - np.repeat(np.cumsum(per_edge) - per_edge, per_edge)
    second = starts[targets[first]] + position
    distinct = first != second
    first, second = first[distinct], second[distinct]
    cosines = np.einsum("ij,ij->i", unit[first], unit[second]).clip(-1.0, 1.0)
    return np.stack([first, second]).astype(np.int64), cosines


def _uniform_triplets(atoms: int, k: int, unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every atom has k edges (no kept ties): one pattern of k(k-1) pairs per atom, and the
    cosines are the off-diagonal entries of each atom's k x k Gram matrix."""
    a, b = np.nonzero(~np.eye(k, dtype=bool))  # row-major: the order of the general path
    offsets = (np.arange(atoms) * k)[:, None]
    gram = np.matmul(unit.reshape(atoms, k, 3), unit.reshape(atoms, k, 3).transpose(0, 2, 1))
    cosines = gram[:, a, b].reshape(-1).clip(-1.0, 1.0)
    return np.stack([(offsets + a).reshape(-1), (offsets + b).reshape(-1)]).astype(np.int64), cosines
