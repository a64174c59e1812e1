"""What the dashboard shows, read from the store and returned as plain data.

Every function takes an engine and only reads;
:func:`workbench.store.engine.read_only_engine` opens one the
database itself refuses to write through. Lists that grow with the store (the ledger,
candidates, search) are filtered, sorted and cut in SQL and come a page at a time; counts
are SQL aggregates. (:func:`workbench.campaign.report.ledger` and
:func:`workbench.campaign.loop.progress` load every acquisition of a campaign: right for
a report, too slow for a page of a 10,000-row ledger.) The ledger's rows are the report's
:class:`~workbench.campaign.store.LedgerRow`.
"""

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
from sqlalchemy import ColumnElement, Engine, case, func, literal, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import aliased

from workbench.campaign.store import CampaignStatus, LedgerRow, campaign_config, campaign_id_of
from workbench.errors import InputError, NotFound
from workbench.store.engine import session_scope
from workbench.store.schema import (
    Acquisition,
    AcquisitionStatus,
    Calculation,
    CalculationAttempt,
    CalculationStatus,
    Campaign,
    ModelVersion,
    Prediction,
    Round,
    Structure,
    StructureLineage,
    StructureSource,
    TargetDefinition,
    TargetKind,
    TargetValue,
)

PER_PAGE = 50
MAX_PER_PAGE = 1000
# Failed attempts listed on the overview, newest first.
RECENT_FAILURES = 10
# The end of each log file shown for an attempt (the whole file can be megabytes).
LOG_TAIL_BYTES = 4000
# Files a calculation's job writes in its folder (workbench.dft.runner and .job).
LOG_FILES = ("stderr.log", "stdout.log", "calculator.txt")
UNKNOWN_REASON = "unknown"  # a failed attempt that recorded no reason
# Hull figures on a stability campaign's page: its most chosen binary systems.
HULL_SYSTEMS = 4


# -- overview ---------------------------------------------------------------------------

@dataclass(frozen=True)
class CampaignLine:
    name: str
    status: str
    spent: int
    budget: int
    hits: int
    rounds: int


@dataclass(frozen=True)
class FailedAttempt:
    calculation_id: int
    structure_id: int
    preset: str
    number: int
    reason: str
    message: str
    finished_at: datetime | None


@dataclass(frozen=True)
class Overview:
    structures: int
    labels: int
    predictions: int
    model_versions: int
    campaigns: list[CampaignLine]
    dft_queue: dict[str, int]  # calculation status -> count, every status listed
    failures_by_reason: dict[str, int]  # failed attempts, most frequent reason first
    recent_failures: list[FailedAttempt]


def overview(engine: Engine) -> Overview:
    with session_scope(engine) as session:
        def count(model) -> int:
            # count(*): SQLite counts the smallest index instead of reading every row
            return session.scalar(select(func.count()).select_from(model))

        queue = dict(session.execute(select(Calculation.status, func.count()).group_by(Calculation.status)).all())
        reasons = session.execute(
            select(CalculationAttempt.reason, func.count()).where(CalculationAttempt.status == CalculationStatus.FAILED)
            .group_by(CalculationAttempt.reason).order_by(func.count().desc(), CalculationAttempt.reason)
        ).all()
        recent = session.execute(
            select(CalculationAttempt, Calculation.structure_id, Calculation.preset)
            .join(Calculation, Calculation.id == CalculationAttempt.calculation_id)
            .where(CalculationAttempt.status == CalculationStatus.FAILED)
            .order_by(CalculationAttempt.finished_at.desc(), CalculationAttempt.id.desc()).limit(RECENT_FAILURES)
        ).all()
        campaigns = session.execute(
            select(Campaign.id, Campaign.name, Campaign.status, Campaign.config,
                   select(func.count(Round.id)).where(Round.campaign_id == Campaign.id).scalar_subquery())
            .order_by(Campaign.created_at.desc(), Campaign.id.desc())
        ).all()
        totals = (count(Structure), count(TargetValue), count(Prediction), count(ModelVersion))
        counts = _spent_and_hits(session, [row[0] for row in campaigns])
    lines = [CampaignLine(name, status, spent, int(config.get("budget", 0)), hits, rounds)
             for campaign_id, name, status, config, rounds in campaigns for spent, hits in [counts[campaign_id]]]
    return Overview(
        *totals, campaigns=lines,
        dft_queue={status.value: queue.get(status, 0) for status in CalculationStatus},
        failures_by_reason={reason or UNKNOWN_REASON: n for reason, n in reasons},
        recent_failures=[FailedAttempt(a.calculation_id, structure_id, preset, a.number, a.reason or UNKNOWN_REASON,
                                       a.message or "", a.finished_at) for a, structure_id, preset in recent],
    )


