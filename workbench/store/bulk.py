"""Bulk writes and look-ups that stay fast on both backends.

psycopg converts every long statement it has not seen before in Python: a 1,000-row
``INSERT ... VALUES ... RETURNING`` or an ``IN`` list of 3,000 parameters costs more
there than the database's own work. On PostgreSQL, new rows therefore take their ids from
the table's sequence and go in as one short, pipelined statement, and look-ups pass one
array parameter (``= ANY``). SQLite, in process, is fastest with ``RETURNING`` and ``IN``.
Measured in benchmarks/store.md.
"""

import hashlib
from collections.abc import Collection

from sqlalchemy import ARRAY, ColumnElement, Table, any_, bindparam, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_returning_ids(session: Session, table: Table, rows: list[dict]) -> list[int]:
    """Insert ``rows`` and return their new primary keys, in the order of ``rows``."""
    if not rows:
        return []
    (key,) = table.primary_key.columns
    if session.get_bind().dialect.name == "postgresql":
        sequence = func.pg_get_serial_sequence(table.name, key.name)
        ids = list(session.scalars(select(func.nextval(sequence)).select_from(
            func.generate_series(1, len(rows)))))
        session.execute(insert(table), [dict(row, **{key.name: id_}) for row, id_ in zip(rows, ids, strict=True)])
        return ids
    return list(session.scalars(insert(table).returning(key, sort_by_parameter_order=True), rows))


def one_of(session: Session, column: ColumnElement, values: Collection) -> ColumnElement[bool]:
    """``column IN values``, as one array parameter on PostgreSQL."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(list(values))


def insert_ignoring_duplicates(session: Session, table: Table, rows: list[dict]) -> None:
    """Insert ``rows``, skipping any that a unique constraint says are there already
    (``ON CONFLICT DO NOTHING``): safe beside a concurrent writer of the same rows."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    session.execute(module.insert(table).on_conflict_do_nothing(), rows)


def one_writer_at_a_time(session: Session, name: str) -> None:
    """From here to the end of the transaction, no other transaction that called this with
    the same ``name`` runs; the next one reads what this one committed.

    For writes decided by what was read, where a unique constraint would only turn the
    race into an error: the importer's dedup (crystals are matched by StructureMatcher, not
    by a key), formation energies. PostgreSQL: a transaction advisory lock on a hash of
    ``name``. SQLite has one writer at a time anyway, but pysqlite starts the transaction
    at the first write, after the reads: take the write lock now.
    """
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        connection.execute(select(func.pg_advisory_xact_lock(key)))
    elif not connection.connection.dbapi_connection.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
