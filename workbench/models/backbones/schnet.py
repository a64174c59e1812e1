"""The SchNet backbone (Schütt et al., J. Chem. Phys. 148, 241722, 2018) from PyG's
continuous-filter blocks, on the workbench's periodic crystal graphs."""

from dataclasses import dataclass

import torch
from torch import nn
from torch_geometric.nn.models.schnet import GaussianSmearing, InteractionBlock


@dataclass(frozen=True)
class SchNetConfig:
    """Sizes as published for crystals: 64 atom features and filters, 3 interactions.

    Attributes:
        hidden: atom feature size.
        filters: width of the continuous filters.
        interactions: interaction blocks.
        gaussians: centres of the distance expansion on 0..``cutoff``.
        cutoff: Å; the cosine cutoff takes filters to zero here. Use the featurizer's
            cutoff: an edge longer than this (a radius raised for a sparse structure)
            carries no message.
        max_atomic_number: the largest element the atom embedding knows.
        atom_feature_size: None: atoms start from an embedding of their atomic number,
            as published; a width: from a linear map of the featurizer's atom features
            ``data.x`` of that width instead (a universal model's pretrained embeddings).
    """

    hidden: int = 64
    filters: int = 64
    interactions: int = 3
    gaussians: int = 50
    cutoff: float = 8.0
    max_atomic_number: int = 100
    atom_feature_size: int | None = None


class SchNet(nn.Module):
    r"""Atom embedding by element (or a linear map of given atom features), then
    ``interactions`` residual continuous-filter interaction blocks (PyG's
    :class:`InteractionBlock`) over the periodic edges.

    For an edge :math:`(j \to i)` of length :math:`d_{ji}`, with Gaussians :math:`g`,
    cosine cutoff :math:`f_c(d) = \tfrac12(\cos(\pi d / r_c) + 1)` and shifted softplus
    :math:`\mathrm{ssp}`:

    .. math::
        h^{(0)}_i = \mathrm{Embedding}(Z_i) \ \text{or} \ \mathrm{Dense}(x_i), \qquad
        W_{ji} = \mathrm{Dense}(\mathrm{ssp}(\mathrm{Dense}(g(d_{ji})))) \, f_c(d_{ji}) \\
        h^{(t+1)}_i = h^{(t)}_i + \mathrm{Dense}\Big(\mathrm{ssp}\Big(\mathrm{Dense}\big(
            \textstyle\sum_j W_{ji} \odot \mathrm{Dense}(h^{(t)}_j)\big)\Big)\Big)

    SchNet's atom-wise output layers and its sum are the head's work. The graph is the
    featurizer's (k nearest neighbours, one edge per periodic image), not a radius graph.

    Shapes:
        ``data.atomic_numbers`` ``(N,)`` (or ``data.x`` ``(N, atom_feature_size)``),
        ``data.edge_index`` ``(2, E)``, ``data.edge_distance`` ``(E,)`` -> atom features
        ``(N, hidden)``.
    """

    def __init__(self, config: SchNetConfig):
        super().__init__()
        self.config = config
        if config.atom_feature_size is None:
            self.embedding = nn.Embedding(config.max_atomic_number + 1, config.hidden)
        else:
            self.embedding = nn.Linear(config.atom_feature_size, config.hidden)
        self.expansion = GaussianSmearing(0.0, config.cutoff, config.gaussians)
        self.interactions = nn.ModuleList(
            InteractionBlock(config.hidden, config.gaussians, config.filters, config.cutoff)
            for _ in range(config.interactions)
        )

    @property
    def out_channels(self) -> int:
        return self.config.hidden

    def forward(self, data) -> torch.Tensor:
        x = self.embedding(data.atomic_numbers if self.config.atom_feature_size is None else data.x)
        edge_attr = self.expansion(data.edge_distance)
        # The cosine cutoff rises again past the cutoff; clamped, longer edges get zero.
        edge_weight = data.edge_distance.clamp(max=self.config.cutoff)
        for interaction in self.interactions:
            x = x + interaction(x, data.edge_index, edge_weight, edge_attr)
        return x