# -- campaign ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelRef:
    id: int
    label: str  # name/registry version


@dataclass(frozen=True)
class RoundView:
    number: int
    kind: str
    status: str
    models: dict[str, ModelRef]  # target -> the ensemble this round trained for it
    summary: dict
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class CampaignView:
    id: int
    name: str
    status: str  # a CampaignStatus
    objective: list[str]
    targets: list[str]  # the objective's targets, the ledger's columns
    function: str
    preset: str
    budget: int
    stop: dict  # stopping rules besides the budget (hits, rounds), those set
    spent: int
    hits: int
    rounds: list[RoundView]

    @property
    def active(self) -> bool:
        return self.status == CampaignStatus.ACTIVE


def _hit():
    return Acquisition.outcome["hit"].as_boolean()


def _spent_and_hits(session, campaign_ids: list[int]) -> dict[int, tuple[int, int]]:
    """Per campaign: DFT calculations spent (each once, however many acquisitions it
    labeled; an acquisition without one counts alone) and hits, counted in SQL (what
    :func:`workbench.campaign.loop.progress` counts, without loading the ledger)."""
    spent = case((Acquisition.status != AcquisitionStatus.PROPOSED,
                  func.coalesce(Acquisition.calculation_id, -Acquisition.id)))
    rows = session.execute(
        select(Round.campaign_id, func.count(spent.distinct()), func.count(case((_hit().is_(True), 1))))
        .join(Acquisition, Acquisition.round_id == Round.id)
        .where(Round.campaign_id.in_(campaign_ids)).group_by(Round.campaign_id)
    ).all()
    counts = {campaign_id: (spent, hits) for campaign_id, spent, hits in rows}
    return {campaign_id: counts.get(campaign_id, (0, 0)) for campaign_id in campaign_ids}


def campaign_view(engine: Engine, name: str) -> CampaignView:
    """The campaign called ``name`` (NotFound if there is none)."""
    campaign_id = campaign_id_of(engine, name)
    config = campaign_config(engine, campaign_id)
    with session_scope(engine) as session:
        state = session.scalar(select(Campaign.status).where(Campaign.id == campaign_id))
        spent, hits = _spent_and_hits(session, [campaign_id])[campaign_id]
        rows = session.scalars(select(Round).where(Round.campaign_id == campaign_id).order_by(Round.number)).all()
        model_ids = {model_id for row in rows for model_id in (row.models or {}).values()}
        labels = {model_id: f"{name}/{version}" for model_id, name, version in session.execute(
            select(ModelVersion.id, ModelVersion.name, ModelVersion.registry_version)
            .where(ModelVersion.id.in_(model_ids)))} if model_ids else {}
        rounds = [RoundView(row.number, row.kind.value, row.status,
                            {target: ModelRef(model_id, labels.get(model_id, str(model_id)))
                             for target, model_id in (row.models or {}).items()},
                            dict(row.summary or {}), row.started_at, row.finished_at) for row in rows]
    return CampaignView(campaign_id, name, state, list(config.objective), list(config.parsed_objective.targets),
                        config.acquisition.function, config.dft.preset, config.budget,
                        config.stop.model_dump(exclude_none=True), spent, hits, rounds)


# Ledger columns one may sort on: name -> the SQL value, given the target of the
# predicted/std/computed columns. NULLs (no prediction, not computed yet) sort last.
LEDGER_SORTS: dict[str, Callable[[str], ColumnElement]] = {
    "round": lambda _: Round.number,
    "structure": lambda _: Acquisition.structure_id,
    "formula": lambda _: Structure.formula,
    "function": lambda _: Acquisition.acquisition_function,
    "score": lambda _: Acquisition.score,
    "rank": lambda _: Acquisition.rank,
    "predicted": lambda target: Acquisition.predicted[(target, "mean")].as_float(),
    "std": lambda target: Acquisition.predicted[(target, "std")].as_float(),
    "computed": lambda target: Acquisition.outcome[("computed", target)].as_float(),
    "outcome": lambda _: _hit(),
    "status": lambda _: Acquisition.status,
}

