"""The one task decorator of the flows: a dropped database connection (SQLAlchemy's
``OperationalError``) is retried; bad input, and a calculation that failed (its reason is
in the store), are not."""

from prefect import task
from sqlalchemy.exc import OperationalError

RETRIES = 2
RETRY_DELAY_S = 5


def _transient(task, task_run, state) -> bool:
    return isinstance(state.result(raise_on_failure=False), OperationalError)


def store_task(function=None, **options):
    """``prefect.task`` with the shared retry policy, used bare (``@store_task``) or with
    more task options (``@store_task(tags=["dft"])``)."""
    decorate = task(retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S, retry_condition_fn=_transient, **options)
    return decorate if function is None else decorate(function)
