"""The one task decorator of the flows: a dropped database connection (SQLAlchemy's
``OperationalError``) is retried; bad input, and a calculation that failed (its reason is
in the store), are not. Results are never cached or persisted: a task answers from the
store, which changes under the same arguments."""

from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.exc import OperationalError

RETRIES = 2
RETRY_DELAY_S = 5


def _transient(task, task_run, state) -> bool:
    return isinstance(state.result(raise_on_failure=False), OperationalError)


def store_task(function=None, **options):
    """``prefect.task`` with the shared retry policy and no cached results (with Prefect's
    default, inputs as the cache key, a second ``next_round_task(name)`` of a flow run
    would return the first round again once results are persisted), used bare
    (``@store_task``) or with more task options (``@store_task(tags=["dft"])``)."""
    decorate = task(retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S, retry_condition_fn=_transient,
                    cache_policy=NO_CACHE, persist_result=False, **options)
    return decorate if function is None else decorate(function)
