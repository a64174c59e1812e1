"""The campaign configuration: one YAML file, validated, stored with the campaign.

A minimal file::

    name: gaps
    candidates: {source: example-pool}
    objective: ["1.0<=gpaw-fast.band_gap<=3.0"]
    dft: {preset: gpaw-fast}
    budget: 40

Everything else has a default; unknown keys are refused, so a misspelt option is an
error that names it rather than a setting silently ignored.
"""

from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from workbench.acquire.objective import TARGET_NAME, Objective, parse_objective
from workbench.acquire.plan import AcquisitionSettings
from workbench.acquire.scores import SCORE_FUNCTIONS
from workbench.errors import InputError
from workbench.featurize.config import ATOM_FEATURES, DEFAULT_ATOM_FEATURES
from workbench.models.architectures import ARCHITECTURES, DEFAULT_ARCHITECTURE
from workbench.stability.predicted import learned_target
from workbench.train.config import CAMPAIGN_TRAINING, TrainConfig

if TYPE_CHECKING:  # presets are loaded when a config is read, not with this module
    from workbench.dft.presets import Preset


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Candidates(_Strict):
    """Which stored structures the campaign may choose from: those imported under
    ``source``, or those matching the SQL condition ``where`` on ``structures`` (or both)."""

    source: str | None = None
    where: str | None = None

    @model_validator(mode="after")
    def _one_given(self) -> "Candidates":
        if self.source is None and self.where is None:
            raise ValueError("give candidates.source, candidates.where or both")
        return self


# Ensembles whose backbone reads atom features start from CHGNet's embeddings: replayed on
# the perovskite gap window they found a median of 35 hits in 400 calculations, the element
# table 16 (benchmarks/replay.md), for one CHGNet pass over the pool.
CAMPAIGN_ATOM_FEATURES = "chgnet"


def campaign_atom_features(architecture: str) -> str:
    """A campaign's atom features for ``architecture`` when its config names none:
    :data:`CAMPAIGN_ATOM_FEATURES` for a backbone that reads atom features, the element
    table for one that embeds atomic numbers itself (SevenNet)."""
    from workbench.models.model import reads_atom_features

    return CAMPAIGN_ATOM_FEATURES if reads_atom_features(architecture) else DEFAULT_ATOM_FEATURES


def _one_of(table, what: str):
    """A field check: the value must be a key of ``table`` (the registry that names them)."""
    def check(cls, name: str) -> str:
        if name not in table:
            raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(table)}")
        return name
    return classmethod(check)


class ModelSettings(_Strict):
    """The ensembles retrained every round (one per target); training defaults from
    ``workbench.train.config.CAMPAIGN_TRAINING``. ``prior``: a stored scalar target (e.g.
    ``sevennet.formation_energy_per_atom``) whose fit (with element weights) the first
    objective target's ensemble learns the residual of (``workbench train --prior``); every candidate needs
    its value (``screen`` computes it over the pool). ``latent_neighbours``: k > 0 adds
    each candidate's distance to its k nearest labeled crystals in the members' embedding
    to the spread, once a round's validation split is large enough to weigh it
    (``TrainConfig.latent_neighbours``). ``atom_features``: by default
    :func:`campaign_atom_features` of the architecture."""

    architecture: str = DEFAULT_ARCHITECTURE
    atom_features: str = CAMPAIGN_ATOM_FEATURES
    members: int = Field(CAMPAIGN_TRAINING.members, ge=1)
    epochs: int = Field(CAMPAIGN_TRAINING.epochs, ge=1)
    patience: int = Field(CAMPAIGN_TRAINING.patience, ge=1)
    batch_size: int = Field(CAMPAIGN_TRAINING.batch_size, ge=1)
    learning_rate: float = Field(CAMPAIGN_TRAINING.learning_rate, gt=0)
    latent_neighbours: int = Field(CAMPAIGN_TRAINING.latent_neighbours, ge=0)
    backbone: dict = Field(default_factory=dict)
    device: str = "auto"
    prior: str | None = None

    _known_architecture = field_validator("architecture")(_one_of(ARCHITECTURES, "architecture"))
    _known_atom_features = field_validator("atom_features")(_one_of(ATOM_FEATURES, "atom features"))

    # The checks below import torch: only when a config is read, not with this module.

    @model_validator(mode="before")
    @classmethod
    def _architectures_atom_features(cls, options: object) -> object:
        """Fill in the architecture's default atom features where none are named."""
        if not isinstance(options, dict) or options.get("atom_features") is not None:
            return options
        architecture = options.get("architecture", DEFAULT_ARCHITECTURE)
        if architecture not in ARCHITECTURES:  # refused by its own check
            return options
        return options | {"atom_features": campaign_atom_features(architecture)}

    @field_validator("backbone")
    @classmethod
    def _known_backbone_options(cls, options: dict, info: ValidationInfo) -> dict:
        from workbench.models.model import backbone_classes

        architecture = info.data.get("architecture")
        if architecture is None:  # refused above
            return options
        known = {option.name for option in fields(backbone_classes(architecture)[1])}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"{architecture} has no option {', '.join(map(repr, unknown))}; "
                             f"its options are {', '.join(sorted(known))}")
        return options

    @model_validator(mode="after")
    def _atom_features_are_read(self) -> "ModelSettings":
        from workbench.models.model import check_atom_features

        check_atom_features(self.architecture, self.atom_features)
        return self

    @field_validator("prior")
    @classmethod
    def _prior_is_a_target_name(cls, name: str | None) -> str | None:
        if name is not None and not TARGET_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a target name; give the name of a stored scalar target, "
                             "e.g. sevennet.formation_energy_per_atom")
        return name

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        import torch

        if device != "auto":
            try:
                torch.device(device)
            except RuntimeError:
                raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or another "
                                 "torch device") from None
        return device

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(members=self.members, epochs=self.epochs, patience=self.patience,
                           batch_size=self.batch_size, learning_rate=self.learning_rate, seed=seed,
                           latent_neighbours=self.latent_neighbours)

    def featurizer(self):
        """The featurizer of the rounds' ensembles: the graphs the architecture declares
        (SevenNet: every neighbour within its cutoff) with these atom features."""
        from workbench.models.model import featurizer_for

        return featurizer_for(self.architecture, self.atom_features)


