"""Deep ensembles: M members from different seeds (optionally bootstrapped), each trained
with early stopping on a validation split; their spread, scaled to fit the validation
errors, is the uncertainty, optionally beside each crystal's distance to the training
crystals in the members' embedding (:mod:`workbench.train.neighbours`)."""

import enum
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader

from workbench.featurize.data import CrystalGraphData
from workbench.models import CrystalModel, ModelConfig
from workbench.models.early_stopping import EarlyStopping
from workbench.store.schema import TargetKind
from workbench.train.config import TrainConfig, available_cores
from workbench.train.kinds import KINDS
from workbench.train.neighbours import LatentNeighbours


@dataclass
class MemberHistory:
    seed: int
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


EpochCallback = Callable[[int, int, float, float], None]  # member, epoch, train, validation
MemberCallback = Callable[[int, MemberHistory], None]  # member, its history once trained

# Saved beside the member files: the ensemble's std scale and how it was set.
CALIBRATION_FILE = "calibration.pt"
# Crystals per forward pass where no gradients are kept (prediction, validation loss).
INFERENCE_BATCH = 128


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def fit_std_scale(y: np.ndarray, mean: np.ndarray, std: np.ndarray) -> float:
    """The factor ``s`` that makes ``N(mean, (s std)²)`` most likely for held-out ``y``:
    ``sqrt(mean(z²))`` with ``z = (y - mean) / std``, over the values that have a spread
    (1 if none has). A few members agree with each other far more closely than with the
    truth, so their raw spread is too narrow (``s > 1``)."""
    y, mean, std = (np.asarray(array, dtype=float).reshape(-1) for array in (y, mean, std))
    spread = std > 0
    if not spread.any():
        return 1.0
    z = (y[spread] - mean[spread]) / std[spread]
    return float(np.sqrt(np.mean(z**2))) or 1.0


def fit_spread_scales(y: np.ndarray, mean: np.ndarray, std: np.ndarray,
                      distance: np.ndarray) -> tuple[float, float]:
    """The factors ``(a, b)`` that make ``N(mean, a² std² + b² distance²)`` most likely
    for held-out ``y`` (``distance``: each value's distance to the training crystals,
    :class:`~workbench.train.neighbours.LatentNeighbours`). ``b`` near 0 says the
    distance adds nothing the spread does not already say."""
    y, mean, std, distance = (np.asarray(array, dtype=float).reshape(-1) for array in (y, mean, std, distance))
    squared_error = (y - mean) ** 2
    floor = 1e-12 * max(float(np.mean(squared_error)), 1e-12)

    def negative_log_likelihood(log_scales: np.ndarray) -> float:
        variance = np.exp(2 * log_scales[0]) * std**2 + np.exp(2 * log_scales[1]) * distance**2 + floor
        return float(np.sum(np.log(variance) + squared_error / variance))

    # Start where each term, fitted alone, carries half the variance.
    start = [np.log(max(fit_std_scale(y, mean, part), 1e-6) / np.sqrt(2)) for part in (std, distance)]
    result = minimize(negative_log_likelihood, np.array(start), method="L-BFGS-B", bounds=[(-30.0, 30.0)] * 2)
    return float(np.exp(result.x[0])), float(np.exp(result.x[1]))


def no_skill_error(labels: list[torch.Tensor]) -> float:
    """The RMS error of predicting the training mean: what a model that learnt nothing else
    achieves. Labels of one shape (scalars, spectra) are compared with the mean at each
    position (bin); labels whose shape varies (per-site arrays) with the mean of all values."""
    if len({tuple(label.shape) for label in labels}) == 1:
        stacked = torch.stack(labels).double()
        return float(((stacked - stacked.mean(dim=0)) ** 2).mean().sqrt())
    return float(torch.cat([label.reshape(-1) for label in labels]).double().std(unbiased=False))


class CalibrationMethod(enum.StrEnum):
    CALIBRATED = "calibrated"  # enough validation structures: the fitted scale as it is
    SHRUNK = "shrunk"  # too few: the fitted scale pulled towards the no-skill scale


