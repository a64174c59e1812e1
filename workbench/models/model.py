"""A model is a backbone plus a head, with its target scaling and the featurizer it expects.

Predictions come out in the target's units: the model keeps the shift and scale it was
trained with as buffers, and the fit of its prior (if it learns a residual) in its
config, so a saved model needs nothing else to be used than its input graphs (which then
carry the prior's value as ``data.prior``). A saved file
holds plain tensors and a JSON-able config (``torch.load(weights_only=True)`` reads it).
"""

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from workbench import __version__
from workbench.errors import InputError, WorkbenchError
from workbench.featurize.config import DEFAULT_ATOM_FEATURES, GraphConfig
from workbench.models.architectures import ARCHITECTURES
from workbench.models.heads import HEADS
from workbench.models.prior import PriorFit

if TYPE_CHECKING:  # the featurizer pulls in pymatgen (2 s); featurizer_for imports it when called
    from workbench.featurize.featurizer import Featurizer

SAVE_FORMAT = 1


def backbone_classes(architecture: str) -> tuple[type, type]:
    """The backbone class of ``architecture`` and its config class, imported when first
    asked for: SevenNet's pulls in ``sevenn`` and ``e3nn``, which a model on another
    backbone must not need where it is served."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[architecture].load()


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model.

    Attributes:
        architecture: a key of :data:`~workbench.models.architectures.ARCHITECTURES`.
        head: a key of ``HEADS`` (``scalar``, ``spectrum`` or ``per_site``).
        target: the target it predicts.
        featurizer_key: the featurizer whose graphs it reads.
        backbone: keyword arguments of the backbone's config.
        head_options: keyword arguments of the head (pooling, bins, site_size, ...).
        prior: for a model that learns the residual of a scalar target against a stored
            prior target, the fit of the target on it and on composition, as a dict of
            :class:`~workbench.models.prior.PriorFit`'s fields; the prediction adds the fit
            back, so the input graphs must carry ``data.prior``.
    """

    architecture: str
    head: str
    target: str
    featurizer_key: str
    backbone: dict = field(default_factory=dict)
    head_options: dict = field(default_factory=dict)
    prior: dict | None = None


class MissingPrior(WorkbenchError, ValueError):
    """Input graphs without the prior value a model adds back."""


def needs_triplets(architecture: str) -> bool:
    """Whether the backbone reads bond-angle triplets, which graphs then get on loading
    (a backbone says so with a ``needs_triplets = True`` class attribute)."""
    return getattr(backbone_classes(architecture)[0], "needs_triplets", False)


def graph_for(architecture: str) -> GraphConfig:
    """The graph settings of the featurizer a backbone reads: its ``graph`` class attribute
    where it declares one (SevenNet needs every neighbour within its cutoff), else the
    defaults."""
    return getattr(backbone_classes(architecture)[0], "graph", None) or GraphConfig()


def reads_atom_features(architecture: str) -> bool:
    """Whether the backbone can read the featurizer's atom features (``data.x``): its
    config has an ``atom_feature_size``; SevenNet embeds atomic numbers instead."""
    return "atom_feature_size" in _backbone_defaults(architecture)


def check_atom_features(architecture: str, atom_features: str) -> None:
    """Refuse atom features other than the default for a backbone that does not read them,
    rather than featurize (SevenNet or CHGNet embeddings cost minutes) for nothing."""
    if atom_features != DEFAULT_ATOM_FEATURES and not reads_atom_features(architecture):
        raise InputError(f"{architecture} embeds atomic numbers and reads no atom features: "
                         f"atom features {atom_features!r} would be computed and ignored; use an architecture "
                         f"that reads them ({', '.join(name for name in ARCHITECTURES if reads_atom_features(name))})",
                         field="atom_features")


def featurizer_for(architecture: str, atom_features: str = DEFAULT_ATOM_FEATURES):
    """The featurizer a backbone reads: the graphs it declares (:func:`graph_for`) with
    these atom features, refused where it would ignore them (:func:`check_atom_features`)."""
    from workbench.featurize.featurizer import Featurizer

    check_atom_features(architecture, atom_features)
    return Featurizer(graph_for(architecture), atom_features=atom_features)


