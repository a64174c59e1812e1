"""Gaussian expansion of distances (CGCNN's edge features)."""

import torch
from torch import nn


class GaussianExpansion(nn.Module):
    r"""Expand a distance on a grid of Gaussians.

    .. math::
        e_k(d) = \exp\left(-\frac{(d - \mu_k)^2}{\sigma^2}\right),
        \quad \mu_k = d_{\min} + k\,\Delta

    Args:
        start: first centre :math:`d_{\min}` (Å).
        stop: last centre (Å).
        step: spacing :math:`\Delta` between centres (Å).
        width: :math:`\sigma` (Å); defaults to ``step``.

    Shapes:
        input ``(E,)`` distances; output ``(E, K)`` with ``K = (stop - start) / step + 1``.
    """

    def __init__(self, start: float = 0.0, stop: float = 8.0, step: float = 0.2, width: float | None = None):
        super().__init__()
        count = round((stop - start) / step) + 1
        self.register_buffer("centers", torch.linspace(start, stop, count))
        self.width = width or step

    @property
    def size(self) -> int:
        return self.centers.numel()

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        return torch.exp(-((distance[:, None] - self.centers) ** 2) / self.width**2)
