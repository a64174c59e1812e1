"""Replay: a campaign run against a pool whose labels are known, before any DFT is spent.

Per seed: reveal ``initial`` random structures; then, until ``budget`` structures are
revealed, train an ensemble per objective target on what is revealed (its spread
calibrated on a held-out tenth), score the rest by the probability of meeting the
objective, and reveal the best ``batch`` as if DFT had computed them. Random selection
runs beside it from the same initial set. A hit is a revealed structure whose true labels
meet the objective.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import Engine, select

from workbench.acquire.batch import select_batch
from workbench.acquire.objective import Objective
from workbench.acquire.scores import probability_of_objective
from workbench.featurize.cache import featurize_structures, load_graphs
from workbench.featurize.data import CrystalGraphData, graph_to_data
from workbench.featurize.featurizer import Featurizer
from workbench.models import ModelConfig, needs_triplets
from workbench.store.engine import session_scope
from workbench.store.schema import StructureSource, TargetDefinition, TargetKind, TargetValue
from workbench.train.config import TrainConfig
from workbench.train.ensemble import pick_device, train_ensemble

# Share of the revealed structures each round holds out for early stopping and for
# calibrating the ensemble's spread.
VALIDATION_FRACTION = 0.1
# How the ensembles train on a few hundred labels: with 45 training structures, batches of
# 64 meant one optimiser step per epoch; batches of 16 at a higher learning rate give the
# members enough steps to learn from 50-400 labels. Three members, as a campaign has by
# default (two gave a noisier spread and fewer hits: benchmarks/replay.md).
REPLAY_TRAINING = TrainConfig(members=3, epochs=60, patience=15, batch_size=16, learning_rate=3e-3)


@dataclass(frozen=True)
class ReplayConfig:
    source: str
    objective: Objective
    initial: int = 50
    batch: int = 25
    budget: int = 400
    seeds: int = 5
    first_seed: int = 0
    architecture: str = "cgcnn"
    train: TrainConfig = REPLAY_TRAINING
    device: str = "auto"


@dataclass
class ReplayResult:
    """Hits after the initial set and after every batch, per seed, for both strategies."""

    objective: str
    pool: int
    hits_in_pool: int
    revealed: list[int]  # structures revealed at each point of the curves
    hits: list[list[int]] = field(default_factory=list)
    random_hits: list[list[int]] = field(default_factory=list)

    @property
    def hits_at_budget(self) -> list[int]:
        return [curve[-1] for curve in self.hits]

    @property
    def random_hits_at_budget(self) -> list[int]:
        return [curve[-1] for curve in self.random_hits]

    def to_dict(self) -> dict:
        return {**asdict(self), "hits_at_budget": self.hits_at_budget,
                "random_hits_at_budget": self.random_hits_at_budget}


RoundCallback = Callable[[int, int, int], None]  # seed, revealed, hits


def labeled_pool(engine: Engine, source: str, targets: list[str]) -> tuple[list[int], dict[str, np.ndarray]]:
    """Structures of ``source`` labeled for every target, and their scalar values."""
    values: dict[str, dict[int, float]] = {}
    with session_scope(engine) as session:
        in_source = select(StructureSource.structure_id).where(StructureSource.source == source)
        for target in targets:
            definition = session.scalars(select(TargetDefinition).where(TargetDefinition.name == target)).one_or_none()
            if definition is None or definition.kind is not TargetKind.SCALAR:
                raise ValueError(f"replay needs a scalar target named {target!r} in the store")
            values[target] = dict(session.execute(
                select(TargetValue.structure_id, TargetValue.value)
                .where(TargetValue.target_id == definition.id, TargetValue.structure_id.in_(in_source))
            ).all())
    ids = sorted(set.intersection(*(set(column) for column in values.values())))
    if not ids:
        raise ValueError(f"no structure of source {source!r} is labeled for all of {targets}")
    return ids, {target: np.array([column[i] for i in ids]) for target, column in values.items()}


def _fit_and_predict(data: list[CrystalGraphData], y: np.ndarray, train_positions: np.ndarray,
                     predict_positions: np.ndarray, model_config: ModelConfig, config: TrainConfig,
                     rng: np.random.Generator, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    shuffled = rng.permutation(train_positions)
    held_out = max(1, int(len(shuffled) * VALIDATION_FRACTION))
    labeled = []
    for position in shuffled:
        item = data[position].clone()
        item.y = torch.tensor([y[position]], dtype=torch.float32)
        labeled.append(item)
    ensemble, _ = train_ensemble(model_config, TargetKind.SCALAR, labeled[held_out:], labeled[:held_out],
                                 config, device=device)
    mean, std = ensemble.predict([data[position] for position in predict_positions], device=device)
    return mean.numpy(), std.numpy()


def replay(engine: Engine, config: ReplayConfig, *, featurizer: Featurizer | None = None,
           on_round: RoundCallback | None = None) -> ReplayResult:
    featurizer = featurizer or Featurizer()
    targets = config.objective.targets
    ids, values = labeled_pool(engine, config.source, targets)
    if config.budget > len(ids) or config.initial >= config.budget:
        raise ValueError(f"need initial < budget <= pool size; pool has {len(ids)} structures")
    meets = config.objective.holds(values)
    featurize_structures(engine, featurizer, structure_ids=ids)
    graphs = load_graphs(engine, featurizer.key, ids)
    table = featurizer.feature_table()
    triplets = needs_triplets(config.architecture)
    data = [graph_to_data(graphs[i], table, triplets=triplets) for i in ids]
    device = pick_device(config.device)
    model_configs = {target: ModelConfig(config.architecture, "scalar", target, featurizer.key) for target in targets}
    checkpoints = list(range(config.initial, config.budget, config.batch)) + [config.budget]
    result = ReplayResult(str(config.objective), len(ids), int(meets.sum()), checkpoints)

    for seed in range(config.first_seed, config.first_seed + config.seeds):
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(ids))
        result.random_hits.append([int(meets[order[:count]].sum()) for count in checkpoints])
        revealed = list(order[: config.initial])
        curve = [int(meets[revealed].sum())]
        while len(revealed) < config.budget:
            hidden = np.setdiff1d(np.arange(len(ids)), revealed)
            train_config = TrainConfig(**{**asdict(config.train), "seed": seed * 1000 + len(revealed)})
            predictions = {
                target: _fit_and_predict(data, values[target], np.array(revealed), hidden,
                                         model_configs[target], train_config, rng, device)
                for target in targets
            }
            scores = probability_of_objective(config.objective, predictions)
            size = min(config.batch, config.budget - len(revealed))
            revealed.extend(hidden[select_batch(scores, size)].tolist())
            curve.append(int(meets[revealed].sum()))
            if on_round:
                on_round(seed, len(revealed), curve[-1])
        result.hits.append(curve)
    return result


def discovery_plot(result: ReplayResult, path: Path) -> Path:
    """Hits against structures revealed: each seed's campaign and random, medians bold."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axis = figure.subplots()
    for curves, colour, label in ((result.hits, "tab:blue", "campaign"), (result.random_hits, "tab:grey", "random")):
        for curve in curves:
            axis.plot(result.revealed, curve, color=colour, alpha=0.3, linewidth=0.8)
        axis.plot(result.revealed, np.median(np.array(curves), axis=0), color=colour, linewidth=2,
                  label=f"{label} (median of {len(curves)})")
    axis.set(xlabel="structures computed", ylabel="hits found",
             title=f"{result.objective}: {result.hits_in_pool} hits in {result.pool}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path
