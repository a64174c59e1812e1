r"""An autoencoder of spectra (AE-ALIGNN of Kaundinya, Choudhary & Kalidindi, JOM 74, 1395,
2022): a model predicts a spectrum's latent code and the autoencoder's decoder, trained
first and then frozen, turns the code into the bins.

Spectra are divided by ``scale``, the largest training value, so that they lie in
[0, 1] as the paper's normalised DOS does and a sigmoid can reconstruct them:

.. math::
    z = E(y / s), \qquad \hat y = s\, \sigma(D(z))

:math:`E` is a stack of Linear + ReLU layers of decreasing width (``hidden``) and a
linear map to the ``latent`` code; :math:`D` mirrors it, with ReLU between layers and a
sigmoid at the end. The paper's encoder also puts a ReLU on the code; here the code is
left linear, so that no latent unit can die and the model's predicted codes may take
any sign. A held-out spectrum above the training maximum is clipped at it.
"""

from collections.abc import Sequence

import torch
from torch import nn

from workbench.models.early_stopping import EarlyStopping

# Decreasing widths, as in the paper's Fig. 3 (the text does not give its sizes).
AUTOENCODER_HIDDEN = (128, 64)


def spectrum_encoder(bins: int, hidden: Sequence[int], latent: int) -> nn.Sequential:
    """``bins`` -> ReLU layers of widths ``hidden`` -> linear ``latent`` code."""
    layers: list[nn.Module] = []
    width = bins
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, latent))
    return nn.Sequential(*layers)


def spectrum_decoder(latent: int, hidden: Sequence[int], bins: int) -> nn.Sequential:
    """The encoder's mirror: ``latent`` -> ReLU layers of widths ``hidden`` reversed ->
    sigmoid over ``bins``, values in [0, 1]."""
    layers: list[nn.Module] = []
    width = latent
    for size in reversed(hidden):
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers += [nn.Linear(width, bins), nn.Sigmoid()]
    return nn.Sequential(*layers)


class DOSAutoencoder(nn.Module):
    """Encoder and decoder of spectra, with the scale that maps them into [0, 1].

    Args:
        bins: spectrum length.
        latent: code size (12 in the paper, where 8 was worse and 16 or 20 little better).
        hidden: encoder widths, decreasing; the decoder uses them reversed.

    Shapes:
        spectra ``(B, bins)`` in target units -> codes ``(B, latent)``; codes ->
        normalised spectra ``(B, bins)`` in [0, 1]; ``forward``: spectra -> spectra.
    """

    def __init__(self, bins: int, latent: int = 12, hidden: Sequence[int] = AUTOENCODER_HIDDEN):
        super().__init__()
        self.encoder = spectrum_encoder(bins, hidden, latent)
        self.decoder = spectrum_decoder(latent, hidden, bins)
        self.register_buffer("scale", torch.tensor(1.0))

    def encode(self, spectra: torch.Tensor) -> torch.Tensor:
        return self.encoder(spectra / self.scale)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(codes)

    def forward(self, spectra: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(spectra)) * self.scale


def fit_dos_autoencoder(train: torch.Tensor, validation: torch.Tensor | None, *, latent: int,
                        hidden: Sequence[int], epochs: int, patience: int, batch_size: int,
                        learning_rate: float, seed: int,
                        device: torch.device) -> tuple[DOSAutoencoder, list[float]]:
    """Train an autoencoder on spectra ``(n, bins)`` (target units) to reconstruct them:
    mean squared error on the normalised spectra, AdamW, early stopping on ``validation``
    (on the training loss without one), the best epoch's weights kept.

    Returns the autoencoder (on the CPU, in eval mode) and its loss per epoch on
    ``validation`` (or on the training spectra).
    """
    torch.manual_seed(seed)
    autoencoder = DOSAutoencoder(train.shape[1], latent, hidden)
    autoencoder.scale.fill_(float(train.max()) if train.max() > 0 else 1.0)
    autoencoder.to(device)
    train, watched = train.to(device), (validation if validation is not None and len(validation) else train).to(device)
    optimizer = torch.optim.AdamW(autoencoder.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    stopping = EarlyStopping(autoencoder, patience)
    for epoch in range(epochs):
        autoencoder.train()
        for rows in torch.randperm(len(train), generator=generator).split(batch_size):
            batch = train[rows.to(device)]
            optimizer.zero_grad()
            loss = _normalised_error(autoencoder, batch)
            loss.backward()
            optimizer.step()
        autoencoder.eval()
        with torch.no_grad():
            losses.append(_normalised_error(autoencoder, watched).item())
        if stopping.should_stop(epoch, losses[-1]):
            break
    stopping.restore()
    return autoencoder.cpu().eval(), losses


def _normalised_error(autoencoder: DOSAutoencoder, spectra: torch.Tensor) -> torch.Tensor:
    """Mean squared reconstruction error of spectra scaled into [0, 1]."""
    target = spectra / autoencoder.scale
    return torch.mean((autoencoder.decode(autoencoder.encode(spectra)) - target) ** 2)