def with_atom_feature_size(architecture: str, backbone: dict, featurizer: "Featurizer") -> dict:
    """The backbone options with ``atom_feature_size`` set to the width of ``featurizer``'s
    atom features (its ``data.x``), for a backbone that reads them; others are left as
    given. A backbone whose config leaves that width unset by default (SchNet) embeds
    atomic numbers, as published, on the element table, and reads atom features other
    than it. This is what makes OGCNN ``cgcnn`` on the ``ofm`` featurizer."""
    if not reads_atom_features(architecture) or (
            featurizer.atom_features == DEFAULT_ATOM_FEATURES
            and _backbone_defaults(architecture)["atom_feature_size"] is None):
        return dict(backbone)
    return {**backbone, "atom_feature_size": featurizer.atom_feature_size}


def _backbone_defaults(architecture: str) -> dict:
    return {option.name: option.default for option in fields(backbone_classes(architecture)[1])}


class FeaturizerMismatch(WorkbenchError, ValueError):
    """Graphs made by another featurizer than the one a model was trained on."""


class CrystalModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        backbone_class, backbone_config = backbone_classes(config.architecture)
        self.backbone = backbone_class(backbone_config(**config.backbone))
        self.head = HEADS[config.head](self.backbone.out_channels, **config.head_options)
        self.register_buffer("target_shift", torch.tensor(0.0))
        self.register_buffer("target_scale", torch.tensor(1.0))
        self.prior = PriorFit(**config.prior) if config.prior else None
        if self.prior:
            # Built once and moved with the model, not filled element by element per batch;
            # not saved: the config's fit rebuilds it.
            self.register_buffer("prior_element_weights",
                                 torch.as_tensor(self.prior.element_table(), dtype=torch.float32), persistent=False)

    def set_target_scaling(self, shift: float, scale: float) -> None:
        """Outputs are ``raw * scale + shift``, or ``raw * scale`` for a head that does not
        shift (a spectrum, to stay >= 0)."""
        self.target_shift.fill_(shift if self.head.shifts_output else 0.0)
        self.target_scale.fill_(scale if scale > 0 else 1.0)

    def forward(self, data) -> torch.Tensor:
        """Predictions in target units: ``(B,)``, ``(B, bins)`` or ``(N[, k])``."""
        return self._predict(data, self.backbone(data))

    def predict_and_embed(self, data) -> tuple[torch.Tensor, torch.Tensor]:
        """The predictions and the pooled representation ``(B, F)`` of :meth:`embed`, from
        one pass through the backbone."""
        atom_features = self.backbone(data)
        return self._predict(data, atom_features), self.head.embed(atom_features, batch_vector(data))

    def _predict(self, data, atom_features: torch.Tensor) -> torch.Tensor:
        batch = batch_vector(data)
        raw = self.head(atom_features, batch)
        return self.head.constrain(raw * self.target_scale + self.target_shift, batch, data) + self.prior_term(data)

    def prior_term(self, data) -> torch.Tensor | float:
        """What the prior adds to each prediction (0 without a prior)."""
        prior = self.prior
        if prior is None:
            return 0.0
        values = getattr(data, "prior", None)
        if values is None:
            raise MissingPrior(f"model for target {self.config.target!r} adds its prior {prior.target!r} back: "
                               "its input graphs need that target's value (data.prior)")
        values = values.reshape(-1).float()
        return prior.term(values, data.atomic_numbers, batch_vector(data), len(values), self.prior_element_weights)

    def embed(self, data) -> torch.Tensor:
        """The pooled crystal representation ``(B, F)`` the head reads (for diversity)."""
        return self.head.embed(self.backbone(data), batch_vector(data))

    def check_featurizer(self, featurizer_key: str) -> None:
        if featurizer_key != self.config.featurizer_key:
            raise FeaturizerMismatch(
                f"model for target {self.config.target!r} reads graphs of featurizer "
                f"{self.config.featurizer_key}, not {featurizer_key}"
            )

    def save(self, path: Path) -> None:
        torch.save({"format": SAVE_FORMAT, "workbench_version": __version__,
                    "config": asdict(self.config), "state_dict": self.state_dict()}, path)

    @classmethod
    def load(cls, path: Path, map_location: str | torch.device = "cpu") -> "CrystalModel":
        saved = torch.load(path, map_location=map_location, weights_only=True)
        if saved.get("format") != SAVE_FORMAT:
            raise ValueError(f"{path}: unknown model file format {saved.get('format')!r}")
        model = cls(ModelConfig(**saved["config"]))
        model.load_state_dict(saved["state_dict"])
        return model


def batch_vector(data) -> torch.Tensor:
    """The crystal of each atom, ``(N,)``: a batch's ``batch``, or zeros for one graph
    (which PyG gives none)."""
    batch = getattr(data, "batch", None)
    if batch is None:
        return torch.zeros(data.num_nodes, dtype=torch.long, device=data.x.device)
    return batch
