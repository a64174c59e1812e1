"""Scalar head: pool atom features, then a small MLP to one number per crystal."""

import torch
from torch import nn
from torch_geometric.nn import global_add_pool, global_mean_pool

from workbench.models.heads.base import Head

POOLING = {"mean": global_mean_pool, "sum": global_add_pool}


def mlp(in_channels: int, hidden: int, layers: int, out_channels: int) -> nn.Sequential:
    """``layers`` hidden Linear+softplus blocks, then a linear output."""
    blocks: list[nn.Module] = []
    for _ in range(layers):
        blocks += [nn.Linear(in_channels, hidden), nn.Softplus()]
        in_channels = hidden
    blocks.append(nn.Linear(in_channels, out_channels))
    return nn.Sequential(*blocks)


class ScalarHead(Head):
    r"""One scalar per crystal.

    .. math:: y = \mathrm{MLP}(\mathrm{pool}_i\, v_i)

    Mean pooling suits intensive targets (a band gap, energy per atom), sum pooling
    extensive ones (energy per cell).

    Args:
        in_channels: atom feature size :math:`F`.
        pooling: ``"mean"`` or ``"sum"``.

    Shapes:
        atom features ``(N, F)``, batch ``(N,)`` -> ``(B,)`` in scaled units.
    """

    name = "scalar"

    def __init__(self, in_channels: int, pooling: str = "mean", hidden: int = 128, layers: int = 1):
        super().__init__()
        self.pool = POOLING[pooling]
        self.mlp = mlp(in_channels, hidden, layers, 1)

    def embed(self, atom_features: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        return self.pool(atom_features, batch)

    def forward(self, atom_features: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embed(atom_features, batch)).squeeze(-1)
