"""The pretrained SevenNet network (Park et al., J. Chem. Theory Comput. 20, 4857, 2024) as a
backbone to fine-tune: its atom embedding and equivariant interaction blocks, without its
energy readout, on the workbench's crystal graphs.

The network comes from the ``sevenn`` package, whose wheel holds the weights of the models
in :data:`~workbench.dft.presets.OFFLINE_MODELS` (nothing is downloaded). A model built on it
names the pretrained model in its config and saves every weight, so loading a saved model
rebuilds the architecture from the wheel and then takes the fine-tuned weights from the file.
"""

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import sevenn._keys as KEY
import torch
from e3nn.o3 import Irreps
from sevenn.util import load_checkpoint
from torch import nn
from torch_geometric.utils import scatter

from workbench.dft.presets import OFFLINE_MODELS
from workbench.errors import WorkbenchError
from workbench.featurize.config import GraphConfig

# Enough neighbours that every atom keeps all of those within SevenNet's 5 Å: up to 70 in
# the bundled perovskites, 86 in diamond.
GRAPH = GraphConfig(max_neighbors=96)

EMBEDDING = -1  # the block index of the modules before the first interaction block
# Which pretrained blocks learn, given how many interaction blocks there are.
FINETUNE: dict[str, Callable[[int], set[int]]] = {
    "all": lambda blocks: {EMBEDDING, *range(blocks)},
    "last": lambda blocks: {blocks - 1},
    "none": lambda blocks: set(),
}


class SevenNetError(WorkbenchError, ValueError):
    """A SevenNet backbone that cannot be built, or graphs it cannot read."""


@dataclass(frozen=True)
class SevenNetConfig:
    """Attributes:
        model: the pretrained SevenNet inside the ``sevenn`` wheel (``7net-0``,
            ``7net-0_22may2024``, ``7net-l3i5``).
        finetune: which pretrained weights learn: ``all``, ``last`` (the last interaction
            block only) or ``none`` (the backbone is frozen: only the head learns).
    """

    model: str = "7net-0"
    finetune: str = "all"


