"""The relational schema: one metadata, typed ``Mapped[...]`` models.

Table, column and view names are part of the user interface: people write SQL against
them (see docs/sql.md). Every change here is one Alembic revision in ``migrations/``.
"""

import enum
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import (
    CheckConstraint,
    DateTime,
    Double,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from workbench.store.types import BigId, JsonDocument, NpyArray

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TargetKind(enum.StrEnum):
    SCALAR = "scalar"
    SPECTRUM = "spectrum"
    PER_SITE = "per_site"


class CalculationStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AcquisitionStatus(enum.StrEnum):
    PROPOSED = "proposed"
    DISPATCHED = "dispatched"
    LABELED = "labeled"
    FAILED = "failed"


class LineageKind(enum.StrEnum):
    """How a structure was made from its parent."""

    SUBSTITUTION = "substitution"
    RELAXATION = "relaxation"


class RoundKind(enum.StrEnum):
    """How a round chooses its batch: at random (initial labels) or with its models."""

    RANDOM = "random"
    MODEL = "model"


def _enum(kind: type[enum.StrEnum], name: str) -> Enum:
    # Stored as strings with a CHECK constraint: readable in SQL, portable to SQLite.
    return Enum(
        kind,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [member.value for member in members],
    )


def _utc_now() -> datetime:
    # Set in Python, not as SQL now(): a process that runs a Prefect server (ephemeral
    # mode, the test harness) recompiles SQLite's now() into a form executemany rejects.
    return datetime.now(UTC)


def _created_at() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now())


class Structure(Base):
    """A crystal structure, stored losslessly, with the descriptors SQL filters on.

    ``dedup_key`` is ``reduced formula | space group | volume-per-atom bin``; structures
    sharing a key (or a neighbouring volume bin) whose ``fingerprint`` (sorted
    nearest-neighbour distances) agrees are compared with pymatgen's StructureMatcher
    before a new row is made (see ``workbench.structures.identity``).
    """

    __tablename__ = "structures"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    formula: Mapped[str] = mapped_column(String(255))
    reduced_formula: Mapped[str] = mapped_column(String(255), index=True)
    chemical_system: Mapped[str] = mapped_column(String(255), index=True)
    composition: Mapped[dict[str, float]] = mapped_column(JsonDocument)
    elements: Mapped[list[str]] = mapped_column(JsonDocument)
    nsites: Mapped[int] = mapped_column(Integer)
    nelements: Mapped[int] = mapped_column(Integer)
    lattice: Mapped[list[list[float]]] = mapped_column(JsonDocument)
    species: Mapped[list[str]] = mapped_column(JsonDocument)
    frac_coords: Mapped[np.ndarray] = mapped_column(NpyArray)
    volume: Mapped[float] = mapped_column(Double)
    density: Mapped[float] = mapped_column(Double)
    spacegroup_number: Mapped[int] = mapped_column(Integer, index=True)
    spacegroup_symbol: Mapped[str] = mapped_column(String(32))
    dedup_key: Mapped[str] = mapped_column(String(320), index=True)
    fingerprint: Mapped[np.ndarray] = mapped_column(NpyArray)
    created_at: Mapped[datetime] = _created_at()

    sources: Mapped[list["StructureSource"]] = relationship(
        back_populates="structure", cascade="all, delete-orphan"
    )