@dataclass(frozen=True)
class Calibration:
    """How the spread's scale was set: ``fitted_scale`` (:func:`fit_std_scale` on
    ``validation_labels`` structures), ``no_skill_scale`` (the scale at which the spread's
    RMS equals :func:`no_skill_error`), the ``weight`` the fitted scale's log kept, and the
    ``std_scale`` used, ``fitted_scale ** weight * no_skill_scale ** (1 - weight)``; with
    latent neighbours and enough validation structures, ``distance_scale``, the factor of
    each crystal's distance to the training crystals, fitted with the other
    (:func:`fit_spread_scales`)."""

    method: CalibrationMethod
    validation_labels: int
    fitted_scale: float
    weight: float
    # Ensembles saved before it was recorded were shrunk towards 1.
    no_skill_scale: float = 1.0
    # The factor of the distance to the training crystals in the spread (0: not used).
    distance_scale: float = 0.0

    @property
    def std_scale(self) -> float:
        return float(self.fitted_scale ** self.weight * self.no_skill_scale ** (1.0 - self.weight))

    def params(self) -> dict[str, str | int]:
        """What an MLflow run records as parameters."""
        return {"calibration.method": self.method.value, "calibration.validation_labels": self.validation_labels}

    def metrics(self) -> dict[str, float]:
        """What an MLflow run (and the model's row in the store) records as metrics."""
        return {"calibration.fitted_scale": self.fitted_scale, "calibration.weight": self.weight,
                "calibration.no_skill_scale": self.no_skill_scale, "calibration.std_scale": self.std_scale,
                "calibration.distance_scale": self.distance_scale}

    def to_document(self) -> dict:
        return {"method": self.method.value, "validation_labels": self.validation_labels,
                "fitted_scale": self.fitted_scale, "weight": self.weight, "no_skill_scale": self.no_skill_scale,
                "distance_scale": self.distance_scale}

    @classmethod
    def from_document(cls, document: dict) -> "Calibration":
        return cls(CalibrationMethod(document["method"]), int(document["validation_labels"]),
                   float(document["fitted_scale"]), float(document["weight"]),
                   float(document.get("no_skill_scale", 1.0)), float(document.get("distance_scale", 0.0)))


def calibration(fitted_scale: float, validation_labels: int, enough: int, no_skill_scale: float) -> Calibration:
    """The fitted scale as it is from ``enough`` validation structures on; from fewer,
    ``n``, its log is pulled towards the log of ``no_skill_scale`` with the weight
    ``n / (n + enough)``, as if ``enough`` more structures had been predicted no better
    than by the training mean. In the log, so that a few wild z-scores (members that agree
    with each other far more closely than with one label) cannot blow the scale up.
    Towards the no-skill scale, not 1, because the raw spread is the one thing known to be
    wrong: every full calibration on record fitted scales of 5 to 37 (docs/results.md), so
    a model that has seen a handful of labels is taken to know as little as their mean
    until its validation errors say otherwise."""
    if validation_labels >= enough:
        return Calibration(CalibrationMethod.CALIBRATED, validation_labels, fitted_scale, 1.0, no_skill_scale)
    weight = validation_labels / (validation_labels + enough)
    return Calibration(CalibrationMethod.SHRUNK, validation_labels, fitted_scale, weight, no_skill_scale)


