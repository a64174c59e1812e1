"""The one table of training defaults (free of torch, so that the command line starts fast).

- ``TrainConfig()``: ``workbench train`` on a store of a few thousand labeled structures;
  measured in ``benchmarks/train.md`` (``benchmarks/train_benchmark.py``).
- ``CAMPAIGN_TRAINING``: the ensembles a campaign retrains every round, and a replay of
  one, which learn from tens to a few hundred labels.

The campaign's ``ModelSettings`` and the command line take their defaults from here.
"""

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """How each ensemble member is trained (member i uses seed ``seed + i``), and how the
    ensemble's spread is calibrated after: ``calibration_labels`` validation structures or
    more fit its scale as it comes; with fewer, ``n``, the fitted scale's log is pulled
    towards that of the no-skill scale (at which the spread matches the error of predicting
    the training mean) with the weight ``n / (n + calibration_labels)``, since the mean
    squared z-score of a handful of structures is mostly noise
    (:func:`workbench.train.ensemble.calibration`). With ``latent_neighbours`` and enough
    validation structures, the calibration also weighs each crystal's distance to the
    training crystals into the spread (:func:`workbench.train.ensemble.fit_spread_scales`)."""

    members: int = 4
    epochs: int = 60
    patience: int = 10
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    # k > 0: the learning rate is multiplied by ``decay_factor`` whenever the validation
    # loss has not improved by 1e-4 of itself for k epochs (torch's ReduceLROnPlateau and
    # its default threshold); 0: it stays constant.
    decay_patience: int = 0
    decay_factor: float = 0.5
    bootstrap: bool = False
    seed: int = 0
    # Twenty Gaussian z-scores fix the scale to about 16 %; the demo's two gave ±5.9 μB on 2.35.
    calibration_labels: int = 20
    # k > 0: a crystal's mean distance to its k nearest training crystals in the members'
    # embedding joins the spread, weighed against it on the validation split
    # (workbench.train.neighbours); 0: the members' disagreement alone.
    latent_neighbours: int = 0


# With 45 training structures, batches of 64 meant one optimiser step per epoch; batches
# of 16 at a higher learning rate give the members enough steps to learn from 50-400
# labels. Three members: two gave a noisier spread and fewer hits (benchmarks/replay.md).
CAMPAIGN_TRAINING = TrainConfig(members=3, epochs=60, patience=15, batch_size=16, learning_rate=3e-3)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