_ACQUISITION = AcquisitionSettings()


class Acquisition(_Strict):
    """How a batch is chosen (:class:`~workbench.acquire.plan.AcquisitionSettings`, whose
    defaults these are). ``function``: a name of ``workbench.acquire.scores.SCORE_FUNCTIONS``:
    ``probability`` (of meeting the objective), ``ucb``, ``ei``, ``greedy`` (these three on
    the first objective target, towards its bound), ``uncertainty`` or ``random``.
    ``cost_aware`` weighs scores by the expected DFT cost of each candidate."""

    function: str = _ACQUISITION.function
    batch: int = Field(_ACQUISITION.batch, ge=1)
    diversity: float = Field(_ACQUISITION.diversity, ge=0)
    kappa: float = Field(_ACQUISITION.kappa, ge=0)
    cost_aware: bool = _ACQUISITION.cost_aware

    _registered = field_validator("function")(_one_of(SCORE_FUNCTIONS, "acquisition function"))

    def settings(self) -> AcquisitionSettings:
        return AcquisitionSettings(**self.model_dump())


def _loaded_preset(name: str) -> "Preset":
    """The DFT preset ``name``; a field check's ValueError, saying why, if there is none."""
    from workbench.dft.presets import PresetError, load_preset

    try:
        return load_preset(name)
    except PresetError as error:
        raise ValueError(str(error)) from None


class Dft(_Strict):
    """How acquired structures are computed (see ``workbench dft presets``)."""

    preset: str = "gpaw-fast"
    threads: int = Field(1, ge=1)
    jobs: int = Field(1, ge=1)
    wall_time_s: float | None = Field(None, gt=0)
    references: bool = False

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, name: str) -> str:
        _loaded_preset(name)
        return name


class Screen(_Strict):
    """A cheap preset (``sevennet``, ``chgnet``) run over the whole candidate pool, and
    over the structures labeled for the first objective target, before the first model
    trains: its values are the prior (``model.prior``). Its calculations are in
    ``calculations`` with their cost, not in the ledger's ``budget``; the round that ran
    them says so in its summary (``screen``)."""

    preset: str
    jobs: int = Field(1, ge=1)

    _known_preset = field_validator("preset")(Dft._known_preset.__func__)  # the check of dft.preset


