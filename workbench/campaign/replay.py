"""Replay: a campaign's policy run against a pool whose labels are known, before any DFT
is spent.

Per seed: reveal ``initial`` random structures; then, until ``budget`` structures are
revealed, train an ensemble per objective target on what is revealed (the campaign's
model and training settings; the spread calibrated on a held-out tenth) and choose the
next batch with :func:`~workbench.acquire.plan.plan_batch`, the function a campaign round
calls, under the campaign's acquisition policy (by default: the probability of meeting
the objective, the batch spread out in the first target's ensemble's embedding space;
weighed by expected DFT cost when the policy asks), revealing it as if DFT had computed
it. Random selection runs beside it from the same initial set. A hit is a revealed
structure whose true labels meet the objective.

Seeds are independent: they run in ``jobs`` worker processes of this machine, or on an
executor (e.g. a Dask client's ``get_executor()``).
"""

import dataclasses
import multiprocessing
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import Engine, select

from workbench.acquire.cost import expected_costs
from workbench.acquire.objective import Objective, parse_objective
from workbench.acquire.plan import AcquisitionSettings, plan_batch
from workbench.acquire.scores import SCORE_FUNCTIONS
from workbench.campaign.config import CampaignConfig, ModelSettings
from workbench.dft.presets import load_preset
from workbench.errors import InputError
from workbench.featurize.cache import featurize_structures, load_graphs
from workbench.featurize.data import CrystalGraphData, graph_to_data
from workbench.featurize.featurizer import Featurizer
from workbench.models import CrystalModel, ModelConfig, needs_triplets
from workbench.models.model import graph_for
from workbench.store.engine import make_engine, session_scope
from workbench.store.schema import StructureSource, TargetDefinition, TargetKind, TargetValue
from workbench.train.config import CAMPAIGN_TRAINING, TrainConfig, available_cores
from workbench.train.ensemble import Ensemble, pick_device, train_ensemble

# Share of the revealed structures each round holds out for early stopping and for
# calibrating the ensemble's spread.
VALIDATION_FRACTION = 0.1
_CAMPAIGN_MODEL = ModelSettings()
# A campaign's policy with a larger batch: 350 reveals in 14 rounds of training, not 59.
REPLAY_ACQUISITION = AcquisitionSettings(batch=25)


@dataclass(frozen=True)
class ReplayConfig:
    """A replay; everything but the pool and objective defaults to a campaign's defaults
    (``ModelSettings``, ``CAMPAIGN_TRAINING``, ``AcquisitionSettings``) but for the batch
    (:data:`REPLAY_ACQUISITION`). ``preset``: the DFT preset whose expected costs a cost-aware
    policy weighs."""

    source: str
    objective: Objective
    initial: int = 50
    budget: int = 400
    seeds: int = 5
    first_seed: int = 0
    architecture: str = _CAMPAIGN_MODEL.architecture
    backbone: dict = field(default_factory=dict)
    train: TrainConfig = CAMPAIGN_TRAINING
    acquisition: AcquisitionSettings = REPLAY_ACQUISITION
    preset: str | None = None
    device: str = "auto"


def replay_config(source: str, *, objective: list[str] | None = None, campaign: CampaignConfig | None = None,
                  batch: int | None = None, architecture: str | None = None, members: int | None = None,
                  epochs: int | None = None, patience: int | None = None, **fields) -> ReplayConfig:
    """The replay of ``campaign`` (its objective, acquisition policy and batch, model,
    training and DFT preset), or of a campaign's defaults; each argument given replaces
    the corresponding setting, ``fields`` (``initial``, ``budget``, ``seeds``, ...) those of
    :class:`ReplayConfig`."""
    objective = objective or (campaign.objective if campaign else None)
    if not objective:
        raise InputError("give an objective or a campaign config", field="objective")
    base = ReplayConfig(source=source, objective=parse_objective(objective))
    if campaign is not None:
        base = dataclasses.replace(base, architecture=campaign.model.architecture,
                                   backbone=dict(campaign.model.backbone),
                                   train=campaign.model.train_config(seed=0),
                                   acquisition=campaign.acquisition.settings(), preset=campaign.dft.preset)
    training = {name: value for name, value in (("members", members), ("epochs", epochs), ("patience", patience))
                if value is not None}
    return dataclasses.replace(
        base, architecture=architecture or base.architecture, train=dataclasses.replace(base.train, **training),
        acquisition=dataclasses.replace(base.acquisition, batch=batch or base.acquisition.batch), **fields)


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