class StructureSource(Base):
    """Where a structure came from: one row per (source label, external id)."""

    __tablename__ = "structure_sources"
    __table_args__ = (UniqueConstraint("source", "external_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    structure_id: Mapped[int] = mapped_column(
        ForeignKey("structures.id", ondelete="CASCADE"), index=True
    )
    source: Mapped[str] = mapped_column(String(255))
    external_id: Mapped[str] = mapped_column(String(255))
    file: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created_at()

    structure: Mapped[Structure] = relationship(back_populates="sources")


class TargetDefinition(Base):
    """A learnable property: a scalar, a spectrum on a fixed grid, or one value per site.

    ``length`` is the number of bins of a spectrum; ``site_shape`` the trailing shape of a
    per-site value (``[]`` for one number per site, ``[3]`` for forces).
    """

    __tablename__ = "target_definitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[TargetKind] = mapped_column(_enum(TargetKind, "target_kind"))
    units: Mapped[str] = mapped_column(String(64), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    length: Mapped[int | None] = mapped_column(Integer)
    site_shape: Mapped[list[int] | None] = mapped_column(JsonDocument)
    grid: Mapped[np.ndarray | None] = mapped_column(NpyArray)
    grid_units: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = _created_at()


class TargetValue(Base):
    """A label: one value of one target for one structure, with where it came from."""

    __tablename__ = "target_values"
    __table_args__ = (
        UniqueConstraint("structure_id", "target_id"),
        Index("ix_target_values_target_id_value", "target_id", "value"),
        CheckConstraint("(value IS NULL) <> (value_array IS NULL)", name="one_payload"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    structure_id: Mapped[int] = mapped_column(ForeignKey("structures.id", ondelete="CASCADE"))
    target_id: Mapped[int] = mapped_column(ForeignKey("target_definitions.id"))
    value: Mapped[float | None] = mapped_column(Double)
    value_array: Mapped[np.ndarray | None] = mapped_column(NpyArray)
    source_file: Mapped[str | None] = mapped_column(Text)
    source_row: Mapped[str | None] = mapped_column(String(64))
    calculation_id: Mapped[int | None] = mapped_column(
        ForeignKey("calculations.id", ondelete="SET NULL"), index=True
    )
    # What a derived value was computed from, e.g. the decomposition of an energy above hull.
    detail: Mapped[dict | None] = mapped_column(JsonDocument)
    created_at: Mapped[datetime] = _created_at()


class StructureLineage(Base):
    """A structure made from another one: a substitution into a prototype, a relaxation.

    ``detail`` says how (the substitution mapping, the relaxation's preset and
    calculation). A structure equal to a stored crystal is linked to that crystal, so one
    structure may have several parents.
    """

    __tablename__ = "structure_lineage"
    __table_args__ = (UniqueConstraint("structure_id", "parent_id", "kind"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    structure_id: Mapped[int] = mapped_column(ForeignKey("structures.id", ondelete="CASCADE"))
    parent_id: Mapped[int] = mapped_column(
        ForeignKey("structures.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[LineageKind] = mapped_column(_enum(LineageKind, "lineage_kind"))
    detail: Mapped[dict] = mapped_column(JsonDocument)
    created_at: Mapped[datetime] = _created_at()


class Calculation(Base):
    """A DFT calculation of one structure with one calculator preset.

    One row per (structure, preset): retries are attempts of the same row, so a done
    calculation is never run twice, even by concurrent workers. ``results`` holds the
    scalar outputs and ``arrays`` the raw ones (forces, eigenvalues, DOS), from which the
    target values are derived.
    """

    __tablename__ = "calculations"
    __table_args__ = (UniqueConstraint("structure_id", "preset"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    structure_id: Mapped[int] = mapped_column(ForeignKey("structures.id", ondelete="CASCADE"))
    preset: Mapped[str] = mapped_column(String(64))
    parameters: Mapped[dict] = mapped_column(JsonDocument)
    status: Mapped[CalculationStatus] = mapped_column(
        _enum(CalculationStatus, "calculation_status"),
        default=CalculationStatus.QUEUED,
        index=True,
    )
    workdir: Mapped[str | None] = mapped_column(Text)
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    threads: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = _created_at()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    wall_time_s: Mapped[float | None] = mapped_column(Double)
    results: Mapped[dict | None] = mapped_column(JsonDocument)
    arrays: Mapped[bytes | None] = mapped_column(LargeBinary)

    attempts: Mapped[list["CalculationAttempt"]] = relationship(
        back_populates="calculation", cascade="all, delete-orphan", order_by="CalculationAttempt.number"
    )


class CalculationAttempt(Base):
    """One try of a calculation: its settings, outcome and, when it failed, why."""

    __tablename__ = "calculation_attempts"
    __table_args__ = (UniqueConstraint("calculation_id", "number"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    calculation_id: Mapped[int] = mapped_column(
        ForeignKey("calculations.id", ondelete="CASCADE")
    )
    number: Mapped[int] = mapped_column(Integer)
    parameters: Mapped[dict] = mapped_column(JsonDocument)
    status: Mapped[CalculationStatus] = mapped_column(_enum(CalculationStatus, "attempt_status"))
    reason: Mapped[str | None] = mapped_column(String(32))
    message: Mapped[str | None] = mapped_column(Text)
    workdir: Mapped[str | None] = mapped_column(Text)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    wall_time_s: Mapped[float | None] = mapped_column(Double)

    calculation: Mapped[Calculation] = relationship(back_populates="attempts")


class Featurizer(Base):
    """A featurizer configuration, keyed by the hash of that configuration."""

    __tablename__ = "featurizers"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict] = mapped_column(JsonDocument)
    created_at: Mapped[datetime] = _created_at()


class Graph(Base):
    """A featurized crystal graph of one structure under one featurizer (arrays as npz)."""

    __tablename__ = "graphs"
    __table_args__ = (UniqueConstraint("featurizer_key", "structure_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    featurizer_key: Mapped[str] = mapped_column(ForeignKey("featurizers.key"))
    structure_id: Mapped[int] = mapped_column(
        ForeignKey("structures.id", ondelete="CASCADE"), index=True
    )
    num_nodes: Mapped[int] = mapped_column(Integer)
    num_edges: Mapped[int] = mapped_column(Integer)
    arrays: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = _created_at()


class ModelVersion(Base):
    """A trained model (ensemble) as registered in MLflow."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "registry_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    registry_version: Mapped[int] = mapped_column(Integer)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    targets: Mapped[list[str]] = mapped_column(JsonDocument)
    architecture: Mapped[str] = mapped_column(String(64))
    featurizer_key: Mapped[str | None] = mapped_column(ForeignKey("featurizers.key"))
    metrics: Mapped[dict] = mapped_column(JsonDocument, default=dict)
    created_at: Mapped[datetime] = _created_at()


class Prediction(Base):
    """A model's prediction of one target for one structure: mean and ensemble std.

    Scalars use ``mean``/``std`` (real columns, indexed for ranking); spectra and
    per-site targets use ``mean_array``/``std_array``.
    """

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("model_version_id", "structure_id", "target_id"),
        Index("ix_predictions_structure_id_target_id", "structure_id", "target_id", "model_version_id"),
        Index("ix_predictions_target_id_std", "target_id", "std"),
        Index("ix_predictions_target_id_mean", "target_id", "mean"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE")
    )
    structure_id: Mapped[int] = mapped_column(ForeignKey("structures.id", ondelete="CASCADE"))
    target_id: Mapped[int] = mapped_column(ForeignKey("target_definitions.id"))
    mean: Mapped[float | None] = mapped_column(Double)
    std: Mapped[float | None] = mapped_column(Double)
    mean_array: Mapped[np.ndarray | None] = mapped_column(NpyArray)
    std_array: Mapped[np.ndarray | None] = mapped_column(NpyArray)
    created_at: Mapped[datetime] = _created_at()


class Campaign(Base):
    """An active-learning campaign and the configuration it runs with."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    config: Mapped[dict] = mapped_column(JsonDocument)
    status: Mapped[str] = mapped_column(String(32), default="active")
    created_at: Mapped[datetime] = _created_at()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Round(Base):
    """One iteration of a campaign, its ``status`` moved on step by step by
    :mod:`workbench.campaign.rounds` (a plain string: a new step needs no migration)."""

    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("campaign_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    kind: Mapped[RoundKind] = mapped_column(_enum(RoundKind, "round_kind"))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    status: Mapped[str] = mapped_column(String(32), default="started")
    # Target name -> model_versions.id of every ensemble this round trained.
    models: Mapped[dict | None] = mapped_column(JsonDocument)
    # What the round found: hits, failures, cost (filled when it is done).
    summary: Mapped[dict | None] = mapped_column(JsonDocument)
    started_at: Mapped[datetime] = _created_at()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Acquisition(Base):
    """The ledger: one candidate considered in one round, how it scored, what became of it."""

    __tablename__ = "acquisitions"
    __table_args__ = (
        UniqueConstraint("round_id", "structure_id"),
        Index("ix_acquisitions_structure_id_status", "structure_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    structure_id: Mapped[int] = mapped_column(ForeignKey("structures.id", ondelete="CASCADE"))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    acquisition_function: Mapped[str] = mapped_column(String(64))
    score: Mapped[float] = mapped_column(Double)
    rank: Mapped[int] = mapped_column(Integer)
    batch: Mapped[int] = mapped_column(Integer)
    status: Mapped[AcquisitionStatus] = mapped_column(
        _enum(AcquisitionStatus, "acquisition_status"), default=AcquisitionStatus.PROPOSED
    )
    calculation_id: Mapped[int | None] = mapped_column(
        ForeignKey("calculations.id", ondelete="SET NULL")
    )
    # Per target, the ensemble's mean and std when the candidate was chosen.
    predicted: Mapped[dict | None] = mapped_column(JsonDocument)
    expected_cost_s: Mapped[float | None] = mapped_column(Double)
    # Per target, the computed value, and whether the objective was met.
    outcome: Mapped[dict | None] = mapped_column(JsonDocument)
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), onupdate=_utc_now
    )
