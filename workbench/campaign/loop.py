"""The campaign loop: retrain, predict, rank, dispatch, compute, ingest, repeat.

Every step is a function that reads what it needs from the store, records what it did
there and, in the transaction of its last writes, advances the round's status
(:mod:`workbench.campaign.rounds` holds the order of the steps and the statuses), so a
campaign killed at any point resumes at the step it stopped in (:func:`run_campaign` or
the Prefect flow ``campaign`` call :func:`resume_round` and then the steps left). DFT
that finished is never re-run: calculations are unique per structure and preset, and the
runner re-queues only those whose worker is gone. A round numbered 0 is a ``random``
round, which buys the initial labels at random; so is any round while an objective
target has fewer than :data:`MIN_LABELS` labels (failed calculations can leave it short).
"""

import tempfile
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import Engine, func, select

from workbench.acquire.basis import (
    PRIOR_RMSE,
    Basis,
    RankingBasis,
    prior_predictions,
    ranking_basis,
)
from workbench.acquire.candidates import IN_FLIGHT, eligible
from workbench.acquire.cost import expected_costs
from workbench.acquire.objective import Constraint
from workbench.acquire.plan import AcquisitionSettings, BatchPlan, plan_batch
from workbench.acquire.scores import RANDOM, SCORE_FUNCTIONS
from workbench.campaign.config import CampaignConfig, config_from_document
from workbench.campaign.replay import embed
from workbench.campaign.rounds import Events, RoundRef, RoundStatus, advance, run_step
from workbench.campaign.store import CampaignStatus, RoundCount, calculations_spent, campaign_config
from workbench.dft.presets import load_preset
from workbench.dft.runner import RunOptions, queue_calculations, run_queued
from workbench.dft.workflow import stage_ends
from workbench.errors import InputError, NotFound
from workbench.featurize.cache import load_graphs
from workbench.featurize.data import graph_to_data
from workbench.generate.store import GenerateReport, decorate
from workbench.models import needs_triplets
from workbench.models.prior import PriorFit
from workbench.settings import Settings
from workbench.stability.predicted import derive_predictions
from workbench.stability.store import hull_level, levels_with_hull, refresh_hulls
from workbench.store.bulk import one_of
from workbench.store.engine import session_scope
from workbench.store.queries import structures_where
from workbench.store.schema import (
    Acquisition,
    AcquisitionStatus,
    Calculation,
    CalculationStatus,
    Campaign,
    ModelVersion,
    Prediction,
    Round,
    RoundKind,
    Structure,
    StructureSource,
    TargetDefinition,
    TargetKind,
    TargetValue,
)
from workbench.train.ensemble import pick_device
from workbench.train.pipeline import (
    MIN_LABELS,
    TrainRequest,
    featurizer_of,
    predict_into_store,
    prior_values,
    train_and_register,
)
from workbench.train.registry import download_ensemble

# Config fields a resumed campaign may change; anything else would make its ledger lie.
ADJUSTABLE = ("budget", "stop")


def _now() -> datetime:
    return datetime.now(UTC)


# -- campaign and round bookkeeping -----------------------------------------------------

def open_campaign(engine: Engine, config: CampaignConfig) -> int:
    """The campaign named in ``config``: created, or found and checked against it.

    A stored config that no longer validates (written before a check existed, e.g. naming
    an unknown DFT preset) could never run its next step: ``config`` replaces it. A new
    campaign's ``generate`` section runs first (:func:`generate_candidates`)."""
    document = config.to_document()
    with session_scope(engine) as session:
        known = session.scalar(select(Campaign.id).where(Campaign.name == config.name)) is not None
    if not known:
        # Before the campaign's row: a start killed here generates again, adding nothing twice.
        generate_candidates(engine, config)
    with session_scope(engine) as session:
        campaign = session.scalar(select(Campaign).where(Campaign.name == config.name))
        if campaign is None:
            campaign = Campaign(name=config.name, config=document, status=CampaignStatus.ACTIVE)
            session.add(campaign)
            session.flush()
            return campaign.id
        changed = sorted(key for key in set(document) | set(campaign.config)
                         if document.get(key) != campaign.config.get(key) and key not in ADJUSTABLE)
        if changed and _valid(campaign):
            raise InputError(f"campaign {config.name!r} exists with other settings for {', '.join(changed)}; "
                             "resume it with its stored config or give the new one another name", field=changed[0])
        campaign.config = document
        if campaign.status == CampaignStatus.FINISHED:
            campaign.status, campaign.finished_at = CampaignStatus.ACTIVE, None
        return campaign.id