def checkpoints(config: ReplayConfig) -> list[int]:
    """Structures revealed after the initial set and after each batch."""
    return list(range(config.initial, config.budget, config.acquisition.batch)) + [config.budget]


def labeled_pool(engine: Engine, source: str, targets: list[str]) -> tuple[list[int], dict[str, np.ndarray]]:
    """Structures of ``source`` labeled for every target, and their scalar values."""
    values: dict[str, dict[int, float]] = {}
    with session_scope(engine) as session:
        in_source = select(StructureSource.structure_id).where(StructureSource.source == source)
        for target in targets:
            definition = session.scalars(select(TargetDefinition).where(TargetDefinition.name == target)).one_or_none()
            if definition is None or definition.kind is not TargetKind.SCALAR:
                raise InputError(f"replay needs a scalar target named {target!r} in the store", field="objective")
            values[target] = dict(session.execute(
                select(TargetValue.structure_id, TargetValue.value)
                .where(TargetValue.target_id == definition.id, TargetValue.structure_id.in_(in_source))
            ).all())
    ids = sorted(set.intersection(*(set(column) for column in values.values())))
    if not ids:
        raise InputError(f"no structure of source {source!r} is labeled for all of {targets}", field="source")
    return ids, {target: np.array([column[i] for i in ids]) for target, column in values.items()}


@dataclass
class _Pool:
    """The labeled pool as every seed reads it."""

    values: dict[str, np.ndarray]
    meets: np.ndarray
    data: list[CrystalGraphData]
    costs: np.ndarray | None


def _load_pool(engine: Engine, config: ReplayConfig, featurizer: Featurizer) -> _Pool:
    targets = config.objective.targets
    ids, values = labeled_pool(engine, config.source, targets)
    if config.budget > len(ids) or config.initial >= config.budget:
        raise InputError(f"need initial < budget <= pool size; pool has {len(ids)} structures", field="budget")
    if config.acquisition.cost_aware and config.preset is None:
        raise InputError("a cost-aware replay needs the DFT preset whose costs it weighs", field="preset")
    graphs = load_graphs(engine, featurizer.key, ids)
    table = featurizer.feature_table()
    triplets = needs_triplets(config.architecture)
    costs = expected_costs(engine, load_preset(config.preset), ids) if config.acquisition.cost_aware else None
    return _Pool(values, config.objective.holds(values), [graph_to_data(graphs[i], table, triplets=triplets)
                                                          for i in ids], costs)


def _fit(pool: _Pool, target: str, train_positions: np.ndarray, model_config: ModelConfig, config: TrainConfig,
         rng: np.random.Generator, device: torch.device) -> Ensemble:
    shuffled = rng.permutation(train_positions)
    held_out = max(1, int(len(shuffled) * VALIDATION_FRACTION))
    labeled = []
    for position in shuffled:
        item = pool.data[position].clone()
        item.y = torch.tensor([pool.values[target][position]], dtype=torch.float32)
        labeled.append(item)
    ensemble, _ = train_ensemble(model_config, TargetKind.SCALAR, labeled[held_out:], labeled[:held_out],
                                 config, device=device)
    return ensemble


@torch.no_grad()
def _embed(model: CrystalModel, items: list[CrystalGraphData], device: torch.device) -> np.ndarray:
    from torch_geometric.data import Batch

    return model.to(device).eval().embed(Batch.from_data_list(items).to(device)).cpu().numpy()


def _replay_seed(pool: _Pool, config: ReplayConfig, featurizer_key: str, seed: int,
                 on_round: RoundCallback | None) -> tuple[list[int], list[int]]:
    """One seed: the campaign's curve of hits, and random selection's."""
    targets = config.objective.targets
    first = config.objective.constraints[0]
    device = pick_device(config.device)
    model_configs = {target: ModelConfig(config.architecture, "scalar", target, featurizer_key,
                                         backbone=dict(config.backbone)) for target in targets}
    count = len(pool.meets)
    rng = np.random.default_rng(seed)
    order = rng.permutation(count)
    random_curve = [int(pool.meets[order[:revealed]].sum()) for revealed in checkpoints(config)]
    revealed = list(order[: config.initial])
    curve = [int(pool.meets[revealed].sum())]
    needs_best = SCORE_FUNCTIONS[config.acquisition.function].needs_best_label
    while len(revealed) < config.budget:
        hidden = np.setdiff1d(np.arange(count), revealed)
        train_config = dataclasses.replace(config.train, seed=seed * 1000 + len(revealed))
        ensembles = {target: _fit(pool, target, np.array(revealed), model_configs[target], train_config, rng, device)
                     for target in targets}
        predictions = {}
        for target, ensemble in ensembles.items():
            mean, std = ensemble.predict([pool.data[position] for position in hidden], device=device)
            predictions[target] = (mean.numpy(), std.numpy())
        known = pool.values[first.target][revealed]
        plan = plan_batch(
            predictions, config.objective, config.acquisition, size=min(config.acquisition.batch,
                                                                         config.budget - len(revealed)),
            costs=None if pool.costs is None else pool.costs[hidden],
            embeddings=lambda positions, hidden=hidden, member=ensembles[first.target].members[0]: _embed(
                member, [pool.data[hidden[position]] for position in positions], device),
            best_labeled=(float(known.max() if first.maximizes else known.min()) if needs_best else None), rng=rng)
        revealed.extend(hidden[plan.chosen].tolist())
        curve.append(int(pool.meets[revealed].sum()))
        if on_round:
            on_round(seed, len(revealed), curve[-1])
    return curve, random_curve


