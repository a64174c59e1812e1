"""Train, evaluate and register a model; write its predictions into the store.

``train_and_register`` is what ``workbench train`` (and the campaign's retrain step)
runs: featurize what is missing, split the labeled structures by dedup key, train the
ensemble, evaluate it beside the baselines on the test split, record everything in one
MLflow run, register the ensemble, and record the version in ``model_versions``.

With a ``prior`` (a stored scalar target, e.g. ``sevennet.formation_energy_per_atom``),
the ensemble learns the residual of the target against its fit on the prior and on
composition, fitted on the training split; the fit is saved in every member's config and
added back wherever the model predicts, which then needs the prior's stored value.
"""

import math
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import torch
from sqlalchemy import Engine, select

from workbench.errors import InputError, NotFound
from workbench.featurize.cache import featurize_structures, load_graphs
from workbench.featurize.data import graph_to_data
from workbench.featurize.featurizer import Featurizer
from workbench.models import ModelConfig, needs_triplets, with_atom_feature_size
from workbench.models.architectures import DEFAULT_ARCHITECTURE
from workbench.models.heads import POOLING
from workbench.models.model import check_atom_features
from workbench.models.prior import PriorFit, composition_of
from workbench.settings import Settings
from workbench.store.bulk import insert_ignoring_duplicates, one_of
from workbench.store.engine import session_scope
from workbench.store.queries import structures_where
from workbench.store.schema import Featurizer as FeaturizerRow
from workbench.store.schema import (
    ModelVersion,
    Prediction,
    Structure,
    TargetDefinition,
    TargetKind,
    TargetValue,
)
from workbench.train.config import TrainConfig, available_cores
from workbench.train.dataset import load_labeled_graphs
from workbench.train.ensemble import (
    Ensemble,
    EpochCallback,
    MemberCallback,
    MemberHistory,
    pick_device,
    train_ensemble,
)
from workbench.train.kinds import KINDS, kind_of_head
from workbench.train.registry import (
    download_ensemble,
    log_ensemble,
    resolve,
    set_aliases,
    use_experiment,
)
from workbench.train.splits import grouped_split

PREDICT_CHUNK = 1000
# The fewest labels train_and_register accepts: it holds out validation and test structures.
MIN_LABELS = 10


@dataclass(frozen=True)
class TrainRequest:
    """What to train. ``pooling`` ("mean" or "sum") applies to scalar targets;
    ``conserve_total`` makes per-site values sum to zero per structure (charges);
    ``spectrum_latent`` makes a spectrum head predict the code of an autoencoder of that
    latent size (AE-ALIGNN's 12), decoded by its frozen decoder. The backbone's
    ``atom_feature_size`` comes from the featurizer (``Featurizer(atom_features="ofm")``
    for OCrystalNet, or for OGCNN with ``cgcnn``). ``workers``: processes that train the
    members side by side (default: one per available core, at most one per member).
    ``prior``: a stored scalar target; the ensemble learns the residual of the target
    against its fit on that target and on composition (:class:`~workbench.models.prior.PriorFit`;
    scalar targets only; every labeled structure needs its value)."""

    target: str
    name: str
    architecture: str = DEFAULT_ARCHITECTURE
    train: TrainConfig = field(default_factory=TrainConfig)
    featurizer: Featurizer = field(default_factory=Featurizer)
    backbone: dict = field(default_factory=dict)
    pooling: str = "mean"
    conserve_total: bool = False
    spectrum_latent: int | None = None
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    champion: bool = False
    device: str = "auto"
    workers: int | None = None
    prior: str | None = None


@dataclass(frozen=True)
class TrainResult:
    model_version_id: int
    name: str
    registry_version: int
    run_id: str
    aliases: list[str]
    metrics: dict[str, float]


