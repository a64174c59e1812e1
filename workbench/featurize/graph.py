"""Periodic crystal graphs: k nearest neighbours within a cutoff, keyed by periodic image.

Every edge is one (source, target, image) triple: a neighbour ``source`` in the cell
shifted by the lattice translation ``image`` around a centre atom ``target`` (PyG's
direction: messages flow from source to target). Two edges that join the same atoms
through different images stay two edges, and a 1-atom cell keeps its self-image edges.
"""

from dataclasses import dataclass

import numpy as np
from pymatgen.optimization.neighbors import find_points_in_spheres

from workbench.errors import WorkbenchError
from workbench.featurize.config import GraphConfig
from workbench.structures.crystal import Crystal


@dataclass(frozen=True, eq=False)
class CrystalGraph:
    """A crystal graph as plain arrays.

    Attributes:
        atomic_numbers: ``(N,)`` int64.
        edge_index: ``(2, E)`` int64, rows ``(source, target)``; sorted by target.
        edge_image: ``(E, 3)`` int64 lattice translation applied to the source atom.
        edge_vector: ``(E, 3)`` float64, source (in its image) minus target, in Å.
        edge_distance: ``(E,)`` float64, the length of ``edge_vector``.
        orbital_field: ``(N, 32)`` float32 Voronoi-weighted valence vectors of each atom's
            neighbours, from which its orbital field matrix is rebuilt
            (:mod:`workbench.featurize.orbital_field`); only from a featurizer with
            ``atom_features="ofm"``, else None.
        pretrained_embedding: ``(N, D)`` float32 per-atom features of a frozen pretrained
            model (:mod:`workbench.featurize.pretrained`); only from a featurizer with
            ``atom_features`` naming one (``"sevennet"``, ``"chgnet"``), else None.
    """

    atomic_numbers: np.ndarray
    edge_index: np.ndarray
    edge_image: np.ndarray
    edge_vector: np.ndarray
    edge_distance: np.ndarray
    orbital_field: np.ndarray | None = None
    pretrained_embedding: np.ndarray | None = None

    @property
    def num_nodes(self) -> int:
        return len(self.atomic_numbers)

    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]


SEARCH_NEIGHBORS_FACTOR = 2.0  # first search radius: where about twice k atoms are
SEARCH_GROWTH = 1.5


class GraphError(WorkbenchError, ValueError):
    """A structure that cannot be made into a graph under a config."""


def crystal_graph(crystal: Crystal, atomic_numbers: np.ndarray, config: GraphConfig) -> CrystalGraph:
    """The k-nearest-neighbour graph of ``crystal`` (whose atoms have ``atomic_numbers``)."""
    cartesian = np.ascontiguousarray(crystal.frac_coords @ crystal.lattice)
    lattice = np.ascontiguousarray(crystal.lattice, dtype=float)
    edges = _nearest_within(cartesian, lattice, config.cutoff, config)
    if edges is None and config.max_cutoff > config.cutoff:
        edges = _nearest_within(cartesian, lattice, config.max_cutoff, config)
    if edges is None:
        raise GraphError(
            f"a site has fewer than {config.max_neighbors} neighbours within "
            f"{max(config.cutoff, config.max_cutoff)} Å"
        )
    centers, neighbors, images, distances = edges
    vectors = cartesian[neighbors] + images @ lattice - cartesian[centers]
    return CrystalGraph(
        atomic_numbers=np.asarray(atomic_numbers, dtype=np.int64),
        edge_index=np.stack([neighbors, centers]).astype(np.int64),
        edge_image=np.rint(images).astype(np.int64),
        edge_vector=vectors,
        edge_distance=distances,
    )


def _nearest_within(cartesian: np.ndarray, lattice: np.ndarray, cutoff: float, config: GraphConfig):
    """The k nearest neighbours within ``cutoff``, searched first in the radius where the
    crystal's density puts about 2k atoms, then in wider ones, since a dense framework has
    ten times more atoms within 8 Å than the 12 it keeps. The result is the same as one
    search at ``cutoff``: a smaller radius is accepted only when every site's k-th
    neighbour (and its tie shell) lies inside it."""
    density = len(cartesian) / abs(np.linalg.det(lattice))
    radius = min(cutoff, (3 * SEARCH_NEIGHBORS_FACTOR * config.max_neighbors / (4 * np.pi * density)) ** (1 / 3))
    while True:
        edges = _nearest(cartesian, lattice, radius, config)
        if radius >= cutoff:
            return edges
        if edges is not None and edges[3].max() + config.tie_tolerance < radius:
            return edges
        radius = min(cutoff, radius * SEARCH_GROWTH)


def _nearest(cartesian: np.ndarray, lattice: np.ndarray, radius: float, config: GraphConfig):
    """Edges to the k nearest neighbours of every site within ``radius``, or None if a
    site has fewer."""
    centers, neighbors, images, distances = find_points_in_spheres(
        cartesian, cartesian, float(radius), np.ones(3, dtype=np.int64), lattice
    )
    itself = (centers == neighbors) & ~images.any(axis=1)
    centers, neighbors, images, distances = (
        centers[~itself], neighbors[~itself], images[~itself], distances[~itself]
    )
    order = np.lexsort((distances, centers))  # by centre, nearest first
    centers, neighbors, images, distances = centers[order], neighbors[order], images[order], distances[order]
    counts = np.bincount(centers, minlength=len(cartesian))
    k = config.max_neighbors
    if counts.min() < k:
        return None
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(centers)) - np.repeat(starts, counts)
    keep = rank < k
    if config.keep_ties:
        kth = distances[starts + k - 1]
        keep |= distances <= kth[centers] + config.tie_tolerance
    return centers[keep], neighbors[keep], images[keep], distances[keep]
