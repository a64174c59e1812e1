"""The CGCNN backbone: atom embedding and R gated convolutions."""

from dataclasses import dataclass

import torch
from torch import nn

from workbench.models.layers import CGCNNConv, GaussianExpansion


@dataclass(frozen=True)
class CGCNNConfig:
    """Sizes as published: 64 atom features, 3 convolutions, Gaussians every 0.2 Å to 8 Å."""

    atom_feature_size: int = 91
    hidden: int = 64
    layers: int = 3
    gaussian_stop: float = 8.0
    gaussian_step: float = 0.2


class CGCNN(nn.Module):
    r"""Atom embedding followed by ``layers`` :class:`CGCNNConv`.

    .. math:: v^{(0)}_i = W x_i + b, \qquad v^{(t+1)} = \mathrm{CGCNNConv}(v^{(t)}, e)

    Shapes:
        ``data.x`` ``(N, atom_feature_size)``, ``data.edge_index`` ``(2, E)``,
        ``data.edge_distance`` ``(E,)`` -> atom features ``(N, hidden)``.
    """

    def __init__(self, config: CGCNNConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Linear(config.atom_feature_size, config.hidden)
        self.expansion = GaussianExpansion(0.0, config.gaussian_stop, config.gaussian_step)
        self.convolutions = nn.ModuleList(
            CGCNNConv(config.hidden, self.expansion.size) for _ in range(config.layers)
        )

    @property
    def out_channels(self) -> int:
        return self.config.hidden

    def forward(self, data) -> torch.Tensor:
        x = self.embedding(data.x)
        edge_attr = self.expansion(data.edge_distance)
        for convolution in self.convolutions:
            x = convolution(x, data.edge_index, edge_attr)
        return x