def generate_candidates(engine: Engine, config: CampaignConfig) -> list[GenerateReport]:
    """The decorations of the config's ``generate`` section, stored (deduplicated, with
    their lineage) under ``candidates.source``; running it again adds nothing."""
    return [decorate(engine, spec.prototype, spec.sites, source=config.candidates.source,
                     charge_balanced=spec.charge_balanced) for spec in config.generate]


def _valid(campaign: Campaign) -> bool:
    try:
        config_from_document(campaign.config)
    except InputError:
        return False
    return True


def candidate_ids(engine: Engine, config: CampaignConfig) -> list[int]:
    """Structures the campaign may choose from (source and/or SQL condition)."""
    query = select(Structure.id).order_by(Structure.id)
    if config.candidates.source is not None:
        query = query.where(Structure.id.in_(select(StructureSource.structure_id).where(
            StructureSource.source == config.candidates.source)))
    with session_scope(engine) as session:
        ids = list(session.scalars(query))
    if config.candidates.where is not None:
        # The user's SQL runs read-only, as one statement, like `workbench sql`.
        matching = set(structures_where(engine, config.candidates.where,
                                        option=f"campaign {config.name!r}: candidates.where"))
        ids = [structure_id for structure_id in ids if structure_id in matching]
    if not ids:
        raise InputError(f"campaign {config.name!r}: no stored structure matches its candidates", field="candidates")
    return ids


def ledger_structures(engine: Engine, campaign_id: int) -> list[int]:
    """Structures in the campaign's ledger, each once, in the order they were chosen."""
    with session_scope(engine) as session:
        ids = session.scalars(select(Acquisition.structure_id).join(Round).where(Round.campaign_id == campaign_id)
                              .order_by(Round.number, Acquisition.batch))
        return list(dict.fromkeys(ids))


def _ledger_keys(engine: Engine, campaign_id: int) -> set[str]:
    with session_scope(engine) as session:
        return set(session.scalars(
            select(Structure.dedup_key).distinct().join(Acquisition, Acquisition.structure_id == Structure.id)
            .join(Round, Round.id == Acquisition.round_id).where(Round.campaign_id == campaign_id)
        ))


def eligible_candidates(engine: Engine, campaign_id: int, config: CampaignConfig) -> list[int]:
    """Candidates not labeled for an objective target (or what a model learns for it), not
    being computed, and not in this campaign's ledger already — all matched by dedup key."""
    labels = [*config.parsed_objective.targets, *config.learned_targets]
    return eligible(engine, candidate_ids(engine, config), labels, also_blocked=_ledger_keys(engine, campaign_id))


def labeled_counts(engine: Engine, targets: list[str]) -> dict[str, int]:
    """Structures labeled for each target, anywhere in the store (what retraining sees)."""
    with session_scope(engine) as session:
        counts = dict(session.execute(
            select(TargetDefinition.name, func.count(TargetValue.id)).join(TargetValue)
            .where(TargetDefinition.name.in_(targets)).group_by(TargetDefinition.name)
        ).all())
    return {target: counts.get(target, 0) for target in targets}


@dataclass(frozen=True)
class Progress:
    spent: int  # acquisitions dispatched so far (each one a DFT calculation)
    hits: int
    model_rounds: int  # finished rounds that ranked with a model


def progress(engine: Engine, campaign_id: int) -> Progress:
    with session_scope(engine) as session:
        in_campaign = select(Acquisition).join(Round).where(Round.campaign_id == campaign_id)
        rows = session.scalars(in_campaign).all()
        model_rounds = session.scalar(select(func.count(Round.id)).where(
            Round.campaign_id == campaign_id, Round.status == RoundStatus.DONE,
            Round.model_version_id.is_not(None)))
        dispatched = [row.calculation_id for row in rows if row.status is not AcquisitionStatus.PROPOSED]
        spent = calculations_spent(dispatched)[-1] if dispatched else 0
        hits = sum(bool(row.outcome and row.outcome.get("hit")) for row in rows)
    return Progress(spent, hits, model_rounds)


def stop_reason(engine: Engine, campaign_id: int, config: CampaignConfig) -> str | None:
    """Why the campaign is finished, or ``None`` if another round should run."""
    state = progress(engine, campaign_id)
    if state.spent >= config.budget:
        return f"budget of {config.budget} calculations spent"
    if config.stop.hits is not None and state.hits >= config.stop.hits:
        return f"{state.hits} hits found"
    if config.stop.rounds is not None and state.model_rounds >= config.stop.rounds:
        return f"{state.model_rounds} model-guided rounds run"
    if not eligible_candidates(engine, campaign_id, config):
        return "no candidate left"
    return None


