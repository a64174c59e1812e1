"""One ALIGNN layer: an edge-gated convolution on the line graph, then on the crystal graph
(Choudhary & DeCost, npj Comput. Mater. 7, 185, 2021)."""

import torch
from torch import nn

from workbench.models.layers.edge_gated_conv import EdgeGatedConv


class ALIGNNLayer(nn.Module):
    r"""Bond angles update the bonds, then the bonds update the atoms.

    The line graph has a node per bond of the crystal graph (features :math:`e`) and an
    edge per bond-angle triplet (features :math:`t`), joining two bonds that end at the
    same centre atom. With :math:`\mathrm{EGC}` the :class:`EdgeGatedConv`:

    .. math::
        e', t' &= \mathrm{EGC}_{\mathcal{L}}(e, t) \quad \text{(line graph: bonds and angles)} \\
        h', e'' &= \mathrm{EGC}_{\mathcal{G}}(h, e') \quad \text{(crystal graph: atoms and bonds)}

    Args:
        channels: feature size :math:`F` of atoms, bonds and triplets.
        normalization: ``"batch"`` or ``"layer"`` (see :class:`EdgeGatedConv`).

    Shapes:
        x ``(N, F)``, edge_index ``(2, E)``, edge_attr ``(E, F)``, triplet_index ``(2, T)``
        (edge indices, rows (e1, e2)), triplet_attr ``(T, F)``
        -> ``(N, F)``, ``(E, F)``, ``(T, F)``.
    """

    def __init__(self, channels: int, normalization: str = "batch"):
        super().__init__()
        self.line_graph_conv = EdgeGatedConv(channels, normalization)
        self.crystal_graph_conv = EdgeGatedConv(channels, normalization)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor,
                triplet_index: torch.Tensor, triplet_attr: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        edge_attr, triplet_attr = self.line_graph_conv(edge_attr, triplet_index, triplet_attr)
        x, edge_attr = self.crystal_graph_conv(x, edge_index, edge_attr)
        return x, edge_attr, triplet_attr
