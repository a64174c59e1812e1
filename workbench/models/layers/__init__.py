"""Graph layers, one per file."""

from workbench.models.layers.cgcnn_conv import CGCNNConv
from workbench.models.layers.gaussian_expansion import GaussianExpansion

__all__ = ["CGCNNConv", "GaussianExpansion"]
