"""Per-site head: one value (or vector) per atom, optionally summing to a total per crystal."""

import torch
from torch_geometric.utils import scatter

from workbench.models.heads.base import Head
from workbench.models.heads.scalar import mlp


class PerSiteHead(Head):
    r"""A value per atom from its own features (Karaguesian et al., ML4PS 2021).

    .. math:: y_i = \mathrm{MLP}(v_i)

    With ``conserve_total`` (partial charges), each crystal's values are shifted equally
    so that they sum to the crystal's total (``total``, default 0):

    .. math:: y_i \leftarrow y_i - \frac{1}{n_c}\Big(\sum_{j \in c} y_j - Q_c\Big)

    Shapes:
        atom features ``(N, F)``, batch ``(N,)``, total ``(B,)`` or None
        -> ``(N,)`` (``site_size`` 1) or ``(N, site_size)``.
    """

    name = "per_site"

    def __init__(self, in_channels: int, site_size: int = 1, conserve_total: bool = False,
                 hidden: int = 64, layers: int = 2):
        super().__init__()
        if conserve_total and site_size != 1:
            raise ValueError("a conserved total needs one value per site")
        self.site_size = site_size
        self.conserve_total = conserve_total
        self.mlp = mlp(in_channels, hidden, layers, site_size)

    def embed(self, atom_features: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        return scatter(atom_features, batch, dim=0, reduce="mean")

    def forward(self, atom_features: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        values = self.mlp(atom_features)
        return values.squeeze(-1) if self.site_size == 1 else values

    def constrain(self, values: torch.Tensor, batch: torch.Tensor, data) -> torch.Tensor:
        """Apply the per-crystal sum constraint to values in target units (the total is
        ``data.total`` where the graphs carry one)."""
        if not self.conserve_total:
            return values
        total = getattr(data, "total", None)
        sums = scatter(values, batch, dim=0, reduce="sum")
        counts = scatter(torch.ones_like(values), batch, dim=0, reduce="sum")
        target = torch.zeros_like(sums) if total is None else total.to(values.dtype)
        return values - ((sums - target) / counts)[batch]
