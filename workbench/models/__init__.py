"""Models: a backbone (``backbones/``) plus a head (``heads/``), layers one per file."""

from workbench.models.model import (
    CrystalModel,
    FeaturizerMismatch,
    ModelConfig,
    needs_triplets,
    with_atom_feature_size,
)

__all__ = ["CrystalModel", "FeaturizerMismatch", "ModelConfig", "needs_triplets", "with_atom_feature_size"]
