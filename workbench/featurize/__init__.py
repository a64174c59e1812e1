"""Crystal graphs for the models: neighbours, bond-angle triplets, atom features, and the
store cache keyed by the featurizer's configuration. PyTorch Geometric data objects are in
``workbench.featurize.data`` (kept out of this import so that the CLI starts without torch)."""

from workbench.featurize.cache import featurize_structures, load_graphs
from workbench.featurize.featurizer import Featurizer
from workbench.featurize.graph import CrystalGraph, GraphConfig, GraphError, crystal_graph
from workbench.featurize.triplets import bond_angle_triplets

__all__ = [
    "CrystalGraph", "Featurizer", "GraphConfig", "GraphError", "bond_angle_triplets",
    "crystal_graph", "featurize_structures", "load_graphs",
]