def _replay_seed_in_worker(database_url: str, config: ReplayConfig, featurizer: Featurizer, seed: int,
                           events=None) -> tuple[list[int], list[int]]:
    """:func:`_replay_seed` in a worker: the pool read from the store at ``database_url``,
    each round posted to the queue ``events`` if given."""
    engine = make_engine(database_url)
    try:
        pool = _load_pool(engine, config, featurizer)
    finally:
        engine.dispose()
    return _replay_seed(pool, config, featurizer.key, seed, _Post(events) if events is not None else None)


@dataclass(frozen=True)
class _Post:
    """A round callback that posts the round to a queue (picklable, to run in a worker)."""

    queue: object

    def __call__(self, *event) -> None:
        self.queue.put(event)


def replay(engine: Engine, config: ReplayConfig, *, featurizer: Featurizer | None = None,
           on_round: RoundCallback | None = None, jobs: int = 1, executor: Executor | None = None) -> ReplayResult:
    """Every seed of ``config``: in this process, in ``jobs`` worker processes (each with
    an equal share of the cores as torch threads; ``on_round`` still hears every round),
    or on ``executor`` (``on_round`` then hears a seed's rounds when it is done)."""
    featurizer = featurizer or Featurizer(graph_for(config.architecture))
    ids, values = labeled_pool(engine, config.source, config.objective.targets)
    featurize_structures(engine, featurizer, structure_ids=ids)
    seeds = list(range(config.first_seed, config.first_seed + config.seeds))
    if executor is None and min(jobs, len(seeds)) <= 1:
        pool = _load_pool(engine, config, featurizer)
        curves = [_replay_seed(pool, config, featurizer.key, seed, on_round) for seed in seeds]
    else:
        url = engine.url.render_as_string(hide_password=False)
        _load_pool(engine, config, featurizer)  # bad settings fail here, before any worker starts
        curves = (_on_executor(executor, url, config, featurizer, seeds, on_round) if executor is not None
                  else _in_processes(min(jobs, len(seeds)), url, config, featurizer, seeds, on_round))
    return ReplayResult(str(config.objective), len(ids), int(config.objective.holds(values).sum()), checkpoints(config),
                        [curve for curve, _ in curves], [random_curve for _, random_curve in curves])


def _on_executor(executor: Executor, url: str, config: ReplayConfig, featurizer: Featurizer, seeds: list[int],
                 on_round: RoundCallback | None) -> list[tuple[list[int], list[int]]]:
    futures = [executor.submit(_replay_seed_in_worker, url, config, featurizer, seed) for seed in seeds]
    curves = []
    for seed, future in zip(seeds, futures, strict=True):
        curves.append(future.result())
        for revealed, hits in zip(checkpoints(config)[1:], curves[-1][0][1:], strict=True):
            if on_round:
                on_round(seed, revealed, hits)
    return curves


def _in_processes(workers: int, url: str, config: ReplayConfig, featurizer: Featurizer, seeds: list[int],
                  on_round: RoundCallback | None) -> list[tuple[list[int], list[int]]]:
    """The seeds in a pool of ``workers`` fresh processes ("spawn": safe with CUDA and with
    torch's threads); their rounds come back through a queue for ``on_round``."""
    context = multiprocessing.get_context("spawn")
    threads = max(1, available_cores() // workers)
    with context.Manager() as manager, ProcessPoolExecutor(
            workers, mp_context=context, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        events = manager.Queue()
        futures = {pool.submit(_replay_seed_in_worker, url, config, featurizer, seed, events): seed for seed in seeds}
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            while not events.empty():
                event = events.get()
                if on_round:
                    on_round(*event)
        return [future.result() for future in futures]


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
