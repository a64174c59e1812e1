"""Read-only questions users ask of the store: counts, arbitrary SQL, and the SQL
conditions that choose structures (``predict --where``, ``dft run --where``, a campaign's
``candidates.where``)."""

from dataclasses import dataclass

import sqlparse
from sqlalchemy import Engine, func, select, text
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


def store_status(engine: Engine) -> StoreStatus:
    # The ORM tables here only: `workbench sql` and the --where conditions start without them.
    from workbench.store.schema import (
        Calculation,
        ModelVersion,
        Prediction,
        Structure,
        StructureSource,
        TargetDefinition,
        TargetValue,
    )

    with read_only_connection(engine) as connection:
        def count(table) -> int:
            return connection.execute(select(func.count()).select_from(table)).scalar_one()

        sources = connection.execute(
            select(StructureSource.source, func.count()).group_by(StructureSource.source)
            .order_by(StructureSource.source)
        )
        targets = connection.execute(
            select(TargetDefinition.name, func.count(TargetValue.id))
            .outerjoin(TargetValue, TargetValue.target_id == TargetDefinition.id)
            .group_by(TargetDefinition.name).order_by(TargetDefinition.name)
        )
        calculations = connection.execute(
            select(Calculation.status, func.count()).group_by(Calculation.status)
        )
        return StoreStatus(
            structures=count(Structure),
            sources=dict(sources.all()),
            targets=dict(targets.all()),
            calculations={str(status): n for status, n in calculations},
            models=count(ModelVersion),
            predictions=count(Prediction),
        )