# Outcome filters: name -> the SQL condition.
OUTCOME_FILTERS: dict[str, Callable[[], ColumnElement]] = {
    "hit": lambda: _hit().is_(True),
    "miss": lambda: _hit().is_(False),
    "pending": lambda: _hit().is_(None),
}


@dataclass(frozen=True)
class LedgerQuery:
    """Which page of the ledger, in which order, with which rows."""

    sort: str = "round"
    descending: bool = False
    target: str = ""  # the target the predicted/std/computed columns sort on (default: the first)
    status: str = ""  # an acquisition status
    outcome: str = ""  # a key of OUTCOME_FILTERS
    round: int | None = None
    formula: str = ""  # part of the formula, any case
    page: int = 1
    per_page: int = PER_PAGE

    def __post_init__(self) -> None:
        if self.sort not in LEDGER_SORTS:
            raise InputError(f"cannot sort the ledger by {self.sort!r}; one of {', '.join(LEDGER_SORTS)}",
                             field="sort")
        if self.outcome and self.outcome not in OUTCOME_FILTERS:
            raise InputError(f"unknown outcome {self.outcome!r}; one of {', '.join(OUTCOME_FILTERS)}",
                             field="outcome")
        if self.status and self.status not in {status.value for status in AcquisitionStatus}:
            raise InputError(f"unknown status {self.status!r}", field="status")
        if self.page < 1 or not 1 <= self.per_page <= MAX_PER_PAGE:
            raise InputError(f"page must be >= 1 and per_page within 1..{MAX_PER_PAGE}", field="page")


@dataclass(frozen=True)
class LedgerPage:
    rows: list[LedgerRow]
    total: int  # rows that pass the filters
    query: LedgerQuery

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.query.per_page))


def ledger_page(engine: Engine, campaign: CampaignView, query: LedgerQuery) -> LedgerPage:
    """One page of the campaign's ledger (the rows of :func:`workbench.campaign.report.ledger`),
    filtered, sorted and cut in SQL: a ledger of 10,000 rows is not read whole."""
    target = query.target or (campaign.targets[0] if campaign.targets else "")
    if target not in campaign.targets:
        raise InputError(f"the ledger has no column for target {target!r}", field="target")
    conditions = [Round.campaign_id == campaign.id]
    if query.status:
        conditions.append(Acquisition.status == AcquisitionStatus(query.status))
    if query.outcome:
        conditions.append(OUTCOME_FILTERS[query.outcome]())
    if query.round is not None:
        conditions.append(Round.number == query.round)
    if query.formula:
        conditions.append(func.lower(Structure.formula).contains(query.formula.lower(), autoescape=True))
    key = LEDGER_SORTS[query.sort](target)
    order = key.desc() if query.descending else key.asc()
    # The page's ids first, joining structures only to filter or sort on the formula; then
    # the 50 rows themselves.
    chosen = select(Acquisition.id).join(Round, Round.id == Acquisition.round_id).where(*conditions)
    if query.formula or query.sort == "formula":
        chosen = chosen.join(Structure, Structure.id == Acquisition.structure_id)
    with session_scope(engine) as session:
        total = session.scalar(select(func.count()).select_from(chosen.subquery()))
        ids = session.scalars(chosen.order_by(order.nulls_last(), Round.number, Acquisition.batch)
                              .offset((query.page - 1) * query.per_page).limit(query.per_page)).all()
        rows = session.execute(
            select(Round.number, Acquisition, Structure.formula, Calculation.wall_time_s,
                   ModelVersion.name, ModelVersion.registry_version)
            .join(Round, Round.id == Acquisition.round_id)
            .join(Structure, Structure.id == Acquisition.structure_id)
            .outerjoin(Calculation, Calculation.id == Acquisition.calculation_id)
            .outerjoin(ModelVersion, ModelVersion.id == Acquisition.model_version_id)
            .where(Acquisition.id.in_(ids))
        ).all()
        # The same rows as the report's ledger.
        by_id = {a.id: LedgerRow(number, a.batch, a.structure_id, formula, a.acquisition_function, a.score, a.rank,
                                 a.status.value, a.predicted or {}, a.outcome or {}, a.calculation_id, seconds,
                                 f"{name}/{version}" if name else None)
                 for number, a, formula, seconds, name, version in rows}
    return LedgerPage([by_id[acquisition_id] for acquisition_id in ids], total, query)


