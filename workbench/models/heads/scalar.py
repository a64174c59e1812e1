"""Scalar head: pool atom features, then a small MLP to one number per crystal."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch_geometric.nn import global_add_pool, global_mean_pool

from workbench.models.heads.base import Head


@dataclass(frozen=True)
class Pooling:
    """How atom features become one vector per crystal, and what that says of the target:
    ``extensive`` targets grow with the cell (energy per cell), the others do not (a band
    gap, energy per atom)."""

    function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    extensive: bool


POOLING = {"mean": Pooling(global_mean_pool, extensive=False), "sum": Pooling(global_add_pool, extensive=True)}


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
        self.pool = POOLING[pooling].function
        self.mlp = mlp(in_channels, hidden, layers, 1)

    def embed(self, atom_features: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        return self.pool(atom_features, batch)

    def forward(self, atom_features: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embed(atom_features, batch)).squeeze(-1)
