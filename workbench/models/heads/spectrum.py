"""Spectrum head: a non-negative vector per crystal (a DOS on a fixed energy grid)."""

from collections.abc import Sequence

import torch
from torch import nn

from workbench.models.dos_autoencoder import AUTOENCODER_HIDDEN, DOSAutoencoder, spectrum_decoder
from workbench.models.heads.base import Head
from workbench.models.heads.scalar import POOLING, mlp


class SpectrumHead(Head):
    r"""``bins`` non-negative values per crystal.

    .. math:: y = \operatorname{softplus}(\mathrm{MLP}(\mathrm{mean}_i\, v_i))

    For the electronic DOS of Kaundinya et al. (JOM 2022): 300 bins on -5..10 eV
    relative to the Fermi level, normalised by the number of valence electrons.

    With ``latent`` (their AE-ALIGNN), the MLP predicts a spectrum's code and the frozen
    decoder of a :class:`~workbench.models.dos_autoencoder.DOSAutoencoder` reconstructs
    the bins, in [0, 1] (the model's target scale is then the autoencoder's):

    .. math:: y = \sigma(D(\mathrm{MLP}(\mathrm{mean}_i\, v_i)))

    The decoder is trained beforehand on the training spectra
    (:func:`~workbench.models.dos_autoencoder.fit_dos_autoencoder`, which
    ``train_ensemble`` runs) and copied in with :meth:`use_autoencoder`; its parameters
    never learn here.

    Args:
        in_channels: atom feature size.
        bins: spectrum length.
        pooling: ``"mean"`` or ``"sum"``.
        hidden, layers: the MLP's hidden width and hidden layers.
        latent: code size of the autoencoder (12 in the paper), or None for bins directly.
        autoencoder_hidden: the autoencoder's encoder widths (its decoder's, reversed).

    Shapes:
        atom features ``(N, F)``, batch ``(N,)`` -> ``(B, bins)``.
    """

    name = "spectrum"
    shifts_output = False  # scaled only: a DOS stays non-negative

    def __init__(self, in_channels: int, bins: int, pooling: str = "mean", hidden: int = 256, layers: int = 2,
                 latent: int | None = None, autoencoder_hidden: Sequence[int] = AUTOENCODER_HIDDEN):
        super().__init__()
        self.pool = POOLING[pooling].function
        self.bins, self.latent, self.autoencoder_hidden = bins, latent, tuple(autoencoder_hidden)
        self.mlp = mlp(in_channels, hidden, layers, latent or bins)
        self.decoder = spectrum_decoder(latent, autoencoder_hidden, bins).requires_grad_(False) if latent else None

    def use_autoencoder(self, autoencoder: DOSAutoencoder) -> None:
        """Copy in the decoder of a trained autoencoder."""
        if self.decoder is None:
            raise ValueError("this spectrum head predicts bins directly: it has no decoder (give it a latent size)")
        self.decoder.load_state_dict(autoencoder.decoder.state_dict())

    def embed(self, atom_features: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        return self.pool(atom_features, batch)

    def forward(self, atom_features: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        out = self.mlp(self.embed(atom_features, batch))
        return nn.functional.softplus(out) if self.decoder is None else self.decoder(out)
