"""Each kind of target in one entry: what training, evaluation and prediction need to know.

A kind (``TargetKind``: scalar, spectrum, per site) names its head and the head's options,
shapes a stored label into a tensor, scales the labels, may fit a part shared by all
members first, scores a test split beside its baselines, draws its figure, and cuts a
batch of predictions into one value per structure (the rows of ``predictions`` and the
pyfunc model's output). ``KINDS`` holds one instance per kind; a new kind is one new
subclass here (with its head in ``workbench/models/heads/``).
"""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from workbench.featurize.data import CrystalGraphData
from workbench.models import CrystalModel
from workbench.models.dos_autoencoder import DOSAutoencoder, fit_dos_autoencoder
from workbench.models.heads import HEADS, POOLING, Head, SpectrumHead
from workbench.store.schema import TargetDefinition, TargetKind
from workbench.train.baselines import CompositionBaseline, ElementAverageBaseline, MeanBaseline
from workbench.train.config import TrainConfig
from workbench.train.metrics import per_site_metrics, scalar_metrics, spectrum_metrics
from workbench.train.plots import parity_plot, spectrum_overlays

if TYPE_CHECKING:  # the pipeline imports this module
    from workbench.train.ensemble import Ensemble
    from workbench.train.pipeline import TrainRequest