def _labels_wanted(config: CampaignConfig) -> int:
    """Labels of each learned target bought at random before a model ranks: the config's
    ``initial``, and at least what a model needs to train."""
    return max(config.initial, MIN_LABELS)


def _needs_random_round(engine: Engine, config: CampaignConfig) -> bool:
    counts = labeled_counts(engine, config.learned_targets)
    return min(counts.values()) < _labels_wanted(config) and config.acquisition.function != RANDOM


def unfinished_round(engine: Engine, campaign_id: int) -> RoundRef | None:
    with session_scope(engine) as session:
        unfinished = session.scalar(select(Round).where(
            Round.campaign_id == campaign_id, Round.status != RoundStatus.DONE).order_by(Round.number))
        return None if unfinished is None else RoundRef.of(unfinished)


def resume_round(engine: Engine, campaign_id: int) -> RoundRef | None:
    """The unfinished round, or a new one if the campaign should go on, else ``None``
    (and the campaign is marked finished)."""
    config = campaign_config(engine, campaign_id)
    unfinished = unfinished_round(engine, campaign_id)
    if unfinished is not None:
        return unfinished
    reason = stop_reason(engine, campaign_id, config)
    with session_scope(engine) as session:
        campaign = session.get(Campaign, campaign_id)
        if reason is not None:
            campaign.status, campaign.finished_at = CampaignStatus.FINISHED, campaign.finished_at or _now()
            return None
        last = session.scalar(select(func.max(Round.number)).where(Round.campaign_id == campaign_id))
        number = 0 if last is None else last + 1
        random = number == 0 or _needs_random_round(engine, config)
        round_row = Round(campaign_id=campaign_id, number=number, status=RoundStatus.STARTED,
                          kind=RoundKind.RANDOM if random else RoundKind.MODEL)
        session.add(round_row)
        session.flush()
        return RoundRef.of(round_row)


# -- the steps --------------------------------------------------------------------------

def _model_name(config: CampaignConfig, target: str) -> str:
    return f"{config.name}-{target}"


def screen(engine: Engine, settings: Settings, round_ref: RoundRef, *, on_event: Events | None = None) -> None:
    """Run the config's cheap ``screen`` preset over the candidates and the structures
    labeled for the first objective target, where it has not run yet (none after the
    first time, unless the pool grew), and note its calculations and their seconds in
    the round's summary. They are not acquisitions: the budget does not count them."""
    config = campaign_config(engine, round_ref.campaign_id)
    if config.screen is None:
        return
    with session_scope(engine) as session:
        labeled = session.scalars(select(TargetValue.structure_id).join(TargetDefinition).where(
            TargetDefinition.name == config.learned_targets[0]))
        structure_ids = sorted(set(candidate_ids(engine, config)) | set(labeled))
    preset = load_preset(config.screen.preset)
    calculation_ids = queue_calculations(engine, structure_ids, preset)
    with session_scope(engine) as session:
        queued = list(session.scalars(select(Calculation.id).where(
            one_of(session, Calculation.id, calculation_ids), Calculation.status == CalculationStatus.QUEUED)))
    if not queued:
        return
    if on_event:
        on_event(f"round {round_ref.number}: screening {len(queued)} structures with {preset.name}")
    options = RunOptions.from_settings(settings, jobs=config.screen.jobs)
    report = run_queued(engine, preset, options, calculation_ids=queued)
    with session_scope(engine) as session:
        seconds = session.scalar(select(func.sum(Calculation.wall_time_s)).where(one_of(session, Calculation.id, queued)))
        round_row = session.get(Round, round_ref.round_id)
        round_row.summary = {**(round_row.summary or {}), "screen": {
            "preset": preset.name, "calculations": len(queued), "failed": len(report.failed),
            "wall_time_s": float(seconds or 0.0)}}
    if on_event:
        on_event(f"round {round_ref.number}: screened {len(queued)} structures with {preset.name} "
                 f"({len(report.failed)} failed, {seconds or 0.0:.0f} s)")


