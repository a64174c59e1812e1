"""Read-only questions users ask of the store: counts, arbitrary SQL, and the SQL
conditions that choose structures (``predict --where``, ``dft run --where``, a campaign's
``candidates.where``)."""

from dataclasses import dataclass

import sqlparse
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from workbench.errors import InputError, ReadOnlyViolation
from workbench.store.engine import read_only_connection

# How SQLite and PostgreSQL word a refused write in a read-only transaction.
_READ_ONLY_MESSAGES = ("readonly database", "read-only transaction", "too many attached")


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple]


def run_read_only(engine: Engine, sql: str) -> QueryResult:
    """Run one SQL statement in a read-only transaction. A write, or more than one
    statement, raises ReadOnlyViolation; any other error of the database (syntax, unknown
    column) raises InputError with the database's message."""
    # One statement only: a second one could end the read-only transaction and write.
    statements = [statement for statement in sqlparse.split(sql) if statement.strip(" ;\n\t")]
    if len(statements) != 1:
        raise ReadOnlyViolation(f"Refused: expected exactly one SQL statement, got {len(statements)}")
    with read_only_connection(engine) as connection:
        try:
            result = connection.execute(text(sql))
        except DBAPIError as error:
            reason = str(error.orig).strip().partition("\n")[0]
            if any(message in reason.lower() for message in _READ_ONLY_MESSAGES):
                raise ReadOnlyViolation(
                    f"Refused: the store is opened read-only here: this statement would write ({reason})"
                ) from None
            raise InputError(f"SQL error: {reason}") from None
        if not result.returns_rows:
            return QueryResult([], [])
        return QueryResult(list(result.keys()), [tuple(row) for row in result])


def structures_where(engine: Engine, condition: str, *, option: str) -> list[int]:
    """Ids, ascending, of the structures matching a user's SQL ``condition`` on the
    ``structures`` table, run like ``workbench sql``: read-only, one statement. ``option``
    names where the condition came from (``--where``, ``candidates.where``) in the error
    that a write, a second statement or invalid SQL raises."""
    # Nothing follows the condition (sorted here, not by SQL), so a trailing comment in it
    # is harmless and a second statement after it is seen as one.
    try:
        result = run_read_only(engine, f"SELECT id FROM structures WHERE {condition}")
    except InputError as error:  # ReadOnlyViolation included, and kept as such
        raise type(error)(f"{option} {condition!r}: {error.message}") from None
    return sorted(row[0] for row in result.rows)


@dataclass(frozen=True)
class StoreStatus:
    structures: int
    sources: dict[str, int]
    targets: dict[str, int]
    calculations: dict[str, int]
    models: int
    predictions: int


# Plain SQL over the tables, as a user would write it: `workbench status` then starts
# without the ORM classes (and NumPy, which their array columns need), a fifth of its time.
_STATUS_QUERIES = {
    "structures": "SELECT count(*) FROM structures",
    "sources": "SELECT source, count(*) FROM structure_sources GROUP BY source ORDER BY source",
    "targets": ("SELECT d.name, count(v.id) FROM target_definitions AS d "
                "LEFT JOIN target_values AS v ON v.target_id = d.id GROUP BY d.name ORDER BY d.name"),
    "calculations": "SELECT status, count(*) FROM calculations GROUP BY status ORDER BY status",
    "models": "SELECT count(*) FROM model_versions",
    "predictions": "SELECT count(*) FROM predictions",
}


def store_status(engine: Engine) -> StoreStatus:
    with read_only_connection(engine) as connection:
        rows = {name: connection.execute(text(sql)).all() for name, sql in _STATUS_QUERIES.items()}
    return StoreStatus(structures=rows["structures"][0][0], sources=dict(rows["sources"]),
                       targets=dict(rows["targets"]), calculations=dict(rows["calculations"]),
                       models=rows["models"][0][0], predictions=rows["predictions"][0][0])
