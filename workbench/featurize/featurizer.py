"""A featurizer: a graph config plus an atom-feature table, named by the hash of both.

The key changes whenever anything that shapes a graph changes (the config, the atom
features, the pretrained model and its weights, or ``GRAPH_FORMAT_VERSION`` when the code
that builds graphs changes), so a cached graph is only ever served to the featurizer that
made it.
"""

import dataclasses
import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from ase.data import atomic_numbers as ATOMIC_NUMBERS

from workbench.errors import WorkbenchError
from workbench.featurize.atom_features import MAX_ATOMIC_NUMBER, cgcnn_feature_table
from workbench.featurize.config import ATOM_FEATURES, DEFAULT_ATOM_FEATURES
from workbench.featurize.graph import CrystalGraph, GraphConfig, GraphError, crystal_graph
from workbench.featurize.orbital_field import DESCRIPTOR_SIZE, orbital_field
from workbench.featurize.pretrained import PRETRAINED_MODELS, PretrainedError, PretrainedModel
from workbench.store.types import arrays_from_bytes, arrays_to_bytes
from workbench.structures.crystal import Crystal

# An optional array (the orbital field, a pretrained embedding) leaves the graphs of the
# other featurizers as they were, so their keys, and their cached graphs, stay valid.
GRAPH_FORMAT_VERSION = 2  # 2: graphs stored with arrays_to_bytes, not np.savez
# Every option ends in the CGCNN vector (the per-element table); the orbital field matrix
# or a pretrained embedding comes before it, which keeps each element's tabulated
# chemistry beside what the model learnt (91 more entries, cheap).
ATOM_FEATURE_TABLES = dict.fromkeys(ATOM_FEATURES, cgcnn_feature_table)
WITH_ORBITAL_FIELD = frozenset({"ofm"})
GRAPH_ARRAYS = ("atomic_numbers", "edge_index", "edge_image", "edge_vector", "edge_distance")
OPTIONAL_GRAPH_ARRAYS = ("orbital_field", "pretrained_embedding")


class FeaturizerError(WorkbenchError, ValueError):
    """Atom features the workbench does not have."""