class TargetKindSpec(ABC):
    """What one kind of target needs. Subclasses set the class attributes and implement
    the abstract methods; the others have defaults that suit most kinds.

    Attributes:
        kind: the ``TargetKind`` it handles.
        head: the key of its head in ``HEADS`` (``ModelConfig.head``).
        array_valued: stored in ``predictions.mean_array``/``std_array`` (else in the
            ``mean``/``std`` columns).
        plot_file: the figure :meth:`plot` writes.
        one_row_per_crystal: its predictions have a row per crystal (not per site), so that
            a crystal's distance to the training crystals can join its spread
            (``TrainConfig.latent_neighbours``).
    """

    kind: ClassVar[TargetKind]
    head: ClassVar[str]
    array_valued: ClassVar[bool] = True
    one_row_per_crystal: ClassVar[bool] = True
    plot_file: ClassVar[str] = "parity.png"

    @abstractmethod
    def head_options(self, definition: TargetDefinition, request: "TrainRequest") -> dict:
        """The head's keyword arguments for this target and request."""

    @abstractmethod
    def label(self, value: float | None, value_array: np.ndarray | None) -> torch.Tensor:
        """A stored label as ``data.y``, shaped so that a batch stacks it along its first axis."""

    def target_scaling(self, train: list[CrystalGraphData]) -> tuple[float, float]:
        """Shift and scale of the training labels: their mean and standard deviation."""
        values = torch.cat([item.y.reshape(-1) for item in train]).double()
        return float(values.mean()), float(values.std()) if len(values) > 1 else 1.0

    def pretrain(self, head: Head, train: list[CrystalGraphData], validation: list[CrystalGraphData],
                 config: TrainConfig, device: torch.device) -> torch.nn.Module | None:
        """A part every member shares, fitted once before them (none by default)."""
        return None

    def prepare_member(self, model: CrystalModel, shared: torch.nn.Module | None,
                       scaling: tuple[float, float]) -> None:
        """Give a new member its target scaling and the shared part."""
        model.set_target_scaling(*scaling)

    @abstractmethod
    def metrics(self, y: np.ndarray, mean: np.ndarray, std: np.ndarray, *, test: list[CrystalGraphData],
                grid: np.ndarray | None, ensemble: "Ensemble") -> dict[str, float]:
        """Test metrics as the seed papers report them (``y``, ``mean``, ``std`` batched)."""

    @abstractmethod
    def baselines(self, train: list[CrystalGraphData], test: list[CrystalGraphData],
                  request: "TrainRequest") -> dict[str, np.ndarray]:
        """Each baseline's predictions for ``test``, fitted on ``train``, shaped as ``y``."""

    @abstractmethod
    def plot(self, y: np.ndarray, mean: np.ndarray, std: np.ndarray, test: list[CrystalGraphData],
             path: Path, *, title: str, grid: np.ndarray | None) -> Path:
        """The figure a person looks at after training."""

    def per_structure(self, mean: np.ndarray, std: np.ndarray,
                      sites: Sequence[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """A batch of predictions cut into one entry per structure (``sites``: atoms of each)."""
        return list(mean), list(std)

    def prediction_columns(self, mean: np.ndarray, std: np.ndarray) -> dict:
        """One structure's columns of ``predictions``."""
        if self.array_valued:
            return {"mean": None, "std": None, "mean_array": mean, "std_array": std}
        return {"mean": float(mean), "std": float(std), "mean_array": None, "std_array": None}


class ScalarKind(TargetKindSpec):
    """One number per crystal: mean (intensive) or sum (extensive) pooling."""

    kind = TargetKind.SCALAR
    head = "scalar"
    array_valued = False

    def head_options(self, definition, request):
        return {"pooling": request.pooling}

    def label(self, value, value_array):
        return torch.tensor([value], dtype=torch.float32)

    def metrics(self, y, mean, std, *, test, grid, ensemble):
        return scalar_metrics(y, mean, std)

    def baselines(self, train, test, request):
        y_train = np.array([item.y.item() for item in train])
        composition = CompositionBaseline(extensive=POOLING[request.pooling].extensive).fit(
            [item.atomic_numbers.numpy() for item in train], y_train)
        return {"mean": np.full(len(test), y_train.mean()),
                "composition": composition.predict([item.atomic_numbers.numpy() for item in test])}

    def plot(self, y, mean, std, test, path, *, title, grid):
        return parity_plot(y, mean, std, path, title=title)


class SpectrumKind(TargetKindSpec):
    """A non-negative vector per crystal on a fixed grid (a DOS); with a ``latent`` size,
    predicted through the frozen decoder of an autoencoder fitted first (AE-ALIGNN)."""

    kind = TargetKind.SPECTRUM
    head = "spectrum"
    plot_file = "spectra.png"

    def head_options(self, definition, request):
        latent = {"latent": request.spectrum_latent} if request.spectrum_latent else {}
        return {"bins": int(definition.length), **latent}

    def label(self, value, value_array):
        return torch.from_numpy(np.asarray(value_array, dtype=np.float32))[None, :]

    def target_scaling(self, train):
        """Scale only (the mean absolute value), so that spectra stay non-negative."""
        values = torch.cat([item.y.reshape(-1) for item in train]).double()
        return 0.0, float(values.abs().mean()) or 1.0

    def pretrain(self, head, train, validation, config, device):
        return fit_spectrum_autoencoder(head, train, validation, config, device) if head.latent else None

    def prepare_member(self, model, shared, scaling):
        if shared is None:
            return super().prepare_member(model, shared, scaling)
        model.head.use_autoencoder(shared)
        model.set_target_scaling(0.0, float(shared.scale))

    def metrics(self, y, mean, std, *, test, grid, ensemble):
        metrics = spectrum_metrics(y, mean, std, grid)
        if ensemble.shared is not None:  # the autoencoder alone
            with torch.no_grad():
                reconstructed = ensemble.shared(torch.as_tensor(y)).numpy()
            metrics["autoencoder_mae"] = float(np.mean(np.abs(reconstructed - y)))
        return metrics

    def baselines(self, train, test, request):
        return {"mean_spectrum": MeanBaseline().fit([item.y.numpy()[0] for item in train]).predict(len(test))}

    def plot(self, y, mean, std, test, path, *, title, grid):
        return spectrum_overlays(y, mean, std, path, title=title, energies=grid)


class PerSiteKind(TargetKindSpec):
    """A value (or vector) per atom; ``conserve_total`` makes each crystal's values sum to
    its total (0 for partial charges)."""

    kind = TargetKind.PER_SITE
    head = "per_site"
    plot_file = "parity_by_element.png"
    one_row_per_crystal = False

    def head_options(self, definition, request):
        return {"site_size": int(np.prod(definition.site_shape or [1])), "conserve_total": request.conserve_total}

    def label(self, value, value_array):
        return torch.from_numpy(np.asarray(value_array, dtype=np.float32))

    def metrics(self, y, mean, std, *, test, grid, ensemble):
        return per_site_metrics(y, mean, std, _site_numbers(test))

    def baselines(self, train, test, request):
        by_element = ElementAverageBaseline().fit(_site_numbers(train),
                                                  np.concatenate([item.y.numpy() for item in train]))
        return {"element_average": by_element.predict(_site_numbers(test))}

    def plot(self, y, mean, std, test, path, *, title, grid):
        numbers = _site_numbers(test)
        return parity_plot(y.ravel(), mean.ravel(), std.ravel(), path, title=title,
                           groups=np.repeat(numbers, y.size // len(numbers)))

    def per_structure(self, mean, std, sites):
        bounds = np.cumsum(sites)[:-1]
        return np.split(mean, bounds), np.split(std, bounds)


def _site_numbers(data: list[CrystalGraphData]) -> np.ndarray:
    return np.concatenate([item.atomic_numbers.numpy() for item in data])


KINDS: dict[TargetKind, TargetKindSpec] = {spec.kind: spec for spec in (ScalarKind(), SpectrumKind(), PerSiteKind())}


def kind_of_head(head: str) -> TargetKindSpec:
    """The entry of the kind a head (``ModelConfig.head``) predicts."""
    for spec in KINDS.values():
        if spec.head == head:
            return spec
    raise ValueError(f"no target kind predicted by head {head!r}; heads: {', '.join(HEADS)}")


def fit_spectrum_autoencoder(head: SpectrumHead, train: list[CrystalGraphData], validation: list[CrystalGraphData],
                             config: TrainConfig, device: torch.device) -> DOSAutoencoder:
    """Stage one of a latent spectrum head: its autoencoder, fitted to the training spectra
    with the members' settings and ``config.seed``."""
    def spectra(items: list[CrystalGraphData]) -> torch.Tensor:
        return torch.cat([item.y.reshape(1, -1) for item in items]).float()

    autoencoder, _ = fit_dos_autoencoder(
        spectra(train), spectra(validation) if validation else None, latent=head.latent,
        hidden=head.autoencoder_hidden, epochs=config.epochs, patience=config.patience,
        batch_size=config.batch_size, learning_rate=config.learning_rate, seed=config.seed, device=device)
    return autoencoder
