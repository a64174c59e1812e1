"""The neighbour-MLP baseline of Karaguesian et al. (ML4PS 2021): no message passing."""

from dataclasses import dataclass

import torch
from torch import nn

from workbench.models.heads.scalar import mlp
from workbench.models.layers import GaussianExpansion


@dataclass(frozen=True)
class NeighbourMLPConfig:
    atom_feature_size: int = 91
    neighbors: int = 12
    hidden: int = 64
    layers: int = 2
    gaussian_stop: float = 8.0
    gaussian_step: float = 0.2


class NeighbourMLP(nn.Module):
    r"""Each atom on its own: its features, and the features and expanded distances of its
    ``neighbors`` nearest neighbours in order of distance, through one MLP.

    .. math:: v_i = \mathrm{MLP}\big(x_i \oplus x_{j_1} \oplus e(d_{ij_1}) \oplus \dots
              \oplus x_{j_k} \oplus e(d_{ij_k})\big)

    Atoms with fewer than ``neighbors`` edges are padded with zeros; edges past the k-th
    (kept ties) are dropped.

    Shapes:
        ``data.x`` ``(N, F)``, ``data.edge_index`` ``(2, E)`` sorted by target, then by
        distance, ``data.edge_distance`` ``(E,)`` -> atom features ``(N, hidden)``.
    """

    def __init__(self, config: NeighbourMLPConfig):
        super().__init__()
        self.config = config
        self.expansion = GaussianExpansion(0.0, config.gaussian_stop, config.gaussian_step)
        width = config.atom_feature_size + config.neighbors * (config.atom_feature_size + self.expansion.size)
        self.mlp = mlp(width, config.hidden, config.layers, config.hidden)

    @property
    def out_channels(self) -> int:
        return self.config.hidden

    def forward(self, data) -> torch.Tensor:
        source, target = data.edge_index
        per_edge = torch.cat([data.x[source], self.expansion(data.edge_distance)], dim=-1)
        degree = torch.bincount(target, minlength=data.num_nodes)
        first = torch.cumsum(degree, 0) - degree
        rank = torch.arange(len(target), device=target.device) - first[target]
        keep = rank < self.config.neighbors
        slots = per_edge.new_zeros(data.num_nodes, self.config.neighbors, per_edge.shape[1])
        slots[target[keep], rank[keep]] = per_edge[keep]
        return nn.functional.softplus(self.mlp(torch.cat([data.x, slots.flatten(1)], dim=-1)))
