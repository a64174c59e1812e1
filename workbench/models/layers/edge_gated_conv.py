"""The edge-gated graph convolution (Bresson & Laurent 2017; Dwivedi et al. 2020), in the
form ALIGNN uses (Choudhary & DeCost, npj Comput. Mater. 7, 185, 2021)."""

import torch
from torch import nn
from torch_geometric.utils import scatter

NORMALIZATIONS = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


class EdgeGatedConv(nn.Module):
    r"""Edge-gated graph convolution updating node and edge features.

    For an edge :math:`(j \to i)` from source :math:`j` to target :math:`i`, with node
    features :math:`h` and edge features :math:`e`, the gate is built from both ends and
    the edge itself, and each target averages its neighbours with the sigmoid gates as
    weights:

    .. math::
        \hat e_{ji} &= A h_i + B h_j + C e_{ji}, \qquad \sigma_{ji} = \operatorname{sigmoid}(\hat e_{ji}) \\
        h_i' &= h_i + \operatorname{SiLU}\Big(\operatorname{Norm}\Big(U h_i +
            \frac{\sum_j \sigma_{ji} \odot V h_j}{\sum_j \sigma_{ji} + \epsilon}\Big)\Big) \\
        e_{ji}' &= e_{ji} + \operatorname{SiLU}(\operatorname{Norm}(\hat e_{ji}))

    Every matrix maps :math:`F` to :math:`F` (with a bias). On a line graph the "nodes"
    are the crystal's bonds and the "edges" its bond-angle triplets.

    Args:
        channels: node and edge feature size :math:`F`.
        normalization: ``"batch"`` (as published) or ``"layer"``.
        epsilon: :math:`\epsilon`, keeps the normalised sum finite for a node whose gates
            all vanish (or that has no incoming edge).

    Shapes:
        x ``(N, F)``, edge_index ``(2, E)`` rows (source, target), edge_attr ``(E, F)``
        -> node features ``(N, F)`` and edge features ``(E, F)``.
    """

    def __init__(self, channels: int, normalization: str = "batch", epsilon: float = 1e-6):
        super().__init__()
        self.gate_from_target = nn.Linear(channels, channels)
        self.gate_from_source = nn.Linear(channels, channels)
        self.gate_from_edge = nn.Linear(channels, channels)
        self.self_update = nn.Linear(channels, channels)
        self.neighbour_update = nn.Linear(channels, channels)
        self.node_norm = NORMALIZATIONS[normalization](channels)
        self.edge_norm = NORMALIZATIONS[normalization](channels)
        self.epsilon = epsilon

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor,
                edge_attr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        source, target = edge_index
        # Linear maps on the N nodes, then gathered per edge: cheaper than on E edges.
        gate = self.gate_from_target(x)[target] + self.gate_from_source(x)[source] + self.gate_from_edge(edge_attr)
        weight = torch.sigmoid(gate)
        weighted_sum = scatter(weight * self.neighbour_update(x)[source], target, dim=0,
                               dim_size=x.size(0), reduce="sum")
        weight_sum = scatter(weight, target, dim=0, dim_size=x.size(0), reduce="sum")
        update = self.self_update(x) + weighted_sum / (weight_sum + self.epsilon)
        x = x + nn.functional.silu(self.node_norm(update))
        edge_attr = edge_attr + nn.functional.silu(self.edge_norm(gate))
        return x, edge_attr