class SevenNet(nn.Module):
    r"""SevenNet's atom embedding and ``L`` NequIP-style interaction blocks, pretrained; the
    head replaces its atom-energy readout.

    For an edge :math:`(j \to i)` with vector :math:`\vec r_{ij}` (from :math:`i` to the
    image of :math:`j`) shorter than the cutoff :math:`r_c`, Bessel functions :math:`B`,
    the XPLOR envelope :math:`f_c` and spherical harmonics :math:`Y^l`:

    .. math::
        h^{(0)}_i = W\,\mathrm{onehot}(Z_i), \qquad
        m_i = \frac{1}{\bar n}\sum_j \mathrm{MLP}\big(B(r_{ij}) f_c(r_{ij})\big)
            \otimes \big(W_1 h^{(t)}_j\big) \otimes Y(\hat r_{ij}) \\
        h^{(t+1)}_i = \mathrm{Gate}\big(W_2\, m_i + W_{sc}(h^{(t)}_i \otimes \mathrm{onehot}(Z_i))\big)

    with features of orders :math:`l \le 2` between blocks (7net-0: 128 scalars, 64
    vectors, 32 rank-2 tensors) and invariant scalars only out of the last block.

    SevenNet reads every neighbour within 5 Å (its cutoff), where the workbench's graphs
    keep the k nearest: the graphs must keep more than are within the cutoff (:data:`GRAPH`,
    96 within 8 Å), which the forward pass checks (every atom's farthest kept neighbour
    lies at or beyond the cutoff); edges beyond the cutoff are dropped. SevenNet embeds
    atomic numbers through its type map (89 elements); the featurizer's atom features are
    not read. It runs in float32, outside any autocast (e3nn's tensor products mix dtypes
    under bfloat16).

    Shapes:
        ``data.atomic_numbers`` ``(N,)``, ``data.edge_index`` ``(2, E)``,
        ``data.edge_vector`` ``(E, 3)``, ``data.edge_distance`` ``(E,)``
        -> atom features ``(N, F)`` (7net-0: 128).
    """

    graph = GRAPH  # what its featurizer must build (workbench.models.model.graph_for)
    requirements = ("sevenn",)  # what a registered model needs beyond the workbench's own

    def __init__(self, config: SevenNetConfig):
        super().__init__()
        if config.model not in OFFLINE_MODELS["sevennet"]:
            raise SevenNetError(f"SevenNet model {config.model!r} is not inside the installed sevenn package; "
                                f"offline: {', '.join(OFFLINE_MODELS['sevennet'])}")
        if config.finetune not in FINETUNE:
            raise SevenNetError(f"finetune must be one of {', '.join(FINETUNE)}, not {config.finetune!r}")
        self.config = config
        checkpoint = load_checkpoint(config.model)
        network = checkpoint.build_model()
        self.cutoff = float(checkpoint.config[KEY.CUTOFF])
        children = list(network.named_children())
        blocks = [_block(name) for name, _ in children]
        last = max(index for index, block in enumerate(blocks) if block != EMBEDDING)
        # Everything up to the last interaction block; its readout (atom energies, their
        # shift and scale, the sum and the forces) is left out.
        self.layers = nn.Sequential(OrderedDict(children[:last + 1]))
        irreps = Irreps(network.get_irreps_in(children[last + 1][0]))
        if any(irrep.l > 0 for _, irrep in irreps):
            raise SevenNetError(f"SevenNet model {config.model!r} ends in features {irreps}, not only scalars")
        self._out_channels = irreps.dim
        learns = FINETUNE[config.finetune](blocks[last] + 1)
        for (_, module), block in zip(children[:last + 1], blocks[:last + 1], strict=True):
            module.requires_grad_(block in learns)
        types = torch.full((max(checkpoint.config[KEY.TYPE_MAP]) + 1,), -1, dtype=torch.long)
        for number, index in checkpoint.config[KEY.TYPE_MAP].items():
            types[number] = index
        self.register_buffer("atom_types", types, persistent=False)  # Z -> SevenNet's index
        # e3nn compiles its tensor products into TorchScript submodules, which hold only
        # constants of the code, and which come back from pickling (a worker process)
        # holding them as buffers: they stay out of the state dict.
        self._compiled = tuple(f"{name}.{compiled}." for name, module in self.named_modules()
                               for compiled in getattr(module, "__codegen__", ()))
        self.register_state_dict_post_hook(_drop_compiled_state)
        self.register_load_state_dict_pre_hook(_drop_compiled_state)
        self.register_load_state_dict_post_hook(_ignore_missing_compiled_state)

    @property
    def out_channels(self) -> int:
        return self._out_channels

    def forward(self, data) -> torch.Tensor:
        self._check_neighbours(data)
        keep = data.edge_distance < self.cutoff
        source, target = data.edge_index[:, keep]
        graph = {
            KEY.NODE_FEATURE: self._atom_types(data.atomic_numbers),
            # SevenNet's edge (i, j) carries a message from j to i along r_j - r_i.
            KEY.EDGE_IDX: torch.stack([target, source]),
            KEY.EDGE_VEC: data.edge_vector[keep].float(),
        }
        with torch.autocast(device_type=data.edge_vector.device.type, enabled=False):
            return self.layers(graph)[KEY.NODE_FEATURE]

    def _atom_types(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        known = atomic_numbers < len(self.atom_types)
        types = torch.where(known, self.atom_types[atomic_numbers.clamp(max=len(self.atom_types) - 1)], -1)
        if (types < 0).any():
            unknown = sorted(set(atomic_numbers[types < 0].tolist()))
            raise SevenNetError(f"SevenNet model {self.config.model!r} knows no element of atomic number "
                                f"{', '.join(map(str, unknown))}")
        return types

    def _check_neighbours(self, data) -> None:
        """Refuse graphs that may have lost neighbours within the cutoff: a k-nearest
        graph keeps them all where each atom's farthest kept neighbour lies at or beyond it."""
        farthest = scatter(data.edge_distance, data.edge_index[1], dim=0, dim_size=data.num_nodes, reduce="max")
        short = farthest < self.cutoff
        if not short.any():
            return
        where = ""
        batch, ids = getattr(data, "batch", None), getattr(data, "structure_id", None)
        if ids is not None:
            crystals = batch[short].unique() if batch is not None else torch.zeros(1, dtype=torch.long)
            where = f" (structure ids {', '.join(str(ids[index].item()) for index in crystals[:5])})"
        raise SevenNetError(
            f"{int(short.sum())} atoms{where} have all their graph neighbours within {self.cutoff} Å, so the graph "
            f"may have cut off some of those SevenNet reads: featurize with more neighbours (max_neighbors, "
            f"{GRAPH.max_neighbors} in workbench.models.backbones.sevennet.GRAPH)")


def _is_compiled(backbone: SevenNet, key: str, prefix: str = "") -> bool:
    return key.startswith(prefix) and key[len(prefix):].startswith(backbone._compiled)


def _drop_compiled_state(backbone: SevenNet, state_dict: dict, prefix: str, *_) -> None:
    for key in [key for key in state_dict if _is_compiled(backbone, key, prefix)]:
        del state_dict[key]


def _ignore_missing_compiled_state(backbone: SevenNet, incompatible) -> None:
    """Loading into a network that came back from a worker: its compiled constants are not
    in the state dict, and need not be."""
    missing = [key for key in incompatible.missing_keys
               if any(f".{compiled}" in f".{key}" for compiled in backbone._compiled)]
    for key in missing:
        incompatible.missing_keys.remove(key)


def _block(name: str) -> int:
    """The interaction block a module of a SevenNet network belongs to (its name starts
    with the block's index), or :data:`EMBEDDING` for one without an index."""
    prefix = name.split("_", 1)[0]
    return int(prefix) if prefix.isdigit() else EMBEDDING
