"""The ALIGNN backbone (Choudhary & DeCost, npj Comput. Mater. 7, 185, 2021), as used for
the DOS by Kaundinya, Choudhary & Kalidindi (JOM 74, 1395, 2022)."""

from dataclasses import dataclass

import torch
from torch import nn

from workbench.models.layers import ALIGNNLayer, EdgeGatedConv, GaussianExpansion
from workbench.models.layers.edge_gated_conv import NORMALIZATIONS


@dataclass(frozen=True)
class ALIGNNConfig:
    """Sizes: the published model has ``hidden`` 256; 64 here keeps a CPU epoch short.

    The rest is as published: bond-length and bond-angle expansions lifted to ``hidden``
    through an ``embedding``-wide layer (64), 4 ALIGNN layers then 4 edge-gated
    convolutions, batch normalisation. The published expansions have 80 centres on
    0..8 Å and 40 on -1..1; here the centres are every ``distance_step`` Å (81) and every
    ``cosine_step`` (41), each Gaussian as wide as its spacing.

    Attributes:
        atom_feature_size: width of ``data.x``.
        hidden: feature size of atoms, bonds and triplets in the convolutions.
        embedding: width of the layer between an expansion and ``hidden``.
        alignn_layers: ALIGNN layers (line graph, then crystal graph).
        gcn_layers: edge-gated convolutions on the crystal graph alone, after those.
        distance_stop: last centre of the bond-length expansion, Å (first: 0).
        distance_step: spacing of the bond-length centres, Å.
        cosine_step: spacing of the bond-angle-cosine centres on -1..1.
        normalization: ``"batch"`` or ``"layer"``.
    """

    atom_feature_size: int = 91
    hidden: int = 64
    embedding: int = 64
    alignn_layers: int = 4
    gcn_layers: int = 4
    distance_stop: float = 8.0
    distance_step: float = 0.1
    cosine_step: float = 0.05
    normalization: str = "batch"


class ALIGNN(nn.Module):
    r"""Atom, bond and angle embeddings, ``alignn_layers`` :class:`ALIGNNLayer`, then
    ``gcn_layers`` :class:`EdgeGatedConv` on the crystal graph.

    With :math:`\phi` a Linear + Norm + SiLU block and :math:`g` Gaussian expansions:

    .. math::
        h^{(0)}_i = \phi(x_i), \quad e^{(0)}_{ji} = \phi(\phi(g(d_{ji}))), \quad
        t^{(0)}_{kji} = \phi(\phi(g(\cos\theta_{kji}))) \\
        (h, e, t) \leftarrow \mathrm{ALIGNNLayer}(h, e, t) \ (\times L), \qquad
        (h, e) \leftarrow \mathrm{EdgeGatedConv}(h, e) \ (\times G)

    The head pools the atom features (the paper averages them). As published, the last
    line-graph update of the triplets and the last update of the bonds are not read.

    Shapes:
        ``data.x`` ``(N, atom_feature_size)``, ``data.edge_index`` ``(2, E)``,
        ``data.edge_distance`` ``(E,)``, ``data.triplet_index`` ``(2, T)``,
        ``data.triplet_cosine`` ``(T,)`` -> atom features ``(N, hidden)``.
    """

    needs_triplets = True

    def __init__(self, config: ALIGNNConfig):
        super().__init__()
        self.config = config
        self.distance_expansion = GaussianExpansion(0.0, config.distance_stop, config.distance_step)
        self.cosine_expansion = GaussianExpansion(-1.0, 1.0, config.cosine_step)
        self.atom_embedding = self._block(config.atom_feature_size, config.hidden)
        self.bond_embedding = nn.Sequential(self._block(self.distance_expansion.size, config.embedding),
                                            self._block(config.embedding, config.hidden))
        self.angle_embedding = nn.Sequential(self._block(self.cosine_expansion.size, config.embedding),
                                             self._block(config.embedding, config.hidden))
        self.alignn_layers = nn.ModuleList(
            ALIGNNLayer(config.hidden, config.normalization) for _ in range(config.alignn_layers)
        )
        self.gcn_layers = nn.ModuleList(
            EdgeGatedConv(config.hidden, config.normalization) for _ in range(config.gcn_layers)
        )

    def _block(self, in_channels: int, out_channels: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(in_channels, out_channels),
                             NORMALIZATIONS[self.config.normalization](out_channels), nn.SiLU())

    @property
    def out_channels(self) -> int:
        return self.config.hidden

    def forward(self, data) -> torch.Tensor:
        if getattr(data, "triplet_index", None) is None:
            raise ValueError("ALIGNN reads bond-angle triplets: build its graphs with "
                             "graph_to_data(..., triplets=True)")
        x = self.atom_embedding(data.x)
        edge_attr = self.bond_embedding(self.distance_expansion(data.edge_distance))
        triplet_attr = self.angle_embedding(self.cosine_expansion(data.triplet_cosine))
        for layer in self.alignn_layers:
            x, edge_attr, triplet_attr = layer(x, data.edge_index, edge_attr, data.triplet_index, triplet_attr)
        for convolution in self.gcn_layers:
            x, edge_attr = convolution(x, data.edge_index, edge_attr)
        return x