@dataclass(frozen=True)
class Featurizer:
    """How structures become graphs, and which atom features the graphs give.

    Attributes:
        graph: neighbours and cutoffs.
        atom_features: ``"cgcnn"``: the 91-entry CGCNN element vector; ``"ofm"``:
            OCrystalNet's OFM-feature descriptor, each atom's orbital field matrix (1,056
            entries, from its Voronoi neighbours, cached in the graph) then the CGCNN
            vector: 1,147 entries; ``"sevennet"``, ``"chgnet"``: each atom's embedding by
            that frozen pretrained model (:data:`~workbench.featurize.pretrained.PRETRAINED_MODELS`,
            cached in the graph), then the CGCNN vector.
        pretrained: the model of a pretrained embedding; by default the registry's entry
            for ``atom_features``. Its package version and weights hash are in the key.
    """

    graph: GraphConfig = field(default_factory=GraphConfig)
    atom_features: str = DEFAULT_ATOM_FEATURES
    pretrained: PretrainedModel | None = None

    def __post_init__(self):
        if self.atom_features not in ATOM_FEATURE_TABLES:
            raise FeaturizerError(f"atom features {self.atom_features!r} are not one of {', '.join(ATOM_FEATURE_TABLES)}")
        if self.pretrained is None and self.atom_features in PRETRAINED_MODELS:
            object.__setattr__(self, "pretrained", PRETRAINED_MODELS[self.atom_features])
        if self.pretrained is not None and self.atom_features not in PRETRAINED_MODELS:
            raise FeaturizerError(f"atom features {self.atom_features!r} take no pretrained model")

    @classmethod
    def from_config(cls, config: dict) -> "Featurizer":
        """The featurizer a stored config describes, with the pretrained model it names;
        its key differs from the stored one if the installed weights or code do."""
        pretrained = None
        if "pretrained" in config:
            named = config["pretrained"]
            pretrained = dataclasses.replace(PRETRAINED_MODELS[config["atom_features"]],
                                             model=named["model"], width=named["width"])
        return cls(GraphConfig(**config["graph"]), config["atom_features"], pretrained)

    @property
    def name(self) -> str:
        return f"crystal-graph-{self.atom_features}"

    @property
    def config(self) -> dict:
        pretrained = {"pretrained": self.pretrained.config} if self.pretrained else {}
        return {"name": self.name, "format": GRAPH_FORMAT_VERSION, "graph": asdict(self.graph),
                "atom_features": self.atom_features, **pretrained}

    @functools.cached_property
    def key(self) -> str:
        canonical = json.dumps(self.config, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def feature_table(self) -> np.ndarray:
        """The per-element part of the atom features (row Z)."""
        return ATOM_FEATURE_TABLES[self.atom_features]()

    @property
    def atom_feature_size(self) -> int:
        """Width of ``data.x`` in this featurizer's graphs (a backbone's ``atom_feature_size``)."""
        orbital = DESCRIPTOR_SIZE if self.atom_features in WITH_ORBITAL_FIELD else 0
        embedding = self.pretrained.width if self.pretrained else 0
        return orbital + embedding + self.feature_table().shape[1]

    def graph_of(self, crystal: Crystal) -> CrystalGraph:
        graph = self.structure_graph(crystal)
        if self.pretrained is None:
            return graph
        (embedded,) = self.with_embeddings([crystal], [graph])
        if isinstance(embedded, str):
            raise PretrainedError(embedded)
        return embedded

    def structure_graph(self, crystal: Crystal) -> CrystalGraph:
        """The graph without its pretrained embedding: what worker processes build, while
        the model, loaded once, embeds whole batches (:meth:`with_embeddings`)."""
        numbers = np.array([ATOMIC_NUMBERS[symbol] for symbol in crystal.species])
        beyond = sorted({symbol for symbol in crystal.species if ATOMIC_NUMBERS[symbol] > MAX_ATOMIC_NUMBER})
        if beyond:
            # The store takes every element to Og: the structure fails here, by name, not
            # as an index error of a table when its graph is read.
            raise GraphError(f"no atom features for {', '.join(beyond)}: the element tables end at "
                             f"Z = {MAX_ATOMIC_NUMBER}")
        graph = crystal_graph(crystal, numbers, self.graph)
        if self.atom_features in WITH_ORBITAL_FIELD:
            graph = dataclasses.replace(graph, orbital_field=orbital_field(crystal, numbers))
        return graph

    def with_embeddings(self, crystals: Sequence[Crystal], graphs: Sequence[CrystalGraph]) -> list[CrystalGraph | str]:
        """``graphs`` (of ``crystals``) with their pretrained embeddings, or the reason a
        crystal has none; the model is loaded on first use and kept with this featurizer."""
        embeddings = self._embedder(crystals)
        return [embedding if isinstance(embedding, str) else dataclasses.replace(graph, pretrained_embedding=embedding)
                for graph, embedding in zip(graphs, embeddings, strict=True)]

    @functools.cached_property
    def _embedder(self):
        return self.pretrained.load()

    def __getstate__(self) -> dict:
        # Worker processes get the settings, never a loaded model.
        return {name: value for name, value in self.__dict__.items() if name != "_embedder"}


def graph_to_bytes(graph: CrystalGraph) -> bytes:
    names = GRAPH_ARRAYS + tuple(name for name in OPTIONAL_GRAPH_ARRAYS if getattr(graph, name) is not None)
    return arrays_to_bytes({name: getattr(graph, name) for name in names})


def graph_from_bytes(payload: bytes) -> CrystalGraph:
    arrays = arrays_from_bytes(payload)
    return CrystalGraph(**{name: arrays[name] for name in GRAPH_ARRAYS + OPTIONAL_GRAPH_ARRAYS if name in arrays})
