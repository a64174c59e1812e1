"""Prefect flow ``run-dft``: ``workbench dft run`` as a flow, one task per calculation, or
per batch for a preset that computes several structures in one process (``batch_size``:
the universal models), cut for ``jobs`` workers stage by stage (references, then the
structures).

Every step is a :mod:`workbench.dft.runner` function; tasks pass ids, not objects. The
calculation tasks carry the tag ``dft``, so a concurrency limit caps how many run at once
across all flows (``prefect concurrency-limit create dft 2``). A dropped database
connection is retried; a failed calculation is not a failed task: its reason is in the
store, and ``workbench dft retry`` (or this flow again) takes it up.
"""

from prefect import flow, get_run_logger

from flows.tasks import store_task
from workbench.dft.ingest import add_formation_energies
from workbench.dft.presets import load_preset
from workbench.dft.runner import (
    RunOptions,
    batch_chunks,
    plan_run,
    queue_calculations,
    run_batch,
    run_calculation,
)
from workbench.settings import Settings
from workbench.store.engine import open_engine

DFT_TAG = "dft"


@store_task
def plan(preset_name: str, structure_ids: list[int], threads: int, wall_time_s: float | None,
         references: bool) -> list[list[int]]:
    settings = Settings()
    preset = load_preset(preset_name)
    options = RunOptions.from_settings(settings, threads=threads, wall_time_s=wall_time_s)
    with open_engine(settings.database_url) as engine:
        calculation_ids = queue_calculations(engine, structure_ids, preset)
        run_plan = plan_run(engine, preset, options, calculation_ids=calculation_ids, references=references)
    for element, why in run_plan.references_missing.items():
        get_run_logger().warning("no elemental reference for %s: %s", element, why)
    return run_plan.stages


@store_task(tags=[DFT_TAG])
def run_one(calculation_id: int, preset_name: str, threads: int, wall_time_s: float | None) -> str | None:
    settings = Settings()
    options = RunOptions.from_settings(settings, threads=threads, wall_time_s=wall_time_s)
    with open_engine(settings.database_url) as engine:
        return run_calculation(engine, calculation_id, load_preset(preset_name), options,
                               on_event=lambda i, message: get_run_logger().info("calculation %s: %s", i, message))


@store_task(tags=[DFT_TAG])
def run_many(calculation_ids: list[int], preset_name: str, threads: int,
             wall_time_s: float | None) -> dict[int, str | None]:
    settings = Settings()
    options = RunOptions.from_settings(settings, threads=threads, wall_time_s=wall_time_s)
    with open_engine(settings.database_url) as engine:
        return run_batch(engine, calculation_ids, load_preset(preset_name), options,
                         on_event=lambda i, message: get_run_logger().info("calculation %s: %s", i, message))


@store_task
def formation_energies(preset_name: str) -> int:
    with open_engine(Settings().database_url) as engine:
        return add_formation_energies(engine, preset_name)


@flow(name="run-dft")
def run_dft(structure_ids: list[int], preset: str = "gpaw", threads: int = 1,
            wall_time_s: float | None = None, references: bool = True, jobs: int = 1) -> dict[str, list[int]]:
    """Compute the structures with a preset (with ``references``, the elemental references
    first and formation energies after); returns the calculation ids by final status.
    ``jobs``: the workers a batched preset's structures are cut into batches for."""
    outcome: dict[str, list[int]] = {"done": [], "failed": [], "skipped": []}
    batch_size = load_preset(preset).batch_size
    for stage in plan(preset, structure_ids, threads, wall_time_s, references):
        if batch_size > 1:
            futures = [run_many.submit(batch, preset, threads, wall_time_s)
                       for batch in batch_chunks(stage, batch_size, jobs)]
            statuses = {calculation_id: status for future in futures for calculation_id, status in future.result().items()}
        else:
            futures = [run_one.submit(calculation_id, preset, threads, wall_time_s) for calculation_id in stage]
            statuses = {calculation_id: future.result() for calculation_id, future in zip(stage, futures, strict=True)}
        for calculation_id in stage:
            outcome[statuses[calculation_id] or "skipped"].append(calculation_id)
    if references:
        formation_energies(preset)
    return outcome