def train_and_register(engine: Engine, settings: Settings, request: TrainRequest, *,
                       executor: Executor | None = None, on_epoch: EpochCallback | None = None,
                       on_member: MemberCallback | None = None,
                       member_executor: Executor | None = None) -> TrainResult:
    """``executor`` featurizes (default: this process); ``member_executor`` trains the
    ensemble's members in parallel (e.g. on a Dask cluster), else ``request.workers``
    processes here do. ``on_epoch`` and ``on_member`` report progress
    (:func:`~workbench.train.ensemble.train_ensemble`)."""
    definition = check_request(engine, request)
    experiment_id = use_experiment(settings, request.name)
    featurizer = request.featurizer
    featurize_structures(engine, featurizer, executor=executor)
    labeled = load_labeled_graphs(engine, request.target, featurizer,
                                  triplets=needs_triplets(request.architecture))
    if len(labeled.data) < MIN_LABELS:
        raise InputError(f"target {request.target!r} has {len(labeled.data)} labeled structures; "
                         f"need {MIN_LABELS} or more")
    if request.prior:
        attach_prior(engine, request.prior, labeled.structure_ids, labeled.data, target=request.target,
                     kind=labeled.kind)
    split = grouped_split(labeled.structure_ids, labeled.dedup_keys, validation=request.validation_fraction,
                          test=request.test_fraction, seed=request.split_seed)
    if not split.train:
        raise InputError(f"target {request.target!r}: its {len(labeled.data)} labeled structures fall in "
                         f"{len(set(labeled.dedup_keys))} dedup groups, and the validation and test splits take "
                         "them all (a group never straddles two splits); label more distinct structures",
                         field="validation_fraction")
    train, validation, test = (labeled.subset(ids) for ids in (split.train, split.validation, split.test))
    backbone = with_atom_feature_size(request.architecture, request.backbone, featurizer)
    spec = KINDS[labeled.kind]
    prior = (fit_prior(request.prior, train, per_atom=not POOLING[request.pooling].extensive)
             if request.prior else None)
    model_config = ModelConfig(request.architecture, spec.head, request.target, featurizer.key, backbone=backbone,
                               head_options=spec.head_options(definition, request),
                               prior=asdict(prior) if prior else None)
    device = pick_device(request.device)
    ensemble, histories = train_ensemble(model_config, labeled.kind, train, validation, request.train,
                                         device=device, on_epoch=on_epoch, on_member=on_member,
                                         executor=member_executor, workers=request.workers or available_cores())

    with tempfile.TemporaryDirectory() as scratch, mlflow.start_run(experiment_id=experiment_id, run_name=request.name) as run:
        workdir = Path(scratch)
        mlflow.log_params({
            "target": request.target, "kind": labeled.kind.value, "architecture": request.architecture,
            "featurizer_key": featurizer.key, "device": device.type,
            "train_structures": len(train), "validation_structures": len(validation), "test_structures": len(test),
            **{f"train.{key}": value for key, value in asdict(request.train).items()},
            **{f"graph.{key}": value for key, value in asdict(featurizer.graph).items()},
            **{f"head.{key}": value for key, value in model_config.head_options.items()},
            **{f"backbone.{key}": value for key, value in model_config.backbone.items()},
            **(prior.params() if prior else {}),
            **(ensemble.calibration.params() if ensemble.calibration else {"calibration.method": "none"}),
        })
        for member, history in enumerate(histories):
            for epoch, (loss, val, rate) in enumerate(zip(history.train_loss, history.validation_loss,
                                                          history.learning_rate, strict=True)):
                mlflow.log_metrics({f"member{member}.train_loss": loss, f"member{member}.validation_loss": val,
                                    f"member{member}.learning_rate": rate}, step=epoch)
            mlflow.log_metric(f"member{member}.seconds_per_epoch", history.seconds / max(len(history.train_loss), 1))
        metrics = (evaluate(labeled.kind, ensemble, train, test, definition.grid, request, workdir, device=device)
                   if test else {})
        if prior and test:
            metrics |= prior_metrics(prior, test)
        metrics |= cost_metrics(ensemble, histories)
        metrics |= ensemble.calibration.metrics() if ensemble.calibration else {}
        mlflow.log_metrics({key: value for key, value in metrics.items() if math.isfinite(value)})
        for figure in workdir.glob("*.png"):
            mlflow.log_artifact(str(figure), artifact_path="plots")
        registry_version = log_ensemble(ensemble, featurizer, request.name, workdir)
        run_id = run.info.run_id
    aliases = set_aliases(request.name, registry_version, champion=request.champion)
    with session_scope(engine) as session:
        row = ModelVersion(name=request.name, registry_version=registry_version, mlflow_run_id=run_id,
                           targets=[request.target], architecture=request.architecture,
                           featurizer_key=featurizer.key, metrics=_finite(metrics))
        session.add(row)
        session.flush()
        model_version_id = row.id
    return TrainResult(model_version_id, request.name, registry_version, run_id, aliases, metrics)


def check_request(engine: Engine, request: TrainRequest) -> TargetDefinition:
    """Refuse what ``request`` gets wrong before any structure is featurized (minutes of
    work for pretrained atom features); returns its target's definition."""
    check_atom_features(request.architecture, request.featurizer.atom_features)
    if request.pooling not in POOLING:
        raise InputError(f"pooling {request.pooling!r} is not one of {', '.join(POOLING)}", field="pooling")
    definition = _definition(engine, request.target)
    if definition is None:
        raise NotFound(f"no target named {request.target!r} in the store")
    if request.train.latent_neighbours and not KINDS[definition.kind].one_row_per_crystal:
        raise InputError(f"target {request.target!r} is a {definition.kind.value} target: its spread is per site, "
                         "and latent neighbours give one distance per crystal (scalar and spectrum targets only)",
                         field="latent_neighbours")
    if request.prior:
        check_prior_target(request.target, definition.kind)
    return definition


