"""Prefect flows of the campaign: ``campaign`` runs or resumes a campaign to its end;
``step`` runs the next step of its current round.

Both walk the steps of :mod:`workbench.campaign.rounds` in their order, each step a task
named after it; the round's status in the store says which step is next, and tasks pass
ids, never objects. Two steps are spread over more tasks: ``retrain`` trains the ensemble
members on the Dask cluster when one is set (:mod:`flows.task_runners`), and ``compute``
runs the ``run-dft`` flow, one task per calculation. A flow run that dies is simply
started again and goes on where the last one stopped.

    python -m flows.campaign CONFIG.yaml        # run the loop here, against PREFECT_API_URL
    prefect deployment run 'campaign/local' -p config=/path/to/CONFIG.yaml
"""

import sys
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path

from prefect import flow, get_run_logger
from prefect_dask import get_dask_client

from flows.run_dft import run_dft
from flows.task_runners import task_runner, uses_dask
from flows.tasks import store_task
from workbench.campaign import loop, rounds
from workbench.campaign.config import load_config
from workbench.campaign.rounds import RoundRef, RoundStatus
from workbench.campaign.store import campaign_config, campaign_id_of
from workbench.settings import Settings
from workbench.store.engine import open_engine


def _log(message: str) -> None:
    get_run_logger().info(message)


@store_task
def open_campaign_task(config_path: str) -> str:
    config = load_config(Path(config_path))
    with open_engine(Settings().database_url) as engine:
        loop.open_campaign(engine, config)
    return config.name


@store_task
def next_round_task(campaign: str) -> RoundRef | None:
    """The campaign's unfinished round, or a new one; ``None`` once it is finished."""
    with open_engine(Settings().database_url) as engine:
        return loop.resume_round(engine, campaign_id_of(engine, campaign))


@store_task
def step_task(round_ref: RoundRef) -> RoundRef:
    """The step at the round's status (passed without work if it does not run for the
    round's kind); returns the round after it."""
    settings = Settings()
    with open_engine(settings.database_url) as engine:
        return rounds.run_step(engine, settings, round_ref, on_event=_log)


@store_task(name="retrain")
def retrain_on_cluster_task(round_ref: RoundRef) -> RoundRef:
    settings = Settings()
    with open_engine(settings.database_url) as engine, get_dask_client() as client:
        members_there = partial(loop.retrain, member_executor=client.get_executor())
        return rounds.run_step(engine, settings, round_ref, on_event=_log, run=members_there)


@store_task(name="compute")
def computed_task(round_ref: RoundRef) -> RoundRef:
    settings = Settings()
    with open_engine(settings.database_url) as engine:
        return rounds.run_step(engine, settings, round_ref, on_event=_log, run=loop.mark_computed)


@flow(name="retrain")
def retrain_on_cluster(round_ref: RoundRef) -> RoundRef:
    """The retrain step on a Dask task runner: submitted there, its task trains the
    ensemble members on the cluster."""
    return retrain_on_cluster_task.submit(round_ref).result()


def _retrain(round_ref: RoundRef, settings: Settings) -> RoundRef:
    if not uses_dask(settings):
        return step_task.with_options(name="retrain")(round_ref)
    return retrain_on_cluster.with_options(task_runner=task_runner(settings, 1))(round_ref)


def _compute(round_ref: RoundRef, settings: Settings) -> RoundRef:
    """The round's calculations by the ``run-dft`` flow (of the structures dispatch queued
    them on: relaxed ones, if the round relaxed), then the round marked computed."""
    with open_engine(settings.database_url) as engine:
        dft = campaign_config(engine, round_ref.campaign_id).dft
        structure_ids = loop.round_calculation_structures(engine, round_ref.round_id)
    run_dft.with_options(task_runner=task_runner(settings, dft.jobs))(
        structure_ids, preset=dft.preset, threads=dft.threads, wall_time_s=dft.wall_time_s,
        references=dft.references, jobs=dft.jobs)
    return computed_task(round_ref)


# Steps whose work the flows spread over more tasks, by step name; any other step is one task.
SPREAD_STEPS: dict[str, Callable[[RoundRef, Settings], RoundRef]] = {"retrain": _retrain, "compute": _compute}


def _run_step(round_ref: RoundRef, settings: Settings) -> RoundRef:
    step = rounds.step_at(round_ref.status)
    spread = SPREAD_STEPS.get(step.name) if step.runs_for(round_ref.kind) else None
    if spread is None:
        return step_task.with_options(name=step.name)(round_ref)
    return spread(round_ref, settings)


@flow(name="step")
def step(campaign: str) -> dict | None:
    """Run the next step of the campaign's current round (opening a round if none is
    open); returns that round after it, or ``None`` once the campaign is finished."""
    round_ref = next_round_task(campaign)
    return None if round_ref is None else asdict(_run_step(round_ref, Settings()))


@flow(name="campaign")
def campaign(config: str) -> dict:
    """Run or resume the campaign of the YAML file ``config`` to its end."""
    name = open_campaign_task(config)
    settings = Settings()
    rounds_run = 0
    while (round_ref := next_round_task(name)) is not None:
        _log(f"round {round_ref.number} ({round_ref.kind.value}): {round_ref.status.value}")
        while round_ref.status is not RoundStatus.DONE:
            round_ref = _run_step(round_ref, settings)
        rounds_run += 1
    return {"campaign": name, "rounds": rounds_run}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m flows.campaign CONFIG.yaml")
    print(campaign(sys.argv[1]))
