"""Spectrum head: a non-negative vector per crystal (a DOS on a fixed energy grid)."""

import torch
from torch import nn

from workbench.models.heads.scalar import POOLING, mlp


class SpectrumHead(nn.Module):
    r"""``bins`` non-negative values per crystal.

    .. math:: y = \operatorname{softplus}(\mathrm{MLP}(\mathrm{mean}_i\, v_i))

    For the electronic DOS of Kaundinya et al. (JOM 2022): 300 bins on -5..10 eV
    relative to the Fermi level, normalised by the number of valence electrons.

    Shapes:
        atom features ``(N, F)``, batch ``(N,)`` -> ``(B, bins)``.
    """

    def __init__(self, in_channels: int, bins: int, pooling: str = "mean", hidden: int = 256, layers: int = 2):
        super().__init__()
        self.pool = POOLING[pooling]
        self.mlp = mlp(in_channels, hidden, layers, bins)

    def embed(self, atom_features: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        return self.pool(atom_features, batch)

    def forward(self, atom_features: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.mlp(self.embed(atom_features, batch)))