class Relax(_Strict):
    """A relaxation run on each round's batch before its ``dft`` labels (e.g.
    ``sevennet-relax``, a pre-relaxation with a universal model): each label is computed on
    the structure the relaxation ended in, from its relaxed geometry; a candidate whose
    relaxation failed is labeled as stored. Its calculations are in ``calculations`` with
    their cost, not in the ledger's ``budget``; the round says so in its summary (``relax``)."""

    preset: str
    jobs: int = Field(1, ge=1)

    @field_validator("preset")
    @classmethod
    def _a_relaxation(cls, name: str) -> str:
        if _loaded_preset(name).relax is None:
            raise ValueError(f"preset {name!r} does not relax; use a relaxation preset such as {name}-relax")
        return name


class Decorations(_Strict):
    """Candidates generated once, when the campaign is first opened: every combination of
    the ``sites`` choices (``{prototype element: [elements]}``) in ``prototype`` (a stored
    structure id, ``aflow:<label>`` or a structure file, as ``workbench generate
    substitute`` takes), stored under ``candidates.source`` with their lineage."""

    prototype: str
    sites: dict[str, list[str]] = Field(min_length=1)
    charge_balanced: bool = False

    @field_validator("sites")
    @classmethod
    def _elements(cls, sites: dict[str, list[str]]) -> dict[str, list[str]]:
        from workbench.generate.substitute import check_sites

        check_sites(sites)  # against the prototype's elements once it is read (decorate)
        return sites


class Stop(_Strict):
    """When to stop besides the budget: after ``rounds`` rounds, after ``hits`` hits."""

    rounds: int | None = Field(None, ge=1)
    hits: int | None = Field(None, ge=1)


class CampaignConfig(_Strict):
    """A whole campaign. ``initial``: labels bought at random before the first model when
    fewer candidates than that are labeled for every objective target; ``budget``: DFT
    calculations the campaign may spend, the initial ones included; ``targets``: extra
    targets modelled and predicted for the report (e.g. ``gpaw-fast.dos``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    candidates: Candidates
    objective: list[str] = Field(min_length=1)
    targets: list[str] = Field(default_factory=list)
    initial: int = Field(10, ge=0)
    budget: int = Field(ge=1)
    seed: int = 0
    model: ModelSettings = Field(default_factory=ModelSettings)
    acquisition: Acquisition = Field(default_factory=Acquisition)
    dft: Dft = Field(default_factory=Dft)
    screen: Screen | None = None
    relax: Relax | None = None
    generate: list[Decorations] = Field(default_factory=list)
    stop: Stop = Field(default_factory=Stop)

    @field_validator("objective")
    @classmethod
    def _objective_reads(cls, constraints: list[str]) -> list[str]:
        parse_objective(constraints)
        return constraints

    @field_validator("acquisition")
    @classmethod
    def _acquisition_fits_objective(cls, acquisition: Acquisition, info: ValidationInfo) -> Acquisition:
        if "objective" not in info.data:  # already refused
            return acquisition
        SCORE_FUNCTIONS[acquisition.function].check_objective(parse_objective(info.data["objective"]).constraints[0])
        return acquisition

    @model_validator(mode="after")
    def _generated_into_a_source(self) -> "CampaignConfig":
        if self.generate and self.candidates.source is None:
            raise ValueError("generate needs candidates.source: the label its candidates are stored under")
        return self

    @property
    def parsed_objective(self) -> Objective:
        return parse_objective(self.objective)

    @property
    def learned_targets(self) -> list[str]:
        """What the models learn for the objective, in its order: each objective target,
        or for ``<level>.e_above_hull`` the level's formation energy
        (:func:`workbench.stability.predicted.learned_target`)."""
        return list(dict.fromkeys(learned_target(target) for target in self.parsed_objective.targets))

    @property
    def modelled_targets(self) -> list[str]:
        """The learned objective targets first, then the extra ones."""
        return list(dict.fromkeys([*self.learned_targets, *self.targets]))

    def to_document(self) -> dict:
        return self.model_dump(mode="json")


def load_config(path: Path) -> CampaignConfig:
    """Read and validate a campaign YAML file; errors name the file and the field."""
    try:
        document = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise InputError(f"cannot read campaign config: {error.strerror}", file=str(path)) from None
    except yaml.YAMLError as error:
        raise InputError(f"not valid YAML: {error}", file=str(path)) from None
    return config_from_document(document, origin=str(path))


def config_from_document(document: object, *, origin: str = "campaign config") -> CampaignConfig:
    if not isinstance(document, dict):
        raise InputError(f"expected a mapping of options, got {type(document).__name__}", file=origin)
    try:
        return CampaignConfig.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or '(top)'}: {item['msg'].removeprefix('Value error, ')}"
            for item in error.errors()
        )
        raise InputError(problems, file=origin) from None