class Ensemble:
    """Members that share a config and target scaling; predicts mean and std (the members'
    spread times ``std_scale``, which the ``calibration`` fitted on held-out data by
    :func:`train_ensemble` sets; 1 when uncalibrated, ``calibration`` ``None``).

    ``neighbours``: the training crystals in the members' embedding
    (:class:`~workbench.train.neighbours.LatentNeighbours`); where the calibration gave
    their distance a weight, the std is ``sqrt((std_scale spread)² + (distance_scale
    distance)²)``, one distance per crystal (scalar and spectrum targets).

    ``shared``: the part the members' kind fitted for all of them before training them
    (a latent spectrum head's autoencoder, whose decoder each member carries), kept after
    training to report on it alone (not saved: the members hold all they need to
    predict)."""

    def __init__(self, members: list[CrystalModel], shared: torch.nn.Module | None = None,
                 calibration: Calibration | None = None, neighbours: LatentNeighbours | None = None):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = members
        self.config: ModelConfig = members[0].config
        self.shared = shared
        self.calibration = calibration
        self.neighbours = neighbours

    @property
    def std_scale(self) -> float:
        return self.calibration.std_scale if self.calibration else 1.0

    @torch.no_grad()
    def predict(self, data: list[CrystalGraphData], *, batch_size: int = INFERENCE_BATCH,
                device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std over members, in target units: ``(B,)``, ``(B, bins)`` or ``(N[, k])``; the
        std includes the distance term where the calibration weighed one in."""
        stacked, embeddings = self._outputs(data, batch_size, device, embed=self._uses_distance)
        mean, std = _mean_and_spread(stacked)
        std = std * self.std_scale
        if self._uses_distance:
            distance = self.neighbours.distance(embeddings) * self.calibration.distance_scale
            std = torch.sqrt(std**2 + distance.reshape(-1, *[1] * (std.dim() - 1)) ** 2)
        return mean, std

    @torch.no_grad()
    def embed(self, data: list[CrystalGraphData], *, batch_size: int = INFERENCE_BATCH,
              device: torch.device | None = None) -> torch.Tensor:
        """The members' pooled representations side by side: ``(B, members * F)``."""
        return self._outputs(data, batch_size, device, embed=True)[1]

    @property
    def _uses_distance(self) -> bool:
        return self.neighbours is not None and self.calibration is not None and self.calibration.distance_scale > 0

    @torch.no_grad()
    def _outputs(self, data: list[CrystalGraphData], batch_size: int, device: torch.device | None,
                 embed: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each member's predictions ``(members, ...)`` and, with ``embed``, their
        embeddings side by side, from one pass through each member."""
        device = device or torch.device("cpu")
        predictions, embeddings = [], []
        for member in self.members:
            member.to(device).eval()
            parts = [member.predict_and_embed(batch.to(device)) if embed else (member(batch.to(device)), None)
                     for batch in DataLoader(data, batch_size=batch_size, shuffle=False)]
            predictions.append(torch.cat([prediction.float().cpu() for prediction, _ in parts]))
            if embed:
                embeddings.append(torch.cat([embedding.float().cpu() for _, embedding in parts]))
        return torch.stack(predictions), torch.cat(embeddings, dim=1) if embed else None

    def calibrate(self, validation: list[CrystalGraphData], *, enough: int, no_skill_error: float,
                  device: torch.device | None = None) -> Calibration:
        """Fit ``std_scale`` to the errors on ``validation`` (left as is without a spread),
        pulled towards the scale whose spread matches ``no_skill_error`` (the error of
        predicting the training mean, :func:`no_skill_error`) with fewer than ``enough``
        structures (:func:`calibration`). With ``neighbours`` and ``enough`` structures or
        more, fit it together with ``distance_scale`` (:func:`fit_spread_scales`)."""
        weighs_distance = self.neighbours is not None and len(validation) >= enough
        # One pass through each member gives the raw spread and, where needed, the embeddings.
        stacked, embeddings = self._outputs(validation, INFERENCE_BATCH, device, embed=weighs_distance)
        mean, std = _mean_and_spread(stacked)
        y = torch.cat([item.y.reshape(-1) for item in validation])
        spread = std.reshape(-1).double()
        spread_rms = float(spread[spread > 0].pow(2).mean().sqrt()) if (spread > 0).any() else 0.0
        no_skill_scale = no_skill_error / spread_rms if spread_rms > 0 and no_skill_error > 0 else 1.0
        if weighs_distance:
            distance = self.neighbours.distance(embeddings)
            distance = distance.reshape(-1, *[1] * (std.dim() - 1)).expand_as(std)
            std_scale, distance_scale = fit_spread_scales(y.numpy(), mean.numpy(), std.numpy(), distance.numpy())
            self.calibration = Calibration(CalibrationMethod.CALIBRATED, len(validation), std_scale, 1.0,
                                           no_skill_scale, distance_scale)
        else:  # a handful of labels cannot weigh two terms
            self.calibration = calibration(fit_std_scale(y.numpy(), mean.numpy(), std.numpy()), len(validation),
                                           enough, no_skill_scale)
        return self.calibration

    def save(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"member_{index}.pt" for index in range(len(self.members))]
        for member, path in zip(self.members, paths, strict=True):
            member.save(path)
        # The scale too, for readers from before the record (it is derived from the record).
        torch.save({"std_scale": self.std_scale,
                    "calibration": None if self.calibration is None else self.calibration.to_document(),
                    "neighbours": None if self.neighbours is None else self.neighbours.to_document()},
                   folder / CALIBRATION_FILE)
        return paths

    @classmethod
    def load(cls, folder: Path) -> "Ensemble":
        paths = sorted(folder.glob("member_*.pt"), key=lambda path: int(path.stem.split("_")[1]))
        file = folder / CALIBRATION_FILE
        # Ensembles saved before calibration existed have no file: their raw spread; those
        # saved before it was recorded, only the scale, fitted on labels not counted (0).
        saved = torch.load(file, weights_only=True) if file.exists() else {"std_scale": 1.0}
        recorded = saved.get("calibration")
        if recorded is None and saved["std_scale"] != 1.0:
            recorded = Calibration(CalibrationMethod.CALIBRATED, 0, float(saved["std_scale"]), 1.0).to_document()
        neighbours = saved.get("neighbours")
        return cls([CrystalModel.load(path) for path in paths],
                   calibration=None if recorded is None else Calibration.from_document(recorded),
                   neighbours=None if neighbours is None else LatentNeighbours.from_document(neighbours))


def _mean_and_spread(stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The members' mean and raw standard deviation (zero for a single member) over the
    first axis of their stacked predictions."""
    spread = stacked.std(dim=0, unbiased=False) if len(stacked) > 1 else torch.zeros_like(stacked[0])
    return stacked.mean(dim=0), spread


def train_ensemble(
    model_config: ModelConfig,
    kind: TargetKind,
    train: list[CrystalGraphData],
    validation: list[CrystalGraphData],
    config: TrainConfig,
    *,
    device: torch.device | None = None,
    on_epoch: EpochCallback | None = None,
    on_member: MemberCallback | None = None,
    calibrate: bool = True,
    executor: Executor | None = None,
    workers: int = 1,
) -> tuple[Ensemble, list[MemberHistory]]:
    """Train ``config.members`` members; deterministic for a given ``config.seed`` on CPU,
    wherever the members train: each starts from weights drawn with its seed here and
    trains with that seed.

    Where the members train: with an ``executor`` (e.g. a Dask client's
    ``get_executor()``), there, and ``on_epoch`` is not called (the members run
    elsewhere); else with ``workers`` > 1, in that many worker processes of this machine
    (at most one per member), each with an equal share of the cores as torch threads;
    else one after the other in this process. ``on_member`` is called as each member
    finishes (with its index and history).

    With ``config.latent_neighbours`` (k), the ensemble keeps the training structures'
    embeddings (:class:`~workbench.train.neighbours.LatentNeighbours`). With ``calibrate``
    (and a validation split), the members' spread is then scaled to fit the validation
    errors, beside the distance to the k nearest training crystals where there are
    neighbours; below ``config.calibration_labels`` validation structures, the spread alone,
    pulled towards the scale at which it matches the error of a model that learnt nothing
    (:meth:`Ensemble.calibrate`, :func:`no_skill_error`): predicting the training labels'
    mean, or with a prior, its fit, whose error is its held-out one
    (``PriorFit.held_out_rmse``): on a dozen labels a fit with element weights can pass
    through every training label, leaving residuals near 0 that would shrink the spread
    to nothing.

    A model with a prior (``model_config.prior``) adds it to its output, so its target
    scaling is fitted to the residuals it learns, and the loss is that of the sum.

    The kind's entry (:data:`~workbench.train.kinds.KINDS`) gives the target scaling and
    any part the members share: a spectrum head with a ``latent`` size first fits one
    autoencoder on the training spectra (early-stopped on the validation spectra, with the
    members' settings and ``config.seed``), then trains every member with its frozen
    decoder, in units of the autoencoder's scale.
    """
    device = device or pick_device()
    spec = KINDS[kind]
    models = []
    for index in range(config.members):
        torch.manual_seed(config.seed + index)
        models.append(CrystalModel(model_config))
    shared = spec.pretrain(models[0].head, train, validation, config, device)
    residuals = _residuals(models[0], train)
    scaling = spec.target_scaling(residuals)
    jobs = []
    for index, model in enumerate(models):
        spec.prepare_member(model, shared, scaling)
        seed = config.seed + index
        member_train = train
        if config.bootstrap:
            picks = np.random.default_rng(seed).integers(0, len(train), len(train))
            member_train = [train[pick] for pick in picks]
        jobs.append((model, member_train, seed))
    workers = min(workers, len(jobs))
    if executor is not None or workers > 1:
        packed_validation = _pack(validation)
        packed = [(model, _pack(member_train), packed_validation, config, seed, device)
                  for model, member_train, seed in jobs]
        results = (_on_executor(executor, packed, on_member) if executor is not None
                   else _in_processes(packed, workers, on_epoch, on_member))
    else:
        results = []
        for index, (model, member_train, seed) in enumerate(jobs):
            results.append(fit_member(model, member_train, validation, config, seed, device,
                                      on_epoch=_Relay(index, on_epoch)))
            if on_member:
                on_member(index, results[-1][1])
    members, histories = (list(part) for part in zip(*results, strict=True))
    ensemble = Ensemble(members, shared=shared)
    if config.latent_neighbours:
        ensemble.neighbours = LatentNeighbours.fit(ensemble.embed(train, device=device), config.latent_neighbours)
    if calibrate and validation:
        prior = models[0].prior
        no_skill = max(no_skill_error([item.y for item in residuals]), prior.held_out_rmse if prior else 0.0)
        ensemble.calibrate(validation, enough=config.calibration_labels, no_skill_error=no_skill, device=device)
    return ensemble, histories


def _residuals(model: CrystalModel, data: list[CrystalGraphData]) -> list:
    """The labels left for the network once its prior is taken off (the labels themselves
    without a prior): what the target scaling is fitted to."""
    if model.prior is None:
        return data
    return [Data(y=item.y - model.prior_term(item)) for item in data]


def _on_executor(executor: Executor, jobs: list[tuple], on_member: MemberCallback | None) -> list:
    futures = [executor.submit(_fit_packed, *job) for job in jobs]
    results = []
    for index, future in enumerate(futures):
        results.append(future.result())
        if on_member:
            on_member(index, results[-1][1])
    return results


def _in_processes(jobs: list[tuple], workers: int, on_epoch: EpochCallback | None,
                  on_member: MemberCallback | None) -> list:
    """The members in a pool of ``workers`` fresh processes; their epochs come back
    through a queue for ``on_epoch``."""
    context = _worker_context()
    threads = max(1, available_cores() // workers)
    with context.Manager() as manager, ProcessPoolExecutor(
            workers, mp_context=context, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        events = manager.Queue()
        futures = {pool.submit(_fit_packed, *job, on_epoch=_Relay(index, _Post(events))): index
                   for index, job in enumerate(jobs)}
        results: dict[int, tuple] = {}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            _drain(events, on_epoch)
            for future in done:
                index = futures[future]
                results[index] = future.result()
                if on_member:
                    on_member(index, results[index][1])
        _drain(events, on_epoch)
    return [results[index] for index in range(len(jobs))]


def _worker_context() -> multiprocessing.context.BaseContext:
    """Workers forked from a server process that imported this module once, so that they
    start in a moment and never inherit torch's threads or a CUDA context ("spawn" where
    the platform cannot fork)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", __name__])
    return context


def _drain(events, on_epoch: EpochCallback | None) -> None:
    while not events.empty():
        event = events.get()
        if on_epoch:
            on_epoch(*event)


@dataclass(frozen=True)
class _Relay:
    """Passes a member's epochs on to ``to(member, epoch, train_loss, validation_loss)``."""

    member: int
    to: EpochCallback | None

    def __call__(self, epoch: int, train_loss: float, validation_loss: float) -> None:
        if self.to is not None:
            self.to(self.member, epoch, train_loss, validation_loss)


@dataclass(frozen=True)
class _Post:
    """An epoch callback that posts the event to a queue (picklable, to run in a worker)."""

    queue: object

    def __call__(self, *event) -> None:
        self.queue.put(event)


def _pack(data: list[CrystalGraphData]) -> Batch | None:
    """Graphs as one batch, to cross into another process: a thousand small graphs
    pickle some twenty times slower than the batch they make."""
    return Batch.from_data_list(data) if data else None


def _fit_packed(model: CrystalModel, train: Batch, validation: Batch | None, config: TrainConfig, seed: int,
                device: torch.device, on_epoch: Callable[[int, float, float], None] | None = None,
                ) -> tuple[CrystalModel, MemberHistory]:
    """:func:`fit_member` on graphs packed by :func:`_pack`."""
    return fit_member(model, train.to_data_list(), [] if validation is None else validation.to_data_list(),
                      config, seed, device, on_epoch)


def fit_member(model: CrystalModel, train: list[CrystalGraphData], validation: list[CrystalGraphData],
               config: TrainConfig, seed: int, device: torch.device,
               on_epoch: Callable[[int, float, float], None] | None = None) -> tuple[CrystalModel, MemberHistory]:
    """Train one member (in this process or a worker's); returns it on the CPU."""
    history = _train_member(model, train, validation, config, seed, device, on_epoch or (lambda *_: None))
    return model.cpu().eval(), history


def _train_member(model: CrystalModel, train, validation, config: TrainConfig, seed: int,
                  device: torch.device, on_epoch) -> MemberHistory:
    history = MemberHistory(seed=seed)
    started = time.perf_counter()
    torch.manual_seed(seed)  # the same draws in any process
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    # torch decays after more than ``patience`` bad epochs, hence the 1; a loss within torch's
    # relative threshold (1e-4) of the best is a bad epoch to it, a better one to early stopping.
    decay = (torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=config.decay_factor,
                                                         patience=config.decay_patience - 1)
             if config.decay_patience else None)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=config.batch_size, shuffle=True, generator=generator,
                        drop_last=len(train) > config.batch_size)  # BatchNorm needs 2+ crystals
    stopping = EarlyStopping(model, config.patience)
    for epoch in range(config.epochs):
        model.train()
        total, count = 0.0, 0
        for batch in loader:
            batch = batch.to(device)
            optimizer.zero_grad()
            with _autocast(device):
                loss = _loss(model, batch)
            loss.backward()
            optimizer.step()
            total += loss.item() * batch.num_graphs
            count += batch.num_graphs
        train_loss = total / max(count, 1)
        validation_loss = evaluate_loss(model, validation, device) if validation else train_loss
        history.train_loss.append(train_loss)
        history.validation_loss.append(validation_loss)
        history.learning_rate.append(optimizer.param_groups[0]["lr"])
        on_epoch(epoch, train_loss, validation_loss)
        if stopping.should_stop(epoch, validation_loss):
            break
        if decay:
            decay.step(validation_loss)
    stopping.restore()
    history.best_epoch = stopping.best_epoch
    history.seconds = time.perf_counter() - started
    return history


def _loss(model: CrystalModel, batch: Batch) -> torch.Tensor:
    """Mean squared error in units of the training labels' spread."""
    prediction = model(batch).float()
    return torch.mean(((prediction - batch.y.reshape(prediction.shape)) / model.target_scale) ** 2)


@torch.no_grad()
def evaluate_loss(model: CrystalModel, data: list[CrystalGraphData], device: torch.device,
                  batch_size: int = INFERENCE_BATCH) -> float:
    model.eval()
    total, count = 0.0, 0
    for batch in DataLoader(data, batch_size=batch_size, shuffle=False):
        batch = batch.to(device)
        total += _loss(model, batch).item() * batch.num_graphs
        count += batch.num_graphs
    return total / max(count, 1)


def _autocast(device: torch.device):
    # bfloat16 on GPUs keeps the exponent range of float32: no loss scaling needed.
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