def _definition(engine: Engine, target: str) -> TargetDefinition | None:
    with session_scope(engine) as session:
        return session.scalar(select(TargetDefinition).where(TargetDefinition.name == target))


class MissingPriorValues(InputError):
    """Structures without a value of the prior target."""


def prior_values(engine: Engine, prior: str, structure_ids: list[int]) -> dict[int, float]:
    """The stored values of the scalar target ``prior`` for those of ``structure_ids``
    that have one."""
    with session_scope(engine) as session:
        definition = session.scalar(select(TargetDefinition).where(TargetDefinition.name == prior))
        if definition is None:
            raise NotFound(f"no target named {prior!r} in the store (the prior)")
        if definition.kind != TargetKind.SCALAR:
            raise InputError(f"the prior {prior!r} is a {definition.kind.value} target; a prior must be scalar")
        values = {}
        for start in range(0, len(structure_ids), PREDICT_CHUNK):
            chunk = structure_ids[start:start + PREDICT_CHUNK]
            values |= dict(session.execute(
                select(TargetValue.structure_id, TargetValue.value)
                .where(TargetValue.target_id == definition.id, TargetValue.structure_id.in_(chunk))).all())
    return values


def check_prior_target(target: str, kind: TargetKind) -> None:
    """Refuse a prior for a target that is not scalar."""
    if kind != TargetKind.SCALAR:
        raise InputError(f"target {target!r} is a {kind.value} target; a prior is for scalar targets only",
                         field="prior")


def attach_prior(engine: Engine, prior: str, structure_ids: list[int], data: list, *, target: str,
                 kind: TargetKind) -> None:
    """Set ``data.prior`` (the stored value of ``prior``) on each graph, in the order of
    ``structure_ids``; refuses a non-scalar ``target`` and structures lacking the prior
    (rather than dropping them silently: compute the prior for them first)."""
    check_prior_target(target, kind)
    values = prior_values(engine, prior, structure_ids)
    missing = [structure_id for structure_id in structure_ids if structure_id not in values]
    if missing:
        raise MissingPriorValues(
            f"{len(missing)} of {len(structure_ids)} structures for target {target!r} have no value of the prior "
            f"{prior!r} (structure ids {', '.join(map(str, missing[:5]))}{', ...' if len(missing) > 5 else ''}); "
            "compute it for them first (workbench dft run --preset ...)")
    for structure_id, item in zip(structure_ids, data, strict=True):
        item.prior = torch.tensor([values[structure_id]], dtype=torch.float32)


def fit_prior(prior: str, train: list, *, per_atom: bool) -> PriorFit:
    """The fit of the labels of the graphs ``train`` on their ``data.prior`` and their
    compositions (:class:`~workbench.models.prior.PriorFit`); ``per_atom`` for a target
    pooled by mean."""
    return PriorFit.fit(prior, np.array([item.prior.item() for item in train]),
                        np.array([item.y.item() for item in train]), _compositions(train), per_atom=per_atom)


def prior_metrics(prior: PriorFit, test: list) -> dict[str, float]:
    """The prior alone on the test split (its fit): ``prior.mae``, ``prior.rmse``.
    The model's own metrics (``mae``, ...) are those of the prior plus the residual it
    learnt; their error is also the residual model's error on the residuals."""
    y = np.array([item.y.item() for item in test])
    errors = prior(np.array([item.prior.item() for item in test]), _compositions(test)) - y
    return {"prior.mae": float(np.mean(np.abs(errors))), "prior.rmse": float(np.sqrt(np.mean(errors**2)))}


def _compositions(data: list) -> list[dict[str, float]]:
    return [composition_of(item.atomic_numbers.tolist()) for item in data]


def _finite(metrics: dict[str, float]) -> dict[str, float | None]:
    return {key: (value if math.isfinite(value) else None) for key, value in metrics.items()}


def evaluate(kind: TargetKind, ensemble: Ensemble, train: list, test: list, grid: np.ndarray | None,
             request: TrainRequest, workdir: Path, *, device: torch.device) -> dict[str, float]:
    """Test metrics of the ensemble (predicting on ``device``) and of the kind's baselines
    (``baseline_<name>.mae``), and the kind's plot in ``workdir``."""
    spec = KINDS[kind]
    mean, std = (tensor.numpy() for tensor in ensemble.predict(test, device=device))
    y = torch.cat([item.y for item in test]).numpy()
    metrics = spec.metrics(y, mean, std, test=test, grid=grid, ensemble=ensemble)
    for name, prediction in spec.baselines(train, test, request).items():
        metrics[f"baseline_{name}.mae"] = float(np.mean(np.abs(prediction - y)))
    spec.plot(y, mean, std, test, workdir / spec.plot_file, title=f"{request.name}: {request.target} (test)",
              grid=grid)
    return metrics


