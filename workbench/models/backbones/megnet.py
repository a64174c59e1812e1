"""The MEGNet backbone (Chen, Ye, Zuo, Zheng & Ong, Chem. Mater. 31, 3564, 2019): atoms,
bonds and a global state updated together, read out by set2set."""

from dataclasses import dataclass

import torch
from torch import nn
from torch_geometric.nn.aggr import Set2Set

from workbench.models.layers import GaussianExpansion, MEGNetBlock
from workbench.models.layers.megnet_block import dense_stack
from workbench.models.model import batch_vector


@dataclass(frozen=True)
class MEGNetConfig:
    """Sizes as published for crystals: features of 32 between blocks, dense layers of 64,
    3 blocks, set2set with 3 steps, bond lengths on Gaussians 0.5 Å wide.

    The paper's crystals have a 5 Å radius and 100 Gaussian centres on it; here the centres
    run over the featurizer's 8 Å every ``distance_step`` Å (101 centres).

    Attributes:
        atom_feature_size: width of ``data.x`` (the featurizer's).
        channels: feature size of atoms, bonds and state between blocks.
        hidden: width of the dense pre-layers and of the update MLPs' inner layers.
        blocks: MEGNet blocks (the first without dense pre-layers).
        distance_stop: last centre of the bond-length expansion, Å (first: 0).
        distance_step: spacing of the centres, Å.
        distance_width: width of each Gaussian, Å.
        set2set_steps: processing steps of the set2set readouts.
    """

    atom_feature_size: int = 91
    channels: int = 32
    hidden: int = 64
    blocks: int = 3
    distance_stop: float = 8.0
    distance_step: float = 0.08
    distance_width: float = 0.5
    set2set_steps: int = 3


class MEGNet(nn.Module):
    r"""Dense embeddings, ``blocks`` :class:`MEGNetBlock`, then set2set readouts.

    With :math:`\psi` two dense layers (widths ``hidden``, ``channels``, shifted softplus)
    and :math:`g` the Gaussian expansion:

    .. math::
        v^{(0)}_i = \psi_v(x_i), \quad e^{(0)}_{ji} = \psi_e(g(d_{ji})), \quad u^{(0)}_g = u_0 \\
        (v, e, u) \leftarrow \mathrm{MEGNetBlock}(v, e, u) \ (\times T) \\
        z_g = \mathrm{Set2Set}_v(\{v_i\}_{i \in g}) \oplus \mathrm{Set2Set}_e(\{e_{ji}\}_{(j,i) \in g})
            \oplus u_g, \qquad h_i = v_i \oplus z_{g(i)}

    Our graphs carry no state (temperature, pressure), so the initial state :math:`u_0` is
    one learned vector, shared by all crystals: what the paper's dense layers make of its
    zero state input.

    **Readout and the heads.** MEGNet reads a crystal out from its set2set vectors and
    state, while the heads pool atom features. The backbone therefore returns each atom's
    features concatenated with its crystal's vector :math:`z_g` (``5 * channels``), which
    is the same on every atom of a crystal: mean pooling then gives
    :math:`\bar v_g \oplus z_g`, the published readout plus the mean atom, and the paper's
    final dense layers are the head's MLP; a per-site head sees each atom with its
    crystal's context. Sum pooling scales :math:`z_g` by the number of atoms, as a sum of
    per-atom contributions would. No head needs to know about set2set.

    Shapes:
        ``data.x`` ``(N, atom_feature_size)``, ``data.edge_index`` ``(2, E)``,
        ``data.edge_distance`` ``(E,)``, ``data.batch`` ``(N,)`` (optional for one crystal)
        -> atom features ``(N, 6 * channels)``.
    """

    def __init__(self, config: MEGNetConfig):
        super().__init__()
        self.config = config
        widths = (config.hidden, config.channels)
        self.expansion = GaussianExpansion(0.0, config.distance_stop, config.distance_step,
                                           width=config.distance_width)
        self.atom_embedding = dense_stack(config.atom_feature_size, widths)
        self.bond_embedding = dense_stack(self.expansion.size, widths)
        self.initial_state = nn.Parameter(torch.zeros(config.channels))
        self.blocks = nn.ModuleList(
            MEGNetBlock(config.channels, config.hidden, pre_dense=index > 0) for index in range(config.blocks)
        )
        self.atom_readout = Set2Set(config.channels, config.set2set_steps)
        self.bond_readout = Set2Set(config.channels, config.set2set_steps)

    @property
    def out_channels(self) -> int:
        # atoms, set2set of atoms (2x), set2set of bonds (2x), state
        return 6 * self.config.channels

    def forward(self, data) -> torch.Tensor:
        x = self.atom_embedding(data.x)
        edge_attr = self.bond_embedding(self.expansion(data.edge_distance))
        batch = batch_vector(data)
        crystals = getattr(data, "num_graphs", 1)
        state = self.initial_state.expand(crystals, -1)
        for block in self.blocks:
            x, edge_attr, state = block(x, data.edge_index, edge_attr, state, batch)
        bond_crystal = batch[data.edge_index[1]]
        # Set2set runs an LSTM, which cuDNN before 9.13 cannot run in the bfloat16 that
        # training autocasts to on GPUs: read out in float32.
        with torch.autocast(device_type=x.device.type, enabled=False):
            crystal_vector = torch.cat([
                self.atom_readout(x.float(), batch, dim_size=crystals),
                self.bond_readout(edge_attr.float(), bond_crystal, dim_size=crystals),
                state.float(),
            ], dim=-1)
        return torch.cat([x.float(), crystal_vector[batch]], dim=-1)