@dataclass(frozen=True)
class TargetPoints:
    """One objective target along the ledger: predicted when chosen, and computed."""

    mean: list[float | None]
    std: list[float | None]
    computed: list[float | None]


@dataclass(frozen=True)
class LedgerPoints:
    """The whole ledger in the order it was chosen, as the figures need it (plain columns)."""

    rounds: list[int]
    functions: list[str]
    hits: list[bool]
    structure_ids: list[int]
    calculation_ids: list[int | None]
    targets: dict[str, TargetPoints]


def ledger_points(engine: Engine, campaign: CampaignView) -> LedgerPoints:
    # The values are taken out of the JSON documents by the database (in C), and no
    # structure row is read: 10,000 rows stay well under a second.
    columns = []
    for target in campaign.targets:
        columns += [Acquisition.predicted[(target, "mean")].as_float(),
                    Acquisition.predicted[(target, "std")].as_float(),
                    Acquisition.outcome[("computed", target)].as_float()]
    with session_scope(engine) as session:
        rows = session.execute(
            select(Round.number, Acquisition.acquisition_function, _hit(), Acquisition.structure_id,
                   Acquisition.calculation_id, *columns)
            .join(Round, Round.id == Acquisition.round_id)
            .where(Round.campaign_id == campaign.id).order_by(Round.number, Acquisition.batch)
        ).all()
    fixed = 5  # the columns before the targets'
    by_column = [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(fixed + len(columns))]
    targets = {target: TargetPoints(*by_column[fixed + 3 * n:fixed + 3 + 3 * n]) for n, target in enumerate(campaign.targets)}
    return LedgerPoints(by_column[0], by_column[1], [bool(hit) for hit in by_column[2]], by_column[3], by_column[4],
                        targets)


@dataclass(frozen=True)
class HullSystem:
    """A binary system's entries at one level of theory: composition (fraction of the second
    element), formation energy per atom against the system's lowest elemental energies,
    energy above the hull (0 on it), and whether the campaign chose the structure."""

    system: str  # "A-B"
    keys: list[str]  # structure ids; an element's zero of the formation-energy basis by name
    fraction: list[float]
    formation_energy: list[float]
    e_above_hull: list[float]
    chosen: list[bool]


def campaign_hulls(engine: Engine, campaign: CampaignView, structure_ids: list[int]) -> list[HullSystem]:
    """For a stability campaign (an objective on ``<level>.e_above_hull``): the hull of each
    binary system of the structures it chose, the :data:`HULL_SYSTEMS` it chose most in
    (:func:`workbench.stability.store.binary_hulls`, as the campaign's report draws them)."""
    from workbench.stability.store import binary_hulls, hull_level

    levels = [level for level in map(hull_level, campaign.targets) if level is not None]
    if not levels:
        return []
    chosen = set(structure_ids)
    with session_scope(engine) as session:
        hulls = binary_hulls(session, levels[0], chosen, limit=HULL_SYSTEMS)
    return [HullSystem(hull.system, [str(key) for key in hull.keys], hull.fraction, hull.formation_energy,
                       hull.e_above_hull, [key in chosen for key in hull.keys]) for hull in hulls]


# -- structure --------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    source: str
    external_id: str
    file: str | None


@dataclass(frozen=True)
class LineageLink:
    """A structure this one was made from (``parent``) or that was made from it (``child``)."""

    direction: str  # parent or child
    structure_id: int
    formula: str
    kind: str  # substitution, relaxation
    detail: dict


@dataclass(frozen=True)
class Label:
    target: str
    kind: str
    units: str
    value: float | None
    array: list | None
    calculation_id: int | None
    source_file: str | None


@dataclass(frozen=True)
class PredictionView:
    model: ModelRef
    target: str
    kind: str
    units: str
    mean: float | None
    std: float | None
    mean_array: list | None
    std_array: list | None


@dataclass(frozen=True)
class AttemptView:
    number: int
    status: str
    reason: str | None
    message: str | None
    wall_time_s: float | None
    logs: dict[str, str]  # file name -> its last LOG_TAIL_BYTES


