"""What every head declares, so that the model never asks which head it holds."""

import torch
from torch import nn


class Head(nn.Module):
    """A map from atom features ``(N, F)`` and their batch vector to outputs in scaled units.

    Class attributes a head sets:
        name: its key in :data:`~workbench.models.heads.HEADS` (``ModelConfig.head``).
        shifts_output: whether outputs are ``raw * scale + shift``; False keeps them at
            ``raw * scale`` (a spectrum stays non-negative).
    """

    name: str
    shifts_output: bool = True

    def embed(self, atom_features: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """The pooled crystal representation ``(B, F)``."""
        raise NotImplementedError

    def constrain(self, values: torch.Tensor, batch: torch.Tensor, data) -> torch.Tensor:
        """Values in target units after any constraint the head imposes (none by default)."""
        return values
