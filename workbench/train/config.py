"""Training settings (kept free of torch so that the command line starts fast)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """How each ensemble member is trained (member i uses seed ``seed + i``)."""

    members: int = 5
    epochs: int = 300
    patience: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    bootstrap: bool = False
    seed: int = 0
