"""The architectures a model can be built on, by name: where each backbone and its config
live. Kept free of torch, so that the command line lists the names and takes its default
from here without importing torch; :func:`workbench.models.model.backbone_classes` loads them."""

import importlib
from typing import NamedTuple


class Architecture(NamedTuple):
    module: str
    backbone: str  # the nn.Module class in ``module``
    config: str  # its settings dataclass in ``module``

    def load(self) -> tuple[type, type]:
        module = importlib.import_module(self.module)
        return getattr(module, self.backbone), getattr(module, self.config)


ARCHITECTURES = {
    "alignn": Architecture("workbench.models.backbones.alignn", "ALIGNN", "ALIGNNConfig"),
    "cgcnn": Architecture("workbench.models.backbones.cgcnn", "CGCNN", "CGCNNConfig"),
    "megnet": Architecture("workbench.models.backbones.megnet", "MEGNet", "MEGNetConfig"),
    "neighbour-mlp": Architecture("workbench.models.backbones.neighbour_mlp", "NeighbourMLP", "NeighbourMLPConfig"),
    "ocrystalnet": Architecture("workbench.models.backbones.ocrystalnet", "OCrystalNet", "OCrystalNetConfig"),
    "schnet": Architecture("workbench.models.backbones.schnet", "SchNet", "SchNetConfig"),
    "sevennet": Architecture("workbench.models.backbones.sevennet", "SevenNet", "SevenNetConfig"),
}
DEFAULT_ARCHITECTURE = "cgcnn"