@dataclass(frozen=True)
class CalculationView:
    id: int
    preset: str
    status: str
    reason: str | None
    wall_time_s: float | None
    results: dict
    attempts: list[AttemptView]


@dataclass(frozen=True)
class StructureView:
    id: int
    formula: str
    reduced_formula: str
    spacegroup: str
    nsites: int
    volume: float
    density: float
    lattice: list[list[float]]
    species: list[str]
    cartesian: list[list[float]]
    sources: list[Source]
    labels: list[Label]
    predictions: list[PredictionView]
    calculations: list[CalculationView]
    lineage: list[LineageLink]
    grids: dict[str, list[float]] = field(default_factory=dict)  # spectrum target -> its axis


def _tail(path: Path) -> str | None:
    if not path.is_file():
        return None
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
        return handle.read().decode("utf-8", errors="replace")


def _logs(workdir: str | None) -> dict[str, str]:
    if not workdir:
        return {}
    tails = {name: _tail(Path(workdir) / name) for name in LOG_FILES}
    return {name: text for name, text in tails.items() if text}


def _listed(array: np.ndarray | None) -> list | None:
    return None if array is None else np.asarray(array, dtype=float).tolist()


def structure_view(engine: Engine, structure_id: int) -> StructureView:
    """Everything the store knows of one structure (NotFound if there is none)."""
    with session_scope(engine) as session:
        structure = session.get(Structure, structure_id)
        if structure is None:
            raise NotFound(f"no structure {structure_id} in the store")
        lattice = np.asarray(structure.lattice, dtype=float)
        sources = [Source(s.source, s.external_id, s.file) for s in session.scalars(
            select(StructureSource).where(StructureSource.structure_id == structure_id).order_by(StructureSource.id))]
        labels = [Label(d.name, d.kind.value, d.units, v.value, _listed(v.value_array), v.calculation_id, v.source_file)
                  for v, d in session.execute(
                      select(TargetValue, TargetDefinition).join(TargetDefinition)
                      .where(TargetValue.structure_id == structure_id).order_by(TargetDefinition.name))]
        predictions = [
            PredictionView(ModelRef(m.id, f"{m.name}/{m.registry_version}"), d.name, d.kind.value, d.units,
                           p.mean, p.std, _listed(p.mean_array), _listed(p.std_array))
            for p, m, d in session.execute(
                select(Prediction, ModelVersion, TargetDefinition)
                .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
                .join(TargetDefinition, TargetDefinition.id == Prediction.target_id)
                .where(Prediction.structure_id == structure_id)
                .order_by(TargetDefinition.name, ModelVersion.id.desc()))]
        spectra = {row.target for row in labels + predictions if row.kind == TargetKind.SPECTRUM.value}
        grids = {d.name: _listed(d.grid) for d in session.scalars(
            select(TargetDefinition).where(TargetDefinition.name.in_(spectra))) if d.grid is not None}
        calculations = [
            CalculationView(c.id, c.preset, c.status.value, c.reason, c.wall_time_s, dict(c.results or {}),
                            [AttemptView(a.number, a.status.value, a.reason, a.message, a.wall_time_s, _logs(a.workdir))
                             for a in c.attempts])
            for c in session.scalars(select(Calculation).where(Calculation.structure_id == structure_id)
                                     .order_by(Calculation.id))]
        lineage = [LineageLink(direction, other, formula, kind.value, dict(detail or {}))
                   for direction, mine, theirs in (("parent", StructureLineage.structure_id, StructureLineage.parent_id),
                                                   ("child", StructureLineage.parent_id, StructureLineage.structure_id))
                   for other, formula, kind, detail in session.execute(
                       select(theirs, Structure.formula, StructureLineage.kind, StructureLineage.detail)
                       .join(Structure, Structure.id == theirs).where(mine == structure_id)
                       .order_by(StructureLineage.id))]
        return StructureView(
            structure.id, structure.formula, structure.reduced_formula,
            f"{structure.spacegroup_symbol} ({structure.spacegroup_number})", structure.nsites,
            structure.volume, structure.density, lattice.tolist(), list(structure.species),
            (np.asarray(structure.frac_coords, dtype=float) @ lattice).tolist(),
            sources, labels, predictions, calculations, lineage, grids)


