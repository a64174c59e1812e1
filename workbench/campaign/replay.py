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

With a prior (``model.prior``), the first objective target's ensemble learns the residual
against the prior's fit, fitted on the round's training part, and the round ranks as a
campaign round does (:mod:`workbench.acquire.basis`): by the fit alone until the model
beats it. A campaign compares the two on its test split; the replay has none and compares
them on its held-out part (the same tenth that stops training early and calibrates the
spread).

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

from workbench.acquire.basis import MODEL_MAE, PRIOR_RMSE, Basis, prior_predictions, ranking_basis
from workbench.acquire.cost import expected_costs
from workbench.acquire.objective import Objective, parse_objective
from workbench.acquire.plan import AcquisitionSettings, plan_batch
from workbench.acquire.scores import SCORE_FUNCTIONS
from workbench.campaign.config import CampaignConfig, ModelSettings, campaign_atom_features
from workbench.dft.presets import load_preset
from workbench.errors import InputError
from workbench.featurize.cache import featurize_structures, load_graphs
from workbench.featurize.config import ATOM_FEATURES
from workbench.featurize.data import CrystalGraphData, graph_to_data
from workbench.featurize.featurizer import Featurizer
from workbench.models import CrystalModel, ModelConfig, needs_triplets, with_atom_feature_size
from workbench.models.model import featurizer_for
from workbench.models.prior import PriorFit, composition_of
from workbench.store.engine import make_engine, session_scope
from workbench.store.schema import StructureSource, TargetDefinition, TargetKind, TargetValue
from workbench.train.config import CAMPAIGN_TRAINING, TrainConfig, available_cores
from workbench.train.ensemble import Ensemble, pick_device, train_ensemble
from workbench.train.pipeline import attach_prior, fit_prior, prior_metrics

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
    policy weighs. ``prior``: a stored scalar target whose fit the first objective
    target's ensemble learns the residual of, as with a campaign's ``model.prior``.
    ``atom_features``: ``None`` gives a campaign's for the architecture
    (:func:`~workbench.campaign.config.campaign_atom_features`)."""

    source: str
    objective: Objective
    initial: int = 50
    budget: int = 400
    seeds: int = 5
    first_seed: int = 0
    architecture: str = _CAMPAIGN_MODEL.architecture
    atom_features: str | None = None
    backbone: dict = field(default_factory=dict)
    prior: str | None = None
    train: TrainConfig = CAMPAIGN_TRAINING
    acquisition: AcquisitionSettings = REPLAY_ACQUISITION
    preset: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.atom_features is None:
            object.__setattr__(self, "atom_features", campaign_atom_features(self.architecture))
        if self.atom_features not in ATOM_FEATURES:
            raise InputError(f"unknown atom features {self.atom_features!r}; choose one of {', '.join(ATOM_FEATURES)}",
                             field="atom_features")

    def featurizer(self) -> Featurizer:
        """The campaign's featurizer (``ModelSettings.featurizer``): the graphs the
        architecture declares, with these atom features."""
        return featurizer_for(self.architecture, self.atom_features)


def replay_config(source: str, *, objective: list[str] | None = None, campaign: CampaignConfig | None = None,
                  batch: int | None = None, architecture: str | None = None, members: int | None = None,
                  epochs: int | None = None, patience: int | None = None, **fields) -> ReplayConfig:
    """The replay of ``campaign`` (its objective, acquisition policy and batch, model with
    its atom features and prior, training and DFT preset), or of a campaign's defaults;
    each argument given replaces the corresponding setting (another ``architecture`` takes
    its own default atom features unless they are named), ``fields`` (``initial``,
    ``budget``, ``seeds``, ``atom_features``, ``prior`` (``None``: none), ...) those of
    :class:`ReplayConfig`."""
    objective = objective or (campaign.objective if campaign else None)
    if not objective:
        raise InputError("give an objective or a campaign config", field="objective")
    base = ReplayConfig(source=source, objective=parse_objective(objective))
    if campaign is not None:
        base = dataclasses.replace(base, architecture=campaign.model.architecture,
                                   atom_features=campaign.model.atom_features, prior=campaign.model.prior,
                                   backbone=dict(campaign.model.backbone),
                                   train=campaign.model.train_config(seed=0),
                                   acquisition=campaign.acquisition.settings(), preset=campaign.dft.preset)
    training = {name: value for name, value in (("members", members), ("epochs", epochs), ("patience", patience))
                if value is not None}
    if architecture and architecture != base.architecture:  # that architecture's atom features unless named
        fields = {"atom_features": None} | fields
    return dataclasses.replace(
        base, architecture=architecture or base.architecture, train=dataclasses.replace(base.train, **training),
        acquisition=dataclasses.replace(base.acquisition, batch=batch or base.acquisition.batch), **fields)


@dataclass
class ReplayResult:
    """Hits after the initial set and after every batch, per seed, for both strategies, and
    per seed what each round ranked by (``bases``: ``"model"``, or ``"prior"`` while the
    model did not beat its prior's fit; empty in records from before it was kept)."""

    objective: str
    pool: int
    hits_in_pool: int
    revealed: list[int]  # structures revealed at each point of the curves
    hits: list[list[int]] = field(default_factory=list)
    random_hits: list[list[int]] = field(default_factory=list)
    bases: list[list[str]] = field(default_factory=list)

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
    """The labeled pool as every seed reads it; with a prior, each structure's value of it
    (``prior``, also on its graph as ``data.prior``)."""

    values: dict[str, np.ndarray]
    meets: np.ndarray
    data: list[CrystalGraphData]
    costs: np.ndarray | None
    prior: np.ndarray | None
    compositions: list[dict[str, float]]


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
    data = [graph_to_data(graphs[i], table, triplets=triplets) for i in ids]
    prior = None
    if config.prior:  # every structure needs it, as every campaign candidate does: refused if one lacks it
        attach_prior(engine, config.prior, ids, data, target=targets[0], kind=TargetKind.SCALAR)
        prior = np.array([item.prior.item() for item in data])
    return _Pool(values, config.objective.holds(values), data, costs, prior,
                 [composition_of(item.atomic_numbers.tolist()) for item in data] if config.prior else [])


@dataclass
class _Fit:
    """A round's ensemble for one target; with a prior, its fit and the held-out
    ``metrics`` that :func:`~workbench.acquire.basis.ranking_basis` compares (the model's
    MAE, the fit's MAE and RMSE)."""

    ensemble: Ensemble
    prior_fit: PriorFit | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def _fit(pool: _Pool, target: str, train_positions: np.ndarray, model_config: ModelConfig, config: TrainConfig,
         rng: np.random.Generator, device: torch.device, prior: str | None) -> _Fit:
    """The ensemble trained on all but a held-out tenth of ``train_positions``; with
    ``prior``, on the residual of the prior's fit fitted on that training part, and the
    model and the fit measured on the held-out part."""
    shuffled = rng.permutation(train_positions)
    held_out = max(1, int(len(shuffled) * VALIDATION_FRACTION))
    labeled = []
    for position in shuffled:
        item = pool.data[position].clone()
        item.y = torch.tensor([pool.values[target][position]], dtype=torch.float32)
        labeled.append(item)
    train, validation = labeled[held_out:], labeled[:held_out]
    prior_fit = None
    if prior:
        prior_fit = fit_prior(prior, train, per_atom=True)  # a campaign's scalar heads pool by mean, as the replay's do
        model_config = dataclasses.replace(model_config, prior=asdict(prior_fit))
    ensemble, _ = train_ensemble(model_config, TargetKind.SCALAR, train, validation, config, device=device)
    if prior_fit is None:
        return _Fit(ensemble)
    mean, _ = ensemble.predict(validation, device=device)
    error = np.abs(mean.numpy() - pool.values[target][shuffled[:held_out]])
    return _Fit(ensemble, prior_fit, {MODEL_MAE: float(error.mean()), **prior_metrics(prior_fit, validation)})


@torch.no_grad()
def embed(model: CrystalModel, items: list[CrystalGraphData], device: torch.device) -> np.ndarray:
    """The model's pooled representation of each item, computed on ``device`` (for diverse
    batches: a replay's and a campaign round's)."""
    from torch_geometric.data import Batch

    return model.to(device).eval().embed(Batch.from_data_list(items).to(device)).cpu().numpy()


SeedCurves = tuple[list[int], list[int], list[str]]  # the campaign's hits, random selection's, each round's basis


def _replay_seed(pool: _Pool, config: ReplayConfig, featurizer: Featurizer, seed: int,
                 on_round: RoundCallback | None) -> SeedCurves:
    """One seed: the campaign's curve of hits, random selection's, and what each round
    ranked by (a campaign round's choice: :func:`~workbench.acquire.basis.ranking_basis`)."""
    targets = config.objective.targets
    first = config.objective.constraints[0]
    device = pick_device(config.device)
    backbone = with_atom_feature_size(config.architecture, config.backbone, featurizer)
    model_configs = {target: ModelConfig(config.architecture, "scalar", target, featurizer.key,
                                         backbone=dict(backbone)) for target in targets}
    count = len(pool.meets)
    rng = np.random.default_rng(seed)
    order = rng.permutation(count)
    random_curve = [int(pool.meets[order[:revealed]].sum()) for revealed in checkpoints(config)]
    revealed = list(order[: config.initial])
    curve = [int(pool.meets[revealed].sum())]
    bases = []
    needs_best = SCORE_FUNCTIONS[config.acquisition.function].needs_best_label
    while len(revealed) < config.budget:
        hidden = np.setdiff1d(np.arange(count), revealed)
        train_config = dataclasses.replace(config.train, seed=seed * 1000 + len(revealed))
        # As a campaign's retrain: the prior is the first objective target's only.
        fits = {target: _fit(pool, target, np.array(revealed), model_configs[target], train_config, rng, device,
                             prior=config.prior if target == first.target else None) for target in targets}
        ensembles = {target: fit.ensemble for target, fit in fits.items()}
        leading = fits[first.target]
        basis = ranking_basis(leading.metrics).basis
        bases.append(basis.value)
        predictions = {}
        for target, ensemble in ensembles.items():
            if target == first.target and basis is Basis.PRIOR:
                predictions[target] = prior_predictions(leading.prior_fit, pool.prior[hidden],
                                                        [pool.compositions[position] for position in hidden],
                                                        leading.metrics[PRIOR_RMSE])
                continue
            mean, std = ensemble.predict([pool.data[position] for position in hidden], device=device)
            predictions[target] = (mean.numpy(), std.numpy())
        known = pool.values[first.target][revealed]
        plan = plan_batch(
            predictions, config.objective, config.acquisition, size=min(config.acquisition.batch,
                                                                         config.budget - len(revealed)),
            costs=None if pool.costs is None else pool.costs[hidden],
            embeddings=lambda positions, hidden=hidden, member=ensembles[first.target].members[0]: embed(
                member, [pool.data[hidden[position]] for position in positions], device),
            best_labeled=(float(known.max() if first.maximizes else known.min()) if needs_best else None), rng=rng)
        revealed.extend(hidden[plan.chosen].tolist())
        curve.append(int(pool.meets[revealed].sum()))
        if on_round:
            on_round(seed, len(revealed), curve[-1])
    return curve, random_curve, bases


def _replay_seed_in_worker(database_url: str, config: ReplayConfig, featurizer: Featurizer, seed: int,
                           events=None) -> SeedCurves:
    """:func:`_replay_seed` in a worker: the pool read from the store at ``database_url``,
    each round posted to the queue ``events`` if given."""
    engine = make_engine(database_url)
    try:
        pool = _load_pool(engine, config, featurizer)
    finally:
        engine.dispose()
    return _replay_seed(pool, config, featurizer, seed, _Post(events) if events is not None else None)


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
    or on ``executor`` (``on_round`` then hears a seed's rounds when it is done). The
    graphs are ``featurizer``'s, by default the campaign's (:meth:`ReplayConfig.featurizer`)."""
    featurizer = featurizer or config.featurizer()
    ids, values = labeled_pool(engine, config.source, config.objective.targets)
    featurize_structures(engine, featurizer, structure_ids=ids)
    seeds = list(range(config.first_seed, config.first_seed + config.seeds))
    if executor is None and min(jobs, len(seeds)) <= 1:
        pool = _load_pool(engine, config, featurizer)
        curves = [_replay_seed(pool, config, featurizer, seed, on_round) for seed in seeds]
    else:
        url = engine.url.render_as_string(hide_password=False)
        _load_pool(engine, config, featurizer)  # bad settings fail here, before any worker starts
        curves = (_on_executor(executor, url, config, featurizer, seeds, on_round) if executor is not None
                  else _in_processes(min(jobs, len(seeds)), url, config, featurizer, seeds, on_round))
    return ReplayResult(str(config.objective), len(ids), int(config.objective.holds(values).sum()), checkpoints(config),
                        [curve for curve, _, _ in curves], [random_curve for _, random_curve, _ in curves],
                        [bases for _, _, bases in curves])


def _on_executor(executor: Executor, url: str, config: ReplayConfig, featurizer: Featurizer, seeds: list[int],
                 on_round: RoundCallback | None) -> list[SeedCurves]:
    futures = [executor.submit(_replay_seed_in_worker, url, config, featurizer, seed) for seed in seeds]
    curves = []
    for seed, future in zip(seeds, futures, strict=True):
        curves.append(future.result())
        for revealed, hits in zip(checkpoints(config)[1:], curves[-1][0][1:], strict=True):
            if on_round:
                on_round(seed, revealed, hits)
    return curves


def _in_processes(workers: int, url: str, config: ReplayConfig, featurizer: Featurizer, seeds: list[int],
                  on_round: RoundCallback | None) -> list[SeedCurves]:
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
