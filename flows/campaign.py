"""Prefect flows of the campaign: ``retrain``, ``predict``, ``rank``, ``ingest`` and
``campaign``, the loop that calls them and ``run-dft`` round after round.

Each flow works on the campaign's current round and runs one step of
:mod:`workbench.campaign.loop` as a task; tasks pass names and ids, never objects. The
store records every step, so a flow run that dies is simply started again and goes on
where the last one stopped. A dropped database connection is retried.

    python flows/campaign.py CONFIG.yaml        # run the loop here, against PREFECT_API_URL
    prefect deployment run 'campaign/local' -p config=/path/to/CONFIG.yaml
"""

import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect_dask import get_dask_client
from sqlalchemy.exc import OperationalError

if __package__ in (None, ""):  # run as a script: make `flows` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows.run_dft import run_dft
from flows.task_runners import task_runner, uses_dask
from workbench.campaign import loop
from workbench.campaign.config import load_config
from workbench.settings import Settings
from workbench.store.engine import make_engine


def _transient(task, task_run, state) -> bool:
    return isinstance(state.result(raise_on_failure=False), OperationalError)


def _log(message: str) -> None:
    get_run_logger().info(message)


def _current(engine, campaign: str, *, create: bool = False) -> loop.RoundRef | None:
    campaign_id = loop.campaign_id_of(engine, campaign)
    if create:
        return loop.resume_round(engine, campaign_id)
    return loop.unfinished_round(engine, campaign_id)


def _step(campaign: str, expected: loop.RoundStatus, run, *, create: bool = False):
    settings = Settings()
    engine = make_engine(settings.database_url)
    try:
        round_ref = _current(engine, campaign, create=create)
        if round_ref is None:
            _log(f"campaign {campaign!r} has no round to work on")
            return None
        if round_ref.status is not expected:
            _log(f"round {round_ref.number} is {round_ref.status.value}, not {expected.value}: nothing to do")
            return None
        return run(engine, settings, round_ref)
    finally:
        engine.dispose()


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_transient)
def open_campaign_task(config_path: str) -> str:
    config = load_config(Path(config_path))
    engine = make_engine(Settings().database_url)
    try:
        loop.open_campaign(engine, config)
    finally:
        engine.dispose()
    return config.name


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_transient)
def next_round_task(campaign: str) -> dict | None:
    engine = make_engine(Settings().database_url)
    try:
        round_ref = loop.resume_round(engine, loop.campaign_id_of(engine, campaign))
    finally:
        engine.dispose()
    return None if round_ref is None else {"round_id": round_ref.round_id, "number": round_ref.number,
                                           "status": round_ref.status.value, "random": round_ref.random}


def _retrain(engine, settings: Settings, round_ref: loop.RoundRef) -> dict[str, int]:
    if not uses_dask(settings):
        return loop.retrain(engine, settings, round_ref, on_event=_log)
    # On the Dask cluster this task runs on: its members train there in parallel.
    with get_dask_client() as client:
        return loop.retrain(engine, settings, round_ref, on_event=_log, member_executor=client.get_executor())


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_transient)
def retrain_task(campaign: str) -> dict[str, int] | None:
    return _step(campaign, loop.RoundStatus.STARTED, _retrain, create=True)


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_transient)
def predict_task(campaign: str) -> int | None:
    return _step(campaign, loop.RoundStatus.TRAINED, loop.predict)


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_transient)
def rank_task(campaign: str) -> list[int] | None:
    return _step(campaign, loop.RoundStatus.PREDICTED,
                 lambda engine, settings, ref: loop.rank(engine, settings, ref, on_event=_log))


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_transient)
def dispatch_task(campaign: str) -> list[int] | None:
    return _step(campaign, loop.RoundStatus.RANKED, lambda engine, settings, ref: loop.dispatch(engine, ref))


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_transient)
def computed_task(campaign: str) -> None:
    _step(campaign, loop.RoundStatus.DISPATCHED, lambda engine, settings, ref: loop.mark_computed(engine, ref))


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_transient)
def ingest_task(campaign: str) -> dict | None:
    return _step(campaign, loop.RoundStatus.COMPUTED, lambda engine, settings, ref: loop.ingest(engine, ref))


@flow(name="retrain")
def retrain(campaign: str) -> dict[str, int] | None:
    """Train and register the current round's ensembles (starting a round if none is open).
    Submitted, so that on a Dask task runner it runs on the cluster and trains the members
    there."""
    return retrain_task.submit(campaign).result()


@flow(name="predict")
def predict(campaign: str) -> int | None:
    """Write the current round's predictions for every eligible candidate."""
    return predict_task(campaign)


@flow(name="rank")
def rank(campaign: str) -> list[int] | None:
    """Choose the current round's batch, record it in the ledger and queue its DFT."""
    chosen = rank_task(campaign)
    dispatch_task(campaign)
    return chosen


@flow(name="ingest")
def ingest(campaign: str) -> dict | None:
    """Record the outcomes of the current round's calculations and close the round."""
    computed_task(campaign)
    return ingest_task(campaign)


@flow(name="campaign")
def campaign(config: str) -> dict:
    """Run or resume the campaign of the YAML file ``config`` to its end."""
    name = open_campaign_task(config)
    settings = Settings()
    engine = make_engine(settings.database_url)
    try:
        dft = loop.campaign_config(engine, loop.campaign_id_of(engine, name)).dft
    finally:
        engine.dispose()
    rounds = 0
    while (current := next_round_task(name)) is not None:
        _log(f"round {current['number']}{' (random)' if current['random'] else ''}: {current['status']}")
        status = loop.RoundStatus(current["status"])
        order = list(loop.RoundStatus)
        if order.index(status) <= order.index(loop.RoundStatus.STARTED):
            retrain.with_options(task_runner=task_runner(settings, 1))(name)
        if order.index(status) <= order.index(loop.RoundStatus.TRAINED):
            predict(name)
        if order.index(status) <= order.index(loop.RoundStatus.RANKED):
            rank(name)
        if order.index(status) <= order.index(loop.RoundStatus.DISPATCHED):
            engine = make_engine(settings.database_url)
            try:
                structure_ids = loop.round_structures(engine, current["round_id"])
            finally:
                engine.dispose()
            run_dft.with_options(task_runner=task_runner(settings, dft.jobs))(
                structure_ids, preset=dft.preset, threads=dft.threads, wall_time_s=dft.wall_time_s,
                references=dft.references)
        summary = ingest(name)
        _log(f"round {current['number']}: {summary}")
        rounds += 1
    return {"campaign": name, "rounds": rounds}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python flows/campaign.py CONFIG.yaml")
    print(campaign(sys.argv[1]))