# -- models -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelLine:
    id: int
    name: str
    version: int
    architecture: str
    targets: list[str]
    metrics: dict[str, float | None]
    mlflow_run_id: str | None
    created_at: datetime | None
    aliases: list[str] = field(default_factory=list)  # from the MLflow registry, where it answers


def model_lines(engine: Engine) -> list[ModelLine]:
    """Every model version, by name, newest first."""
    with session_scope(engine) as session:
        rows = session.scalars(select(ModelVersion).order_by(ModelVersion.name, ModelVersion.registry_version.desc()))
        return [ModelLine(m.id, m.name, m.registry_version, m.architecture, list(m.targets), dict(m.metrics or {}),
                          m.mlflow_run_id, m.created_at) for m in rows]


def registry_aliases(tracking_uri: str, names: list[str]) -> dict[str, dict[str, int]]:
    """The MLflow registry's aliases of the models called ``names``: name -> alias -> version.
    A SQLite registry that does not exist is not created (MLflow would make one)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    url = make_url(tracking_uri) if "://" in tracking_uri else None
    if url is not None and url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        raise NotFound(f"no MLflow store at {tracking_uri}")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    aliases = {}
    for name in names:
        try:
            model = client.get_registered_model(name)
        except MlflowException:  # a version the store knows, registered elsewhere
            continue
        aliases[name] = {alias: int(version) for alias, version in model.aliases.items()}
    return aliases


def with_aliases(lines: list[ModelLine], aliases: dict[str, dict[str, int]]) -> list[ModelLine]:
    """``lines`` with the registry's aliases (model name -> alias -> version) filled in."""
    return [replace(line, aliases=sorted(alias for alias, version in aliases.get(line.name, {}).items()
                                         if version == line.version)) for line in lines]


@dataclass(frozen=True)
class ParityPoints:
    target: str
    structure_ids: list[int]
    computed: list[float]
    mean: list[float]
    std: list[float]


def model_parity(engine: Engine, model_version_id: int) -> list[ParityPoints]:
    """The model's scalar predictions of structures that have a label for the same target."""
    with session_scope(engine) as session:
        if session.get(ModelVersion, model_version_id) is None:
            raise NotFound(f"no model version {model_version_id} in the store")
        rows = session.execute(
            select(TargetDefinition.name, Prediction.structure_id, TargetValue.value, Prediction.mean, Prediction.std)
            .join(TargetDefinition, TargetDefinition.id == Prediction.target_id)
            .join(TargetValue, (TargetValue.structure_id == Prediction.structure_id)
                  & (TargetValue.target_id == Prediction.target_id))
            .where(Prediction.model_version_id == model_version_id, Prediction.mean.is_not(None),
                   TargetValue.value.is_not(None))
            .order_by(TargetDefinition.name, Prediction.structure_id)
        ).all()
    points: dict[str, ParityPoints] = {}
    for target, structure_id, value, mean, std in rows:
        entry = points.setdefault(target, ParityPoints(target, [], [], [], []))
        entry.structure_ids.append(structure_id)
        entry.computed.append(value)
        entry.mean.append(mean)
        entry.std.append(std or 0.0)
    return list(points.values())


# -- search -----------------------------------------------------------------------------

@dataclass(frozen=True)
class StructureLine:
    id: int
    formula: str
    reduced_formula: str
    spacegroup: str
    nsites: int
    sources: list[str]


Row = TypeVar("Row")


@dataclass(frozen=True)
class Page(Generic[Row]):
    rows: list[Row]
    page: int
    has_next: bool  # no total: counting a million rows costs more than the page


def _elements(text: str) -> list[str]:
    return [part for part in text.replace(",", " ").replace("-", " ").split() if part]


