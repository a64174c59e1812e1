"""Deep ensembles: M members from different seeds (optionally bootstrapped), each trained
with early stopping on a validation split; their spread, scaled to fit the validation
errors, is the uncertainty."""

import copy
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from workbench.featurize.data import CrystalGraphData
from workbench.models import CrystalModel, ModelConfig
from workbench.models.dos_autoencoder import DOSAutoencoder, fit_dos_autoencoder
from workbench.models.heads import SpectrumHead
from workbench.store.schema import TargetKind
from workbench.train.config import TrainConfig


@dataclass
class MemberHistory:
    seed: int
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


EpochCallback = Callable[[int, int, float, float], None]  # member, epoch, train, validation

# Saved beside the member files: the ensemble's std scale.
CALIBRATION_FILE = "calibration.pt"


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def target_scaling(kind: TargetKind, train: list[CrystalGraphData]) -> tuple[float, float]:
    """Shift and scale of the training labels (spectra: scale only, to stay non-negative)."""
    values = torch.cat([item.y.reshape(-1) for item in train]).double()
    if kind is TargetKind.SPECTRUM:
        return 0.0, float(values.abs().mean()) or 1.0
    return float(values.mean()), float(values.std()) if len(values) > 1 else 1.0


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


class Ensemble:
    """Members that share a config and target scaling; predicts mean and std (the members'
    spread times ``std_scale``, fitted on held-out data by :func:`train_ensemble`).

    ``autoencoder``: for a latent spectrum head, the autoencoder whose decoder the members
    carry, kept after training to measure its reconstruction error alone (not saved: the
    members hold all they need to predict)."""

    def __init__(self, members: list[CrystalModel], std_scale: float = 1.0,
                 autoencoder: DOSAutoencoder | None = None):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = members
        self.config: ModelConfig = members[0].config
        self.std_scale = std_scale
        self.autoencoder = autoencoder

    @torch.no_grad()
    def predict(self, data: list[CrystalGraphData], *, batch_size: int = 128,
                device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std over members, in target units: ``(B,)``, ``(B, bins)`` or ``(N[, k])``."""
        device = device or torch.device("cpu")
        outputs = []
        for member in self.members:
            member.to(device).eval()
            parts = [member(batch.to(device)).float().cpu()
                     for batch in DataLoader(data, batch_size=batch_size, shuffle=False)]
            outputs.append(torch.cat(parts))
        stacked = torch.stack(outputs)
        std = stacked.std(dim=0, unbiased=False) if len(outputs) > 1 else torch.zeros_like(stacked[0])
        return stacked.mean(dim=0), std * self.std_scale

    def calibrate(self, validation: list[CrystalGraphData], *, device: torch.device | None = None) -> float:
        """Fit ``std_scale`` to the errors on ``validation`` (left as is without a spread)."""
        self.std_scale = 1.0
        mean, std = self.predict(validation, device=device)
        y = torch.cat([item.y.reshape(-1) for item in validation])
        self.std_scale = fit_std_scale(y.numpy(), mean.numpy(), std.numpy())
        return self.std_scale

    def save(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"member_{index}.pt" for index in range(len(self.members))]
        for member, path in zip(self.members, paths, strict=True):
            member.save(path)
        torch.save({"std_scale": self.std_scale}, folder / CALIBRATION_FILE)
        return paths

    @classmethod
    def load(cls, folder: Path) -> "Ensemble":
        paths = sorted(folder.glob("member_*.pt"), key=lambda path: int(path.stem.split("_")[1]))
        calibration = folder / CALIBRATION_FILE
        # Ensembles saved before calibration existed have no file: their raw spread.
        std_scale = torch.load(calibration, weights_only=True)["std_scale"] if calibration.exists() else 1.0
        return cls([CrystalModel.load(path) for path in paths], std_scale)


def train_ensemble(
    model_config: ModelConfig,
    kind: TargetKind,
    train: list[CrystalGraphData],
    validation: list[CrystalGraphData],
    config: TrainConfig,
    *,
    device: torch.device | None = None,
    on_epoch: EpochCallback | None = None,
    calibrate: bool = True,
    executor: Executor | None = None,
) -> tuple[Ensemble, list[MemberHistory]]:
    """Train ``config.members`` members; deterministic for a given ``config.seed`` on CPU.

    With an ``executor`` (e.g. a Dask client's ``get_executor()``), the members train in
    parallel there, each from the same initial weights and seed as in this process;
    ``on_epoch`` is not called then (the members run elsewhere).

    With ``calibrate`` (and a validation split), the members' spread is then scaled to fit
    the validation errors (:meth:`Ensemble.calibrate`).

    A spectrum head with a ``latent`` size trains in two stages: first one autoencoder on
    the training spectra (early-stopped on the validation spectra, with the members'
    settings and ``config.seed``), then every member with its frozen decoder, in units of
    the autoencoder's scale.
    """
    device = device or pick_device()
    shift, scale = target_scaling(kind, train)
    autoencoder = None
    members, histories = [], []
    for index in range(config.members):
        seed = config.seed + index
        torch.manual_seed(seed)
        model = CrystalModel(model_config)
        if getattr(model.head, "latent", None):
            autoencoder = autoencoder or fit_spectrum_autoencoder(model.head, train, validation, config, device)
            model.head.use_autoencoder(autoencoder)
            model.set_target_scaling(0.0, float(autoencoder.scale))
        else:
            model.set_target_scaling(shift, scale)
        member_train = train
        if config.bootstrap:
            picks = np.random.default_rng(seed).integers(0, len(train), len(train))
            member_train = [train[pick] for pick in picks]
        if executor is not None:
            members.append(executor.submit(fit_member, model, member_train, validation, config, seed, device))
            continue
        model, history = fit_member(model, member_train, validation, config, seed, device,
                                    lambda epoch, loss, val, index=index: on_epoch and on_epoch(index, epoch, loss, val))
        members.append(model)
        histories.append(history)
    if executor is not None:
        members, histories = (list(part) for part in zip(*(future.result() for future in members), strict=True))
    ensemble = Ensemble(members, autoencoder=autoencoder)
    if calibrate and validation:
        ensemble.calibrate(validation, device=device)
    return ensemble, histories


def fit_spectrum_autoencoder(head: SpectrumHead, train: list[CrystalGraphData], validation: list[CrystalGraphData],
                             config: TrainConfig, device: torch.device) -> DOSAutoencoder:
    """Stage one of a latent spectrum head: its autoencoder, fitted to the training spectra."""
    def spectra(items: list[CrystalGraphData]) -> torch.Tensor:
        return torch.cat([item.y.reshape(1, -1) for item in items]).float()

    autoencoder, _ = fit_dos_autoencoder(
        spectra(train), spectra(validation) if validation else None, latent=head.latent,
        hidden=head.autoencoder_hidden, epochs=config.epochs, patience=config.patience,
        batch_size=config.batch_size, learning_rate=config.learning_rate, seed=config.seed, device=device)
    return autoencoder


def fit_member(model: CrystalModel, train: list[CrystalGraphData], validation: list[CrystalGraphData],
               config: TrainConfig, seed: int, device: torch.device,
               on_epoch: Callable[[int, float, float], None] | None = None) -> tuple[CrystalModel, MemberHistory]:
    """Train one member (in this process or an executor's worker); returns it on the CPU."""
    history = _train_member(model, train, validation, config, seed, device, on_epoch or (lambda *_: None))
    return model.cpu().eval(), history


def _train_member(model: CrystalModel, train, validation, config: TrainConfig, seed: int,
                  device: torch.device, on_epoch) -> MemberHistory:
    history = MemberHistory(seed=seed)
    started = time.perf_counter()
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=config.batch_size, shuffle=True, generator=generator,
                        drop_last=len(train) > config.batch_size)  # BatchNorm needs 2+ crystals
    best_loss, best_state = float("inf"), copy.deepcopy(model.state_dict())
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
        on_epoch(epoch, train_loss, validation_loss)
        if validation_loss < best_loss:
            best_loss, best_state, history.best_epoch = validation_loss, copy.deepcopy(model.state_dict()), epoch
        elif epoch - history.best_epoch >= config.patience:
            break
    model.load_state_dict(best_state)
    history.seconds = time.perf_counter() - started
    return history


def _loss(model: CrystalModel, batch: Batch) -> torch.Tensor:
    """Mean squared error in units of the training labels' spread."""
    prediction = model(batch).float()
    return torch.mean(((prediction - batch.y.reshape(prediction.shape)) / model.target_scale) ** 2)


@torch.no_grad()
def evaluate_loss(model: CrystalModel, data: list[CrystalGraphData], device: torch.device,
                  batch_size: int = 256) -> float:
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
