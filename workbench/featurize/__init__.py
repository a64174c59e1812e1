"""Crystal graphs for the models: neighbours, bond-angle triplets, atom features, and the
store cache keyed by the featurizer's configuration. PyTorch Geometric data objects are in
``workbench.featurize.data``.

The names below are imported on first use, so that importing a light module of this
package (``workbench.featurize.config``, read by the command line) does not import
pymatgen and the featurizers.
"""

import importlib

_HOMES = {
    "featurize_structures": "cache", "load_graphs": "cache", "Featurizer": "featurizer",
    "CrystalGraph": "graph", "GraphError": "graph", "crystal_graph": "graph",
    "GraphConfig": "config", "bond_angle_triplets": "triplets",
}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
