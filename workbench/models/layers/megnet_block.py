"""One MEGNet block (Chen, Ye, Zuo, Zheng & Ong, Chem. Mater. 31, 3564, 2019): a graph
network that updates bonds, then atoms, then the crystal's global state, with residuals."""

from collections.abc import Sequence

import torch
from torch import nn
from torch_geometric.nn.models.schnet import ShiftedSoftplus
from torch_geometric.utils import scatter


def dense_stack(in_channels: int, widths: Sequence[int]) -> nn.Sequential:
    """MEGNet's dense layers: a Linear to each width, each followed by a shifted softplus."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_channels, width), ShiftedSoftplus()]
        in_channels = width
    return nn.Sequential(*layers)


class MEGNetBlock(nn.Module):
    r"""Bond, atom and state updates of one MEGNet block.

    Atoms :math:`v_i`, bonds :math:`e_{ji}` (edge from source :math:`j` to target
    :math:`i`) and the state :math:`u_g` of crystal :math:`g` all have :math:`F` features.
    With :math:`\mathrm{ssp}(x) = \ln(1 + e^x) - \ln 2` after every Linear, optional
    dense pre-layers :math:`\psi` (widths ``hidden``, :math:`F`) and update MLPs
    :math:`\phi` (widths ``hidden``, ``hidden``, :math:`F`):

    .. math::
        \tilde v = \psi_v(v), \quad \tilde e = \psi_e(e), \quad \tilde u = \psi_u(u)
            \quad \text{(identities without pre-layers)} \\
        e'_{ji} = \phi_e(\tilde v_j \oplus \tilde v_i \oplus \tilde e_{ji} \oplus \tilde u_g) \\
        v'_i = \phi_v\Big(\tfrac{1}{|N(i)|} \textstyle\sum_{j} e'_{ji}
            \oplus \tilde v_i \oplus \tilde u_g\Big) \\
        u'_g = \phi_u\Big(\tfrac{1}{|E_g|} \textstyle\sum_{(j,i) \in g} e'_{ji}
            \oplus \tfrac{1}{|V_g|} \textstyle\sum_{i \in g} v'_i \oplus \tilde u_g\Big) \\
        v \leftarrow v + v', \quad e \leftarrow e + e', \quad u \leftarrow u + u'

    An atom averages the bonds it receives (its ``max_neighbors`` nearest neighbours),
    which every atom of a featurized crystal has.

    Args:
        channels: feature size :math:`F` of atoms, bonds and state.
        hidden: width of the pre-layers and of the update MLPs' inner layers.
        pre_dense: whether to pass the inputs through :math:`\psi` first (the paper: every
            block but the first, whose inputs have just left the embedding layers).

    Shapes:
        x ``(N, F)``, edge_index ``(2, E)`` rows (source, target), edge_attr ``(E, F)``,
        state ``(B, F)``, batch ``(N,)`` crystal of each atom
        -> ``(N, F)``, ``(E, F)``, ``(B, F)``.
    """

    def __init__(self, channels: int, hidden: int, pre_dense: bool = True):
        super().__init__()
        widths = (hidden, channels)
        self.atom_pre = dense_stack(channels, widths) if pre_dense else nn.Identity()
        self.bond_pre = dense_stack(channels, widths) if pre_dense else nn.Identity()
        self.state_pre = dense_stack(channels, widths) if pre_dense else nn.Identity()
        update_widths = (hidden, hidden, channels)
        self.bond_update = dense_stack(4 * channels, update_widths)
        self.atom_update = dense_stack(3 * channels, update_widths)
        self.state_update = dense_stack(3 * channels, update_widths)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor,
                state: torch.Tensor, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        source, target = edge_index
        crystals = state.size(0)
        atoms, bonds, crystal_state = self.atom_pre(x), self.bond_pre(edge_attr), self.state_pre(state)
        bond_crystal = batch[target]
        new_bonds = self.bond_update(torch.cat(
            [atoms[source], atoms[target], bonds, crystal_state[bond_crystal]], dim=-1))
        incoming = scatter(new_bonds, target, dim=0, dim_size=x.size(0), reduce="mean")
        new_atoms = self.atom_update(torch.cat([incoming, atoms, crystal_state[batch]], dim=-1))
        bonds_of_crystal = scatter(new_bonds, bond_crystal, dim=0, dim_size=crystals, reduce="mean")
        atoms_of_crystal = scatter(new_atoms, batch, dim=0, dim_size=crystals, reduce="mean")
        new_state = self.state_update(torch.cat([bonds_of_crystal, atoms_of_crystal, crystal_state], dim=-1))
        return x + new_atoms, edge_attr + new_bonds, state + new_state
