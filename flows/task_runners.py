"""Where the flows' tasks run: on a Dask cluster when the settings name one, else on
threads of the flow's own process.

- ``WORKBENCH_DASK_ADDRESS=tcp://host:8786``: an existing cluster, e.g. the scheduler of
  a ``dask_jobqueue.SLURMCluster`` (docs/deploy.md);
- ``WORKBENCH_DASK_WORKERS=N``: a local cluster of ``N`` single-threaded worker processes,
  started for the flow run and stopped after it.
"""

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from workbench.settings import Settings


def uses_dask(settings: Settings) -> bool:
    return bool(settings.dask_address or settings.dask_workers)


def task_runner(settings: Settings, threads: int) -> TaskRunner:
    """The runner for a flow whose tasks may run ``threads`` at once without Dask."""
    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    if settings.dask_workers:
        # One thread per worker process: each task (a DFT job, an ensemble member) sets its
        # own thread count, and torch and GPAW do not share a process well.
        return DaskTaskRunner(cluster_kwargs={"n_workers": settings.dask_workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    return ThreadPoolTaskRunner(max_workers=threads)
