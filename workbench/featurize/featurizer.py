"""A featurizer: a graph config plus an atom-feature table, named by the hash of both.

The key changes whenever anything that shapes a graph changes (the config, the atom
features, or ``GRAPH_FORMAT_VERSION`` when the code that builds graphs changes), so a
cached graph is only ever served to the featurizer that made it.
"""

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np
from ase.data import atomic_numbers as ATOMIC_NUMBERS

from workbench.featurize.atom_features import cgcnn_feature_table
from workbench.featurize.graph import CrystalGraph, GraphConfig, crystal_graph
from workbench.store.types import arrays_from_bytes, arrays_to_bytes
from workbench.structures.crystal import Crystal

GRAPH_FORMAT_VERSION = 2  # 2: graphs stored with arrays_to_bytes, not np.savez
ATOM_FEATURE_TABLES = {"cgcnn": cgcnn_feature_table}
GRAPH_ARRAYS = ("atomic_numbers", "edge_index", "edge_image", "edge_vector", "edge_distance")


@dataclass(frozen=True)
class Featurizer:
    graph: GraphConfig = field(default_factory=GraphConfig)
    atom_features: str = "cgcnn"

    @property
    def name(self) -> str:
        return f"crystal-graph-{self.atom_features}"

    @property
    def config(self) -> dict:
        return {"name": self.name, "format": GRAPH_FORMAT_VERSION, "graph": asdict(self.graph),
                "atom_features": self.atom_features}

    @functools.cached_property
    def key(self) -> str:
        canonical = json.dumps(self.config, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def feature_table(self) -> np.ndarray:
        return ATOM_FEATURE_TABLES[self.atom_features]()

    def graph_of(self, crystal: Crystal) -> CrystalGraph:
        numbers = np.array([ATOMIC_NUMBERS[symbol] for symbol in crystal.species])
        return crystal_graph(crystal, numbers, self.graph)


def graph_to_bytes(graph: CrystalGraph) -> bytes:
    return arrays_to_bytes({name: getattr(graph, name) for name in GRAPH_ARRAYS})


def graph_from_bytes(payload: bytes) -> CrystalGraph:
    arrays = arrays_from_bytes(payload)
    return CrystalGraph(**{name: arrays[name] for name in GRAPH_ARRAYS})