def retrain(engine: Engine, settings: Settings, round_ref: RoundRef, *, on_event: Events | None = None,
            member_executor: Executor | None = None) -> dict[str, int]:
    """Train and register one ensemble per modelled target with enough labels (the new
    version becomes ``@champion``: it is the model this round ranks with), its members in
    ``member_executor`` if given. Targets already trained in this round are kept, so a
    resumed round trains only the rest. The first objective target's ensemble learns the
    residual against ``model.prior`` when the config names one; the config's ``screen``
    runs first (:func:`screen`)."""
    screen(engine, settings, round_ref, on_event=on_event)
    config = campaign_config(engine, round_ref.campaign_id)
    with session_scope(engine) as session:
        models = dict(session.get(Round, round_ref.round_id).models or {})
    counts = labeled_counts(engine, config.modelled_targets)
    first_target = config.learned_targets[0]
    for target in config.modelled_targets:
        if target in models or counts[target] < MIN_LABELS:
            continue
        request = TrainRequest(target=target, name=_model_name(config, target),
                               architecture=config.model.architecture,
                               featurizer=config.model.featurizer(),
                               train=config.model.train_config(config.seed * 1000 + round_ref.number),
                               backbone=dict(config.model.backbone), champion=True, device=config.model.device,
                               prior=config.model.prior if target == first_target else None)
        result = train_and_register(engine, settings, request, member_executor=member_executor)
        models[target] = result.model_version_id
        if on_event:
            on_event(f"round {round_ref.number}: {target} model version {result.registry_version} "
                     f"(test MAE {result.metrics.get('mae', float('nan')):.3g})")
        with session_scope(engine) as session:  # each target kept as soon as it is trained
            session.get(Round, round_ref.round_id).models = dict(models)
    with session_scope(engine) as session:
        round_row = session.get(Round, round_ref.round_id)
        round_row.models, round_row.model_version_id = models, models.get(first_target)
        advance(session, round_ref)
    return models


def predict(engine: Engine, settings: Settings, round_ref: RoundRef, *, on_event: Events | None = None) -> int:
    """Predictions of the round's models for every eligible candidate (skipping those a
    model has predicted already); returns how many were written."""
    config = campaign_config(engine, round_ref.campaign_id)
    with session_scope(engine) as session:
        models = session.get(Round, round_ref.round_id).models or {}
        versions = {target: session.get(ModelVersion, model_version_id) for target, model_version_id in models.items()}
        uris = {target: f"{version.name}/{version.registry_version}" for target, version in versions.items()}
    eligible = eligible_candidates(engine, round_ref.campaign_id, config)
    first_target = config.learned_targets[0]
    with_prior = _with_prior(engine, config, models, eligible)
    if on_event and len(with_prior) < len(eligible):
        on_event(f"round {round_ref.number}: {len(eligible) - len(with_prior)} candidates have no "
                 f"{config.model.prior} (the prior) and are not predicted for {first_target}")
    written = sum(predict_into_store(engine, settings, uri, structure_ids=with_prior if target == first_target
                                     else eligible, device=config.model.device) for target, uri in uris.items())
    with session_scope(engine) as session:
        advance(session, round_ref)
    if on_event:
        on_event(f"round {round_ref.number}: {written} predictions of {len(eligible)} candidates written")
    return written


def _with_prior(engine: Engine, config: CampaignConfig, models: dict[str, int], eligible: list[int]) -> list[int]:
    """The candidates the round's models can predict: with ``model.prior``, those with a
    value of it, as the first learned target's model adds the prior back; else all."""
    if not config.model.prior or config.learned_targets[0] not in models:
        return eligible
    values = prior_values(engine, config.model.prior, eligible)
    return [structure_id for structure_id in eligible if structure_id in values]


