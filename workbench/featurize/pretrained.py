"""Per-atom embeddings of frozen pretrained universal potentials, as atom features.

A featurizer with ``atom_features="sevennet"`` or ``"chgnet"`` runs the model once per
structure, keeps each atom's node features after the model's last interaction block (the
vectors its energy readout reads: :class:`SevenNetEmbedder`, :class:`CHGNetEmbedder`), and
stores them in the graph (``pretrained_embedding``). The featurizer's key holds the
package, its version and the SHA-256 of the weights file, so a changed model gets a new
key and never serves embeddings cached by the old one. The model runs on the GPU when
torch sees one (:func:`workbench.train.ensemble.pick_device`).

Both models' weights ship in their wheels (no download). This module stays free of torch
and the model packages at import: they are imported when a model is loaded or its weights
file is looked up, so the command line can list :data:`PRETRAINED_MODELS`.
"""

import functools
import hashlib
import importlib.metadata
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import WorkbenchError

# Structures per forward pass are capped by their atoms, not counted: the edge tensors grow
# with atoms x neighbours within 5 Å (tens each), so one pass stays near 10^5 edges
# whether it holds 400 perovskites or a few MOFs. Batching is 10-12 times faster than one
# structure per pass on CPU (benchmarks/pretrained_features.md).
ATOMS_PER_PASS = 2048
HASH_CHUNK = 1 << 20


class PretrainedError(WorkbenchError, ValueError):
    """A pretrained model that cannot be found, or a structure it cannot embed."""


def _sevennet_checkpoint(model: str) -> Path:
    from sevenn.util import pretrained_name_to_path

    return Path(pretrained_name_to_path(model))


def _chgnet_checkpoint(model: str) -> Path:
    # CHGNet keeps its weights at chgnet/pretrained/<model>/*.pth.tar (what CHGNet.load reads);
    # found without importing chgnet, which would import torch just to name a key.
    spec = importlib.util.find_spec("chgnet")
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedError("the chgnet package is not installed")
    folder = Path(spec.submodule_search_locations[0]) / "pretrained" / model
    found = sorted(folder.glob("*.pth.tar"))
    if len(found) != 1:
        raise PretrainedError(f"expected one CHGNet weights file in {folder}, found {len(found)}")
    return found[0]


def _passes(sizes: Sequence[int]) -> list[list[int]]:
    """Indices grouped into passes of at most ``ATOMS_PER_PASS`` atoms (one structure at least)."""
    passes, current, atoms = [], [], 0
    for index, size in enumerate(sizes):
        if current and atoms + size > ATOMS_PER_PASS:
            passes.append(current)
            current, atoms = [], 0
        current.append(index)
        atoms += size
    return passes + ([current] if current else [])


def _embed_in_passes(crystals: Sequence, convert: Callable, forward: Callable) -> list:
    """``forward`` over the ``convert``-ed crystals, a few per pass, split back per crystal:
    an ``(N, D)`` float32 array each, or the message of a :class:`PretrainedError` that
    ``convert`` raised for it."""
    import torch

    results: list = [None] * len(crystals)
    inputs = {}
    for index, crystal in enumerate(crystals):
        try:
            inputs[index] = convert(crystal)
        except PretrainedError as error:
            results[index] = str(error)
    order = list(inputs)
    for part in _passes([crystals[index].nsites for index in order]):
        indices = [order[i] for i in part]
        with torch.no_grad():
            features = forward([inputs[index] for index in indices])
        blocks = torch.split(features.detach().float().cpu(), [crystals[index].nsites for index in indices])
        for index, block in zip(indices, blocks, strict=True):
            results[index] = block.numpy()
    return results


