"""A featurizer: a graph config plus an atom-feature table, named by the hash of both.

The key changes whenever anything that shapes a graph changes (the config, the atom
features, or ``GRAPH_FORMAT_VERSION`` when the code that builds graphs changes), so a
cached graph is only ever served to the featurizer that made it.
"""

import dataclasses
import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np
from ase.data import atomic_numbers as ATOMIC_NUMBERS

from workbench.featurize.atom_features import cgcnn_feature_table
from workbench.featurize.graph import CrystalGraph, GraphConfig, crystal_graph
from workbench.featurize.orbital_field import DESCRIPTOR_SIZE, orbital_field
from workbench.store.types import arrays_from_bytes, arrays_to_bytes
from workbench.structures.crystal import Crystal

# An optional array (the orbital field) leaves the graphs of the other featurizers as they
# were, so their keys, and their cached graphs, stay valid.
GRAPH_FORMAT_VERSION = 2  # 2: graphs stored with arrays_to_bytes, not np.savez
ATOM_FEATURE_TABLES = {"cgcnn": cgcnn_feature_table, "ofm": cgcnn_feature_table}
WITH_ORBITAL_FIELD = frozenset({"ofm"})
GRAPH_ARRAYS = ("atomic_numbers", "edge_index", "edge_image", "edge_vector", "edge_distance")
OPTIONAL_GRAPH_ARRAYS = ("orbital_field",)


@dataclass(frozen=True)
class Featurizer:
    """How structures become graphs, and which atom features the graphs give.

    Attributes:
        graph: neighbours and cutoffs.
        atom_features: ``"cgcnn"``: the 91-entry CGCNN element vector; ``"ofm"``:
            OCrystalNet's OFM-feature descriptor, each atom's orbital field matrix (1,056
            entries, from its Voronoi neighbours, cached in the graph) then the CGCNN
            vector: 1,147 entries.
    """

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
        """The per-element part of the atom features (row Z)."""
        return ATOM_FEATURE_TABLES[self.atom_features]()

    @property
    def atom_feature_size(self) -> int:
        """Width of ``data.x`` in this featurizer's graphs (a backbone's ``atom_feature_size``)."""
        orbital = DESCRIPTOR_SIZE if self.atom_features in WITH_ORBITAL_FIELD else 0
        return orbital + self.feature_table().shape[1]

    def graph_of(self, crystal: Crystal) -> CrystalGraph:
        numbers = np.array([ATOMIC_NUMBERS[symbol] for symbol in crystal.species])
        graph = crystal_graph(crystal, numbers, self.graph)
        if self.atom_features in WITH_ORBITAL_FIELD:
            graph = dataclasses.replace(graph, orbital_field=orbital_field(crystal, numbers))
        return graph


def graph_to_bytes(graph: CrystalGraph) -> bytes:
    names = GRAPH_ARRAYS + tuple(name for name in OPTIONAL_GRAPH_ARRAYS if getattr(graph, name) is not None)
    return arrays_to_bytes({name: getattr(graph, name) for name in names})


def graph_from_bytes(payload: bytes) -> CrystalGraph:
    arrays = arrays_from_bytes(payload)
    return CrystalGraph(**{name: arrays[name] for name in GRAPH_ARRAYS + OPTIONAL_GRAPH_ARRAYS if name in arrays})
