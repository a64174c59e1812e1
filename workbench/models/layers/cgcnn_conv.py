"""The gated graph convolution of CGCNN (Xie & Grossman, PRL 120, 145301, 2018)."""

import torch
from torch import nn
from torch_geometric.nn import MessagePassing


class CGCNNConv(MessagePassing):
    r"""CGCNN convolution with batch normalisation and softplus.

    For a target atom :math:`i` with neighbours :math:`j` through edges :math:`(i, j)_k`
    (one per periodic image), with :math:`z = v_i \oplus v_j \oplus u_{(i,j)_k}`:

    .. math::
        v_i' = \operatorname{softplus}\Big(v_i + \operatorname{BN}\Big(\sum_{j,k}
        \sigma(\operatorname{BN}(z W_f + b_f)) \odot
        \operatorname{softplus}(\operatorname{BN}(z W_s + b_s))\Big)\Big)

    Args:
        channels: atom feature size :math:`F`.
        edge_dim: edge feature size :math:`D`.

    Shapes:
        x ``(N, F)``, edge_index ``(2, E)`` rows (source, target), edge_attr ``(E, D)``
        -> ``(N, F)``.
    """

    def __init__(self, channels: int, edge_dim: int):
        super().__init__(aggr="add")
        self.gate_and_core = nn.Linear(2 * channels + edge_dim, 2 * channels)
        self.message_norm = nn.BatchNorm1d(2 * channels)
        self.sum_norm = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        summed = self.propagate(edge_index, x=x, edge_attr=edge_attr)
        return nn.functional.softplus(x + self.sum_norm(summed))

    def message(self, x_i: torch.Tensor, x_j: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        z = torch.cat([x_i, x_j, edge_attr], dim=-1)
        gate, core = self.message_norm(self.gate_and_core(z)).chunk(2, dim=-1)
        return torch.sigmoid(gate) * nn.functional.softplus(core)