def search_structures(engine: Engine, *, formula: str = "", elements: str = "", source: str = "",
                      page: int = 1, per_page: int = PER_PAGE) -> Page[StructureLine]:
    """Structures whose reduced formula is ``formula`` (or contains it), that hold every
    one of ``elements`` and come from ``source``, by id."""
    query = select(Structure.id, Structure.formula, Structure.reduced_formula, Structure.spacegroup_symbol,
                   Structure.spacegroup_number, Structure.nsites)
    if formula:
        query = query.where(Structure.reduced_formula.contains(formula.strip(), autoescape=True))
    for element in _elements(elements):
        # chemical_system is "A-B-C": bounded by dashes, "N" does not match "Na".
        query = query.where((literal("-") + Structure.chemical_system + literal("-")).contains(
            f"-{element}-", autoescape=True))
    if source:
        query = query.where(Structure.id.in_(select(StructureSource.structure_id)
                                             .where(StructureSource.source == source)))
    query = query.order_by(Structure.id).offset((page - 1) * per_page).limit(per_page + 1)
    with session_scope(engine) as session:
        rows = session.execute(query).all()[:per_page + 1]
        ids = [row.id for row in rows[:per_page]]
        sources: dict[int, list[str]] = {}
        for structure_id, name in session.execute(select(StructureSource.structure_id, StructureSource.source)
                                                  .where(StructureSource.structure_id.in_(ids))
                                                  .order_by(StructureSource.id)):
            sources.setdefault(structure_id, []).append(name)
    lines = [StructureLine(row.id, row.formula, row.reduced_formula,
                           f"{row.spacegroup_symbol} ({row.spacegroup_number})", row.nsites,
                           list(dict.fromkeys(sources.get(row.id, [])))) for row in rows[:per_page]]
    return Page(lines, page, len(rows) > per_page)


@dataclass(frozen=True)
class CandidateLine:
    structure_id: int
    reduced_formula: str
    nsites: int
    mean: float
    std: float
    model: ModelRef


# Orders of the candidates view: name -> column of the predictions table.
CANDIDATE_ORDERS = {"mean": Prediction.mean, "std": Prediction.std}


def scalar_targets(engine: Engine) -> list[str]:
    """Scalar targets that have predictions, by name."""
    with session_scope(engine) as session:
        return list(session.scalars(
            select(TargetDefinition.name).where(TargetDefinition.kind == TargetKind.SCALAR,
                                                select(Prediction.id).where(Prediction.target_id == TargetDefinition.id)
                                                .exists())
            .order_by(TargetDefinition.name)))


def candidates(engine: Engine, target: str, *, order: str = "std", descending: bool = True,
               page: int = 1, per_page: int = PER_PAGE) -> Page[CandidateLine]:
    """Unlabeled structures ranked by the newest prediction of ``target`` (the SQL view
    ``candidates``: a structure's newest model's prediction, only where it has no label)."""
    if order not in CANDIDATE_ORDERS:
        raise InputError(f"cannot rank candidates by {order!r}; one of {', '.join(CANDIDATE_ORDERS)}", field="order")
    with session_scope(engine) as session:
        definition = session.scalar(select(TargetDefinition).where(TargetDefinition.name == target))
        if definition is None:
            raise NotFound(f"no target {target!r} in the store")
        later = aliased(Prediction)
        column = CANDIDATE_ORDERS[order]
        # The page's predictions first, on the (target_id, mean|std) index; structures and
        # model versions joined for those 50 rows only.
        ids = session.scalars(
            select(Prediction.id)
            .where(Prediction.target_id == definition.id, column.is_not(None),
                   ~select(later.id).where(later.structure_id == Prediction.structure_id,
                                           later.target_id == Prediction.target_id,
                                           later.model_version_id > Prediction.model_version_id).exists(),
                   ~select(TargetValue.id).where(TargetValue.structure_id == Prediction.structure_id,
                                                 TargetValue.target_id == Prediction.target_id).exists())
            .order_by(column.desc() if descending else column.asc(), Prediction.id)
            .offset((page - 1) * per_page).limit(per_page + 1)
        ).all()
        found = {row[0]: row[1:] for row in session.execute(
            select(Prediction.id, Prediction.structure_id, Structure.reduced_formula, Structure.nsites,
                   Prediction.mean, Prediction.std, ModelVersion.id, ModelVersion.name, ModelVersion.registry_version)
            .join(Structure, Structure.id == Prediction.structure_id)
            .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
            .where(Prediction.id.in_(ids[:per_page])))}
        rows = [found[prediction_id] for prediction_id in ids[:per_page]]
    lines = [CandidateLine(sid, formula, nsites, mean, std, ModelRef(mid, f"{name}/{version}"))
             for sid, formula, nsites, mean, std, mid, name, version in rows]
    return Page(lines, page, len(ids) > per_page)
