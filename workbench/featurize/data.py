"""Crystal graphs as PyTorch Geometric data, with batching declared on the class."""

import numpy as np
import torch
from torch_geometric.data import Data

from workbench.featurize.graph import CrystalGraph
from workbench.featurize.orbital_field import orbital_field_descriptors
from workbench.featurize.triplets import bond_angle_triplets


class CrystalGraphData(Data):
    """One crystal graph.

    Attributes:
        x: ``(N, F)`` atom features (F: the featurizer's ``atom_feature_size``).
        atomic_numbers: ``(N,)``.
        edge_index: ``(2, E)`` rows (source, target); shifted by the number of nodes when
            batched (PyG's rule for ``*index*``).
        edge_image: ``(E, 3)`` lattice translation of each edge's source atom; the reverse
            of edge (j, i, s) is (i, j, -s).
        edge_vector: ``(E, 3)`` bond vectors, source minus target, Å.
        edge_distance: ``(E,)`` bond lengths, Å.
        triplet_index: ``(2, T)`` pairs of edges sharing a target atom (optional); these
            point at edges, so batching shifts them by the number of edges.
        triplet_cosine: ``(T,)`` cosine of the bond angle of each triplet.
    """

    def __inc__(self, key, value, *args, **kwargs):
        if key == "triplet_index":
            return self.num_edges
        return super().__inc__(key, value, *args, **kwargs)


def graph_to_data(graph: CrystalGraph, feature_table: np.ndarray, *, triplets: bool = False) -> CrystalGraphData:
    """A :class:`CrystalGraphData` with atom features looked up in ``feature_table`` (row Z),
    after each atom's orbital field matrix when the graph carries its orbital field, or
    after its pretrained embedding when the graph carries one."""
    features = feature_table[graph.atomic_numbers]
    if graph.orbital_field is not None:
        features = np.concatenate(
            [orbital_field_descriptors(graph.atomic_numbers, graph.orbital_field), features], axis=1)
    if graph.pretrained_embedding is not None:
        features = np.concatenate([graph.pretrained_embedding.astype(features.dtype), features], axis=1)
    data = CrystalGraphData(
        x=torch.from_numpy(features),
        atomic_numbers=torch.from_numpy(graph.atomic_numbers),
        edge_index=torch.from_numpy(graph.edge_index),
        edge_image=torch.from_numpy(graph.edge_image),
        edge_vector=torch.from_numpy(graph.edge_vector).float(),
        edge_distance=torch.from_numpy(graph.edge_distance).float(),
        num_nodes=graph.num_nodes,
    )
    if triplets:
        triplet_index, cosines = bond_angle_triplets(graph.edge_index, graph.edge_vector)
        data.triplet_index = torch.from_numpy(triplet_index)
        data.triplet_cosine = torch.from_numpy(cosines).float()
    return data
