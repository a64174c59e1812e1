"""Models: a backbone (``backbones/``) plus a head (``heads/``), layers one per file.

The names below are imported on first use, so that the light registry of architecture
names (``workbench.models.architectures``) is read without importing torch.
"""

import importlib

_HOMES = {name: "model" for name in (
    "CrystalModel", "FeaturizerMismatch", "ModelConfig", "needs_triplets", "with_atom_feature_size")}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