def cost_metrics(ensemble: Ensemble, histories: list[MemberHistory]) -> dict[str, float]:
    """Parameters of one member and training seconds per epoch, averaged over members."""
    epochs = [history.seconds / len(history.train_loss) for history in histories if history.train_loss]
    return {"parameters": float(sum(parameter.numel() for parameter in ensemble.members[0].parameters())),
            "seconds_per_epoch": float(np.mean(epochs)) if epochs else float("nan")}


def featurizer_of(engine: Engine, key: str) -> Featurizer:
    """The featurizer a key names, rebuilt from its stored config."""
    with session_scope(engine) as session:
        row = session.get(FeaturizerRow, key)
        if row is None:
            raise NotFound(f"no featurizer {key} in the store")
        config = row.config
    featurizer = Featurizer.from_config(config)
    if featurizer.key != key:
        raise ValueError(f"featurizer {key} was made by another version of the graph code or of its "
                         f"pretrained model's package or weights (now {featurizer.key})")
    return featurizer


def predict_into_store(engine: Engine, settings: Settings, model_uri: str, *,
                       structure_ids: Iterable[int] | None = None, where: str | None = None,
                       executor: Executor | None = None, device: str = "auto",
                       on_total: Callable[[int], None] | None = None,
                       on_progress: Callable[[int], None] | None = None) -> int:
    """Write the predictions of ``model_uri`` (``NAME@alias`` or ``NAME/version``) for all
    structures, the given ids, or those matching the SQL condition ``where`` on
    ``structures``, computed on ``device``; structures this version has predicted already
    are skipped."""
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    name, registry_version = resolve(model_uri)
    with session_scope(engine) as session:
        version = session.scalar(select(ModelVersion).where(
            ModelVersion.name == name, ModelVersion.registry_version == registry_version))
        if version is None:
            raise NotFound(f"model {name} version {registry_version} is not recorded in this store")
        (target,) = version.targets
        target_id = session.scalar(select(TargetDefinition.id).where(TargetDefinition.name == target))
        query = select(Structure.id).order_by(Structure.id).where(~select(Prediction.id).where(
            Prediction.model_version_id == version.id, Prediction.structure_id == Structure.id).exists())
        if structure_ids is not None:
            query = query.where(one_of(session, Structure.id, sorted(set(structure_ids))))
        if where:  # the user's SQL runs read-only, as one statement
            query = query.where(one_of(session, Structure.id, structures_where(engine, where, option="--where")))
        todo = list(session.scalars(query))
        model_version_id, featurizer_key = version.id, version.featurizer_key
    featurizer = featurizer_of(engine, featurizer_key)
    with tempfile.TemporaryDirectory() as scratch:
        ensemble = download_ensemble(name, registry_version, Path(scratch))
    for member in ensemble.members:
        member.check_featurizer(featurizer.key)
    prior = ensemble.members[0].prior
    featurize_structures(engine, featurizer, structure_ids=todo, executor=executor)
    if on_total:
        on_total(len(todo))
    table, written = featurizer.feature_table(), 0
    triplets = needs_triplets(ensemble.config.architecture)
    compute_device = pick_device(device)
    for start in range(0, len(todo), PREDICT_CHUNK):
        chunk = todo[start:start + PREDICT_CHUNK]
        graphs = load_graphs(engine, featurizer.key, chunk)
        data = [graph_to_data(graphs[structure_id], table, triplets=triplets) for structure_id in chunk]
        if prior:
            attach_prior(engine, prior.target, chunk, data, target=target, kind=TargetKind.SCALAR)
        mean, std = ensemble.predict(data, device=compute_device)
        rows = _prediction_rows(ensemble.config.head, chunk, data, mean, std, model_version_id, target_id)
        with session_scope(engine) as session:
            insert_ignoring_duplicates(session, Prediction.__table__, rows)
        written += len(rows)
        if on_progress:
            on_progress(len(chunk))
    return written


def _prediction_rows(head: str, ids: list[int], data: list, mean: torch.Tensor, std: torch.Tensor,
                     model_version_id: int, target_id: int) -> list[dict]:
    spec = kind_of_head(head)
    means, stds = spec.per_structure(mean.numpy(), std.numpy(), [item.num_nodes for item in data])
    return [{"model_version_id": model_version_id, "target_id": target_id, "structure_id": structure_id,
             **spec.prediction_columns(m, s)} for structure_id, m, s in zip(ids, means, stds, strict=True)]