class SevenNetEmbedder:
    """SevenNet's scalar node features (128x0e for 7net-0) after its last interaction
    block (``4_equivariant_gate``): the input of ``reduce_input_to_hidden``, its readout.
    The modules from the readout on (energy, then forces and stress by autograd) never run."""

    READOUT = "reduce_input_to_hidden"

    def __init__(self, model: str):
        import sevenn._keys as keys
        from ase.data import chemical_symbols
        from sevenn.util import load_checkpoint, pretrained_name_to_path

        from workbench.train.ensemble import pick_device

        self.keys = keys
        self.device = pick_device()
        checkpoint = load_checkpoint(pretrained_name_to_path(model))
        self.network = checkpoint.build_model().to(self.device).eval()
        self.network.set_is_batch_data(True)
        self.cutoff = checkpoint.config[keys.CUTOFF]
        self.known = {chemical_symbols[number] for number in checkpoint.config[keys.TYPE_MAP]}

    def __call__(self, crystals: Sequence) -> list:
        return _embed_in_passes(crystals, self._graph, self._forward)

    def _graph(self, crystal):
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        unknown = sorted(set(crystal.species) - self.known)
        if unknown:
            raise PretrainedError(f"SevenNet has no parameters for {', '.join(unknown)}")
        graph = unlabeled_atoms_to_graph(crystal.to_ase(), self.cutoff)
        graph.pop(self.keys.INFO)  # a dict per structure, which batching cannot join
        return AtomGraphData.from_numpy_dict(graph)

    def _forward(self, graphs: list):
        from torch_geometric.data import Batch

        data = self.network._preprocess(Batch.from_data_list(graphs).to(self.device))
        for name, module in self.network._modules.items():
            if name == self.READOUT:
                break
            data = module(data)
        return data[self.keys.NODE_FEATURE]


class CHGNetEmbedder:
    """CHGNet's atom features (64) after its last atom convolution (and its readout norm,
    if any): the vectors its per-atom energy readout reads. Taken with a forward hook, as
    CHGNet's own ``return_atom_feas`` gives the layer before, where it reads magnetic moments."""

    def __init__(self, model: str):
        from chgnet.model import CHGNet

        from workbench.train.ensemble import pick_device

        self.device = pick_device()
        # The whole device (cuda:1, not cuda): the graphs are moved to the same one.
        self.network = CHGNet.load(model_name=model, use_device=str(self.device), verbose=False).eval()

    def __call__(self, crystals: Sequence) -> list:
        return _embed_in_passes(crystals, self._graph, self._forward)

    def _graph(self, crystal):
        try:
            return self.network.graph_converter(crystal.to_pymatgen())
        except (ValueError, RuntimeError) as error:
            raise PretrainedError(f"CHGNet cannot make its graph: {error}") from error

    def _forward(self, graphs: list):
        captured = []
        hook = self.network.atom_conv_layers[-1].register_forward_hook(
            lambda module, inputs, output: captured.append(output))
        try:
            self.network([graph.to(self.device) for graph in graphs], task="e")
        finally:
            hook.remove()
        (features,) = captured
        return features if self.network.readout_norm is None else self.network.readout_norm(features)


@dataclass(frozen=True)
class PretrainedModel:
    """A frozen universal model whose per-atom features become atom features.

    Attributes:
        package: the Python distribution the model and its weights ship in.
        model: the model's name in that package (an offline one).
        width: entries per atom of its embedding.
        checkpoint: ``model -> path`` of the weights file, whose SHA-256 names the weights.
        embedder: ``model -> callable``, on the GPU if torch sees one, that maps crystals to
            ``(N, width)`` float32 arrays, or to a message for a crystal it cannot embed.
    """

    package: str
    model: str
    width: int
    checkpoint: Callable[[str], Path]
    embedder: Callable[..., Callable[[Sequence], list]]

    @functools.cached_property
    def weights_hash(self) -> str:
        digest = hashlib.sha256()
        with self.checkpoint(self.model).open("rb") as handle:
            while chunk := handle.read(HASH_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    @property
    def config(self) -> dict:
        """What names the embeddings in a featurizer's key: the package and its version
        (its code shapes them too), the model, its weights' hash and the width."""
        return {"package": self.package, "version": importlib.metadata.version(self.package),
                "model": self.model, "weights_sha256": self.weights_hash, "width": self.width}

    def load(self) -> Callable[[Sequence], list]:
        return self.embedder(self.model)


PRETRAINED_MODELS = {
    "sevennet": PretrainedModel("sevenn", "7net-0", 128, _sevennet_checkpoint, SevenNetEmbedder),
    "chgnet": PretrainedModel("chgnet", "0.3.0", 64, _chgnet_checkpoint, CHGNetEmbedder),
}