def _scalar_predictions(engine: Engine, models: dict[str, int], structure_ids: list[int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    predictions = {}
    with session_scope(engine) as session:
        for target, model_version_id in models.items():
            rows = {row.structure_id: row for row in session.execute(
                select(Prediction.structure_id, Prediction.mean, Prediction.std)
                .where(Prediction.model_version_id == model_version_id, Prediction.mean.is_not(None),
                       one_of(session, Prediction.structure_id, structure_ids)))}
            if rows:
                missing = [i for i in structure_ids if i not in rows]
                if missing:
                    raise LookupError(f"model version {model_version_id} has not predicted structures {missing[:5]}")
                predictions[target] = (np.array([rows[i].mean for i in structure_ids]),
                                       np.array([rows[i].std for i in structure_ids]))
    return predictions


def _best_labeled(engine: Engine, constraint: Constraint) -> float:
    """The best stored label of the constraint's target, towards its bound."""
    best_value = func.max(TargetValue.value) if constraint.maximizes else func.min(TargetValue.value)
    with session_scope(engine) as session:
        best = session.scalar(select(best_value).join(TargetDefinition).where(TargetDefinition.name == constraint.target))
    if best is None:
        raise NotFound(f"no label of {constraint.target!r} to improve on")
    return float(best)


def _embeddings(engine: Engine, settings: Settings, model_version_id: int, structure_ids: list[int],
                device: torch.device) -> np.ndarray:
    """The first member's pooled representation of each structure, computed on ``device``
    (for diverse batches)."""
    import mlflow

    with session_scope(engine) as session:
        version = session.get(ModelVersion, model_version_id)
        name, registry_version, featurizer_key = version.name, version.registry_version, version.featurizer_key
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    with tempfile.TemporaryDirectory() as scratch:
        model = download_ensemble(name, registry_version, Path(scratch)).members[0]
    featurizer = featurizer_of(engine, featurizer_key)
    graphs = load_graphs(engine, featurizer_key, structure_ids)
    table = featurizer.feature_table()
    triplets = needs_triplets(model.config.architecture)
    return embed(model, [graph_to_data(graphs[i], table, triplets=triplets) for i in structure_ids], device)


def _lean_on_prior(engine: Engine, settings: Settings, config: CampaignConfig, models: dict[str, int],
                   eligible: list[int], predictions: dict) -> tuple[RankingBasis | None, dict]:
    """The predictions to rank by: the first learned target's (whose model has the prior)
    replaced by its prior's fit while its model does not beat the fit on held-out labels
    (:func:`~workbench.acquire.basis.ranking_basis`); no basis without a prior."""
    target = config.learned_targets[0]
    if not config.model.prior or target not in models:
        return None, predictions
    with session_scope(engine) as session:
        version = session.get(ModelVersion, models[target])
        metrics, run_id = dict(version.metrics or {}), version.mlflow_run_id
    basis = ranking_basis(metrics)
    if basis.basis is Basis.MODEL:
        return basis, predictions
    import mlflow

    fit = PriorFit.from_params(mlflow.MlflowClient(settings.mlflow_tracking_uri).get_run(run_id).data.params)
    values = prior_values(engine, config.model.prior, eligible)
    prior = np.array([values.get(structure_id, np.nan) for structure_id in eligible])
    with session_scope(engine) as session:
        compositions = dict(session.execute(select(Structure.id, Structure.composition)
                                            .where(one_of(session, Structure.id, eligible))).all())
    return basis, {**predictions, target: prior_predictions(fit, prior, [compositions[i] for i in eligible],
                                                            metrics[PRIOR_RMSE])}


def _basis_summary(basis: RankingBasis | None, plan: BatchPlan) -> dict:
    """What the round's summary says of the basis; a round ranked by the prior says so in
    its note, which the report shows."""
    if basis is None:
        return {}
    note = "; ".join(filter(None, [basis.why if basis.basis is Basis.PRIOR else None, plan.note])) or None
    return {"basis": basis.basis.value, "basis_why": basis.why, "note": note}


def rank(engine: Engine, settings: Settings, round_ref: RoundRef, *, on_event: Events | None = None) -> list[int]:
    """Choose the round's batch with :func:`~workbench.acquire.plan.plan_batch` over the
    stored predictions, and write it to the ledger as ``proposed`` (the plan's reasons and
    any note on tied scores go in the round's summary); returns the chosen structure ids.
    A round already ranked returns its batch unchanged. With a prior, the round ranks by
    the prior's line until the model beats it (:func:`_lean_on_prior`); the summary's
    ``basis`` and the ledger rows' ``source`` say so."""
    config = campaign_config(engine, round_ref.campaign_id)
    existing = round_structures(engine, round_ref.round_id)
    if existing:
        with session_scope(engine) as session:
            advance(session, round_ref)
        return existing
    state = progress(engine, round_ref.campaign_id)
    eligible = eligible_candidates(engine, round_ref.campaign_id, config)
    objective = config.parsed_objective
    with session_scope(engine) as session:
        round_row = session.get(Round, round_ref.round_id)
        models, model_version_id = dict(round_row.models or {}), round_row.model_version_id
    basis = None
    if round_ref.kind is RoundKind.RANDOM:
        labeled = min(labeled_counts(engine, config.learned_targets).values())
        size = max(1, min(_labels_wanted(config) - labeled, config.budget - state.spent, len(eligible)))
        policy, predictions = AcquisitionSettings(function=RANDOM, cost_aware=config.acquisition.cost_aware), {}
    else:
        # Only what predict predicted: a candidate without the prior has no prediction.
        predicted = _with_prior(engine, config, models, eligible)
        if eligible and not predicted:  # else every round would rank nothing, and never end
            raise InputError(f"campaign {config.name!r}: no candidate left has a value of {config.model.prior} "
                             "(the prior), which its model needs; compute it (workbench dft retry) or remove "
                             "model.prior", field="model.prior")
        eligible = predicted
        policy = config.acquisition.settings()
        size = min(policy.batch, config.budget - state.spent, len(eligible))
        basis, predictions = _lean_on_prior(engine, settings, config, models, eligible,
                                            _scalar_predictions(engine, models, eligible))
        # An objective the models do not learn (the energy above the hull) is derived here.
        predictions = derive_predictions(engine, objective.targets, predictions, eligible)
    costs = expected_costs(engine, load_preset(config.dft.preset), eligible) if policy.cost_aware else None
    plan = plan_batch(
        predictions, objective, policy, size=size, count=len(eligible), costs=costs,
        embeddings=None if model_version_id is None else lambda positions: _embeddings(
            engine, settings, model_version_id, [eligible[i] for i in positions], pick_device(config.model.device)),
        best_labeled=(_best_labeled(engine, objective.constraints[0])
                      if SCORE_FUNCTIONS[policy.function].needs_best_label else None),
        rng=np.random.default_rng([config.seed, round_ref.number]))
    rows = []
    for pick, position in enumerate(plan.chosen, start=1):
        predicted = {target: {"mean": float(mean[position]), "std": float(std[position])}
                     for target, (mean, std) in predictions.items()}
        if basis is not None and basis.basis is Basis.PRIOR:
            predicted[config.learned_targets[0]]["source"] = Basis.PRIOR.value
        rows.append(Acquisition(
            round_id=round_ref.round_id, structure_id=eligible[position], model_version_id=model_version_id,
            acquisition_function=plan.function, score=float(plan.scores[position]), rank=int(plan.ranks[position]),
            batch=pick, predicted=predicted or None,
            expected_cost_s=None if costs is None else float(costs[position]),
        ))
    summary = plan.summary() | _basis_summary(basis, plan)
    with session_scope(engine) as session:
        session.add_all(rows)
        round_row = session.get(Round, round_ref.round_id)
        round_row.summary = {**(round_row.summary or {}), "acquisition": summary}
        advance(session, round_ref)
    chosen_ids = [eligible[position] for position in plan.chosen]
    if on_event:
        on_event(f"round {round_ref.number}: {len(chosen_ids)} of {len(eligible)} candidates chosen by "
                 f"{plan.function}{'; ' + summary['note'] if summary['note'] else ''}")
    return chosen_ids


def round_structures(engine: Engine, round_id: int) -> list[int]:
    with session_scope(engine) as session:
        return list(session.scalars(select(Acquisition.structure_id).where(
            Acquisition.round_id == round_id).order_by(Acquisition.batch)))


def relax(engine: Engine, settings: Settings, round_ref: RoundRef, *, on_event: Events | None = None) -> None:
    """Relax the round's batch with the config's ``relax`` preset (no work without one),
    and note its calculations and their seconds in the round's summary. They are not
    acquisitions: the budget does not count them. Repeatable: calculations are unique per
    structure and preset, and only queued ones run."""
    config = campaign_config(engine, round_ref.campaign_id)
    noted = {}
    if config.relax is not None:
        preset = load_preset(config.relax.preset)
        calculation_ids = queue_calculations(engine, round_structures(engine, round_ref.round_id), preset)
        if on_event:
            on_event(f"round {round_ref.number}: relaxing {len(calculation_ids)} structures with {preset.name}")
        run_queued(engine, preset, RunOptions.from_settings(settings, jobs=config.relax.jobs),
                   calculation_ids=calculation_ids, references=False)
        with session_scope(engine) as session:
            rows = session.execute(select(Calculation.status, Calculation.wall_time_s).where(
                one_of(session, Calculation.id, calculation_ids))).all()
        noted = {"relax": {"preset": preset.name, "calculations": len(rows),
                           "failed": sum(row.status is CalculationStatus.FAILED for row in rows),
                           "wall_time_s": float(sum(row.wall_time_s or 0.0 for row in rows))}}
        if on_event:
            on_event(f"round {round_ref.number}: relaxed with {preset.name} ({noted['relax']['failed']} failed, "
                     f"{noted['relax']['wall_time_s']:.0f} s)")
    with session_scope(engine) as session:
        round_row = session.get(Round, round_ref.round_id)
        round_row.summary = {**(round_row.summary or {}), **noted}
        advance(session, round_ref)


def labeled_structures(engine: Engine, config: CampaignConfig, structure_ids: list[int]) -> tuple[list[int], dict[int, dict]]:
    """The structure each candidate's labels are computed on, and the geometries they start
    from: where the config's relaxation of it ended (from its relaxed geometry), else the
    candidate as stored."""
    ends = stage_ends(engine, config.relax.preset, structure_ids) if config.relax is not None else {}
    starts = {end: geometry for end, geometry in ends.values() if geometry is not None}
    return [ends.get(structure_id, (structure_id, None))[0] for structure_id in structure_ids], starts


def dispatch(engine: Engine, settings: Settings, round_ref: RoundRef, *,
             on_event: Events | None = None) -> list[int]:
    """Queue a calculation for every proposed acquisition of the round (on the structure
    its relaxation ended in, if the round relaxed) and link it in the ledger; returns the
    calculation ids (repeatable: calculations are unique per structure and preset, so a
    second call finds the same ones)."""
    config = campaign_config(engine, round_ref.campaign_id)
    structure_ids = round_structures(engine, round_ref.round_id)
    labeled, starts = labeled_structures(engine, config, structure_ids)
    calculation_ids = queue_calculations(engine, labeled, load_preset(config.dft.preset), starts=starts)
    by_structure = dict(zip(structure_ids, calculation_ids, strict=True))
    with session_scope(engine) as session:
        for acquisition in session.scalars(select(Acquisition).where(Acquisition.round_id == round_ref.round_id)):
            acquisition.calculation_id = by_structure[acquisition.structure_id]
            if acquisition.status is AcquisitionStatus.PROPOSED:
                acquisition.status = AcquisitionStatus.DISPATCHED
        advance(session, round_ref)
    if on_event:
        on_event(f"round {round_ref.number}: {len(calculation_ids)} calculations queued ({config.dft.preset})")
    return calculation_ids


def round_calculation_structures(engine: Engine, round_id: int) -> list[int]:
    """The structures the round's calculations compute (relaxed ones, if it relaxed)."""
    with session_scope(engine) as session:
        return list(session.scalars(select(Calculation.structure_id).join(
            Acquisition, Acquisition.calculation_id == Calculation.id).where(
            Acquisition.round_id == round_id).order_by(Acquisition.batch)))


def round_calculations(engine: Engine, round_id: int) -> list[int]:
    with session_scope(engine) as session:
        return list(session.scalars(select(Acquisition.calculation_id).where(
            Acquisition.round_id == round_id, Acquisition.calculation_id.is_not(None)).order_by(Acquisition.batch)))


def compute(engine: Engine, settings: Settings, round_ref: RoundRef, *, on_event: Events | None = None) -> None:
    """Run the round's queued calculations here (the Prefect flow runs them as tasks
    instead); those done already are not touched, lost ones are re-queued first."""
    config = campaign_config(engine, round_ref.campaign_id)
    say = on_event or (lambda message: None)
    options = RunOptions.from_settings(settings, threads=config.dft.threads, jobs=config.dft.jobs,
                                       wall_time_s=config.dft.wall_time_s)
    run_queued(engine, load_preset(config.dft.preset), options,
               calculation_ids=round_calculations(engine, round_ref.round_id), references=config.dft.references,
               on_event=lambda calculation_id, message: say(f"calculation {calculation_id}: {message}"))
    mark_computed(engine, settings, round_ref)


def mark_computed(engine: Engine, settings: Settings, round_ref: RoundRef, *, on_event: Events | None = None) -> None:
    """Advance the round once none of its calculations is queued or running (the Prefect
    flow's compute step, after its ``run-dft`` flow)."""
    with session_scope(engine) as session:
        pending = session.scalar(select(func.count(Calculation.id)).where(
            Calculation.id.in_(select(Acquisition.calculation_id).where(Acquisition.round_id == round_ref.round_id)),
            Calculation.status.in_(IN_FLIGHT)))
        if pending:
            raise RuntimeError(f"round {round_ref.number} still has {pending} calculations queued or running")
        advance(session, round_ref)


def _labels(session, structure_ids: list[int], targets: list[str]) -> dict[tuple[int, str], float]:
    rows = session.execute(
        select(TargetValue.structure_id, TargetDefinition.name, TargetValue.value).join(TargetDefinition)
        .where(TargetDefinition.name.in_(targets), TargetDefinition.kind == TargetKind.SCALAR,
               TargetValue.structure_id.in_(structure_ids))
    ).all()
    return {(structure_id, name): value for structure_id, name, value in rows}


def _hull_levels(session, config: CampaignConfig) -> list[str]:
    """Levels whose hull the round's new energies change: those the objective is on, and
    the round's presets where the store has a hull of them already."""
    computed = [config.dft.preset, *([config.relax.preset] if config.relax is not None else [])]
    on_objective = [level for level in map(hull_level, config.parsed_objective.targets) if level is not None]
    return list(dict.fromkeys([*on_objective, *levels_with_hull(session, computed)]))


def ingest(engine: Engine, settings: Settings, round_ref: RoundRef, *, on_event: Events | None = None) -> dict:
    """Rewrite the hull of every level the round's energies reach (:func:`_hull_levels`),
    record each acquisition's outcome on it (computed values of the structure it was
    labeled on, hit or not, or why it failed) and close the round with its summary, in
    one transaction. An acquisition whose calculation an earlier one (of this round or
    before) was labeled by, its relaxation having ended in the same structure, is recorded
    as ``duplicate_of`` that one: neither its cost nor its hit is counted again."""
    config = campaign_config(engine, round_ref.campaign_id)
    objective = config.parsed_objective
    targets = list(dict.fromkeys([*objective.targets, *config.modelled_targets]))
    with session_scope(engine) as session:
        hulls = refresh_hulls(session, _hull_levels(session, config))
        acquisitions = session.scalars(select(Acquisition).where(Acquisition.round_id == round_ref.round_id)
                                       .order_by(Acquisition.id)).all()
        first_by_calculation = dict(session.execute(
            select(Acquisition.calculation_id, func.min(Acquisition.id)).join(Round)
            .where(Round.campaign_id == round_ref.campaign_id, Round.id != round_ref.round_id,
                   Acquisition.calculation_id.is_not(None), Acquisition.status == AcquisitionStatus.LABELED)
            .group_by(Acquisition.calculation_id)).all())
        calculations = {row.id: row for row in session.scalars(select(Calculation).where(
            Calculation.id.in_([a.calculation_id for a in acquisitions if a.calculation_id])))}
        labeled_on = {a.id: calculations[a.calculation_id].structure_id if a.calculation_id in calculations
                      else a.structure_id for a in acquisitions}
        labels = _labels(session, list(set(labeled_on.values())), targets)
        hits = failed = 0
        cost = 0.0
        for acquisition in acquisitions:
            calculation = calculations.get(acquisition.calculation_id)
            first = (first_by_calculation.setdefault(acquisition.calculation_id, acquisition.id)
                     if acquisition.calculation_id else acquisition.id)
            structure_id = labeled_on[acquisition.id]
            computed = {target: labels[(structure_id, target)] for target in targets
                        if (structure_id, target) in labels}
            complete = all(target in computed for target in objective.targets)
            if calculation is not None and calculation.wall_time_s and first == acquisition.id:
                cost += calculation.wall_time_s
            if complete:
                hit = (first == acquisition.id
                       and bool(objective.holds({target: np.array([computed[target]]) for target in objective.targets})[0]))
                acquisition.outcome = {"computed": computed, "hit": hit} | (
                    {"structure_id": structure_id} if structure_id != acquisition.structure_id else {}) | (
                    {"duplicate_of": first} if first != acquisition.id else {})
                acquisition.status = AcquisitionStatus.LABELED
                hits += hit
            else:
                reason = calculation.reason if calculation is not None else "not computed"
                acquisition.outcome = {"computed": computed, "hit": False, "reason": reason or "no label"}
                acquisition.status = AcquisitionStatus.FAILED
                failed += 1
        round_row = session.get(Round, round_ref.round_id)
        summary = {**(round_row.summary or {}), RoundCount.ACQUIRED: len(acquisitions), RoundCount.HITS: hits,
                   RoundCount.FAILED: failed, RoundCount.DFT_SECONDS: round(cost, 1)} | ({"hull": {
                       level: report if isinstance(report, str) else
                       {"values": report.values, "new": report.new, "updated": report.updated}
                       for level, report in hulls.items()}} if hulls else {})
        round_row.summary, round_row.finished_at = summary, _now()
        advance(session, round_ref)
    if on_event:
        on_event(f"round {round_ref.number}: {hits} hits, {failed} failed of {len(acquisitions)}")
    return summary


# -- the whole loop without Prefect ------------------------------------------------------

@dataclass(frozen=True)
class CampaignOutcome:
    campaign_id: int
    rounds: int
    spent: int
    hits: int
    stopped_because: str


def run_campaign(engine: Engine, settings: Settings, config: CampaignConfig, *,
                 on_event: Events | None = None) -> CampaignOutcome:
    """Run (or resume) a campaign to its end in this process."""
    say = on_event or (lambda message: None)
    campaign_id = open_campaign(engine, config)
    rounds = 0
    while (round_ref := resume_round(engine, campaign_id)) is not None:
        say(f"round {round_ref.number} ({round_ref.kind.value}): {round_ref.status.value}")
        run_round(engine, settings, round_ref, on_event=say)
        rounds += 1
    state = progress(engine, campaign_id)
    reason = stop_reason(engine, campaign_id, config) or "finished"
    return CampaignOutcome(campaign_id, rounds, state.spent, state.hits, reason)


def run_round(engine: Engine, settings: Settings, round_ref: RoundRef, *, on_event: Events | None = None) -> RoundRef:
    """The steps of one round from wherever it stopped, in the order of
    :func:`workbench.campaign.rounds.steps`; returns the round, done."""
    while round_ref.status is not RoundStatus.DONE:
        round_ref = run_step(engine, settings, round_ref, on_event=on_event)
    return round_ref
