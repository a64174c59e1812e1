"""Graph layers, one per file."""

from workbench.models.layers.alignn_layer import ALIGNNLayer
from workbench.models.layers.cgcnn_conv import CGCNNConv
from workbench.models.layers.communicative_layer import CommunicativeLayer
from workbench.models.layers.edge_gated_conv import EdgeGatedConv
from workbench.models.layers.gaussian_expansion import GaussianExpansion
from workbench.models.layers.megnet_block import MEGNetBlock

__all__ = ["ALIGNNLayer", "CGCNNConv", "CommunicativeLayer", "EdgeGatedConv", "GaussianExpansion", "MEGNetBlock"]
