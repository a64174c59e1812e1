"""One atom / directed-bond message passing layer of OCrystalNet (Yang, seed paper 003),
after the communicative message passing of CMPNN (Song et al., IJCAI 2020)."""

import torch
from torch import nn
from torch_geometric.utils import scatter


def incoming_message(edge_attr: torch.Tensor, target: torch.Tensor, num_nodes: int) -> torch.Tensor:
    r"""CMPNN's aggregation of the bonds an atom receives: their sum, gated by their
    element-wise maximum (its "message booster").

    .. math:: m(u) = \Big(\sum_{(v,u)_k} h((v,u)_k)\Big) \odot \max_{(v,u)_k} h((v,u)_k)

    Shapes: edge_attr ``(E, F)``, target ``(E,)`` -> ``(N, F)`` (zero for an atom that
    receives nothing).
    """
    total = scatter(edge_attr, target, dim=0, dim_size=num_nodes, reduce="sum")
    largest = scatter(edge_attr, target, dim=0, dim_size=num_nodes, reduce="max")
    return total * largest


class CommunicativeLayer(nn.Module):
    r"""Bonds update atoms, atoms update the bonds that leave them.

    Bonds are directed: :math:`(u, v)_k` goes from source :math:`u` to target :math:`v`
    through periodic image :math:`k`, and its reverse :math:`(v, u)_k` is the bond from
    :math:`v` to :math:`u` through the opposite image. With :math:`h^0` the embedded
    bonds, :math:`m` the :func:`incoming_message` and the paper's linear communicate
    kernel:

    .. math::
        h^l(u) &= h^{l-1}(u) + m^l(u), \qquad
            m^l(u) = \mathrm{Aggregate}_{(v,u)_k}\, h^{l-1}((v,u)_k) \\
        m^l((u,v)_k) &= h^l(u) - h^{l-1}((v,u)_k) \\
        h^l((u,v)_k) &= \mathrm{Mish}\big(h^0((u,v)_k) + W^l m^l((u,v)_k)\big)

    Subtracting the reverse bond keeps a bond's own message from coming straight back to
    it. The paper writes the reverse bond at layer :math:`l`; it is only known at
    :math:`l - 1` when the message is formed (as in CMPNN). A bond whose reverse the
    graph lacks (the k-nearest-neighbour cut keeps :math:`v` among the neighbours of
    :math:`u` but not the other way round) subtracts nothing: its reverse counts as zero.

    Args:
        channels: feature size :math:`F` of atoms and bonds.

    Shapes:
        x ``(N, F)``, edge_attr ``(E, F)`` (layer :math:`l - 1`), initial_edge_attr
        ``(E, F)`` (:math:`h^0`), edge_index ``(2, E)`` rows (source, target),
        reverse_edge ``(E,)`` index of each bond's reverse, -1 where there is none
        -> ``(N, F)``, ``(E, F)``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bond_message = nn.Linear(channels, channels, bias=False)

    def forward(self, x: torch.Tensor, edge_attr: torch.Tensor, initial_edge_attr: torch.Tensor,
                edge_index: torch.Tensor, reverse_edge: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        source, target = edge_index
        x = x + incoming_message(edge_attr, target, x.size(0))
        has_reverse = (reverse_edge >= 0).unsqueeze(-1)
        reverse_attr = torch.where(has_reverse, edge_attr[reverse_edge.clamp(min=0)], 0.0)
        message = x[source] - reverse_attr
        edge_attr = nn.functional.mish(initial_edge_attr + self.bond_message(message))
        return x, edge_attr
