"""Engines and transactions for SQLite and PostgreSQL."""

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import URL, Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from workbench.errors import InputError

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _configure_sqlite(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # Foreign keys are off by default in SQLite; WAL lets readers run beside a writer.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def make_engine(database_url: str) -> Engine:
    """Create an engine; for a SQLite file, its folder is created and pragmas are set."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url)
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    return create_engine(url, pool_pre_ping=True, connect_args=_server_connect_args(url))


def _server_connect_args(url: URL) -> dict:
    # No server-side prepared statements: after five runs psycopg would prepare the
    # importer's large IN (...) lookups, and PostgreSQL's generic plan for them is slow.
    return {"prepare_threshold": None} if url.get_driver_name() == "psycopg" else {}


def read_only_engine(database_url: str | URL) -> Engine:
    """An engine on the store through which the database refuses writes: a SQLite file
    opened ``mode=ro`` with ATTACH disabled, or PostgreSQL sessions whose transactions are
    read-only. Its URL stays the store's, so that code opening its own read-only
    connection from it (:func:`read_only_connection`) finds the same file."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise InputError("a read-only engine needs a SQLite file, not an in-memory database",
                             field="database_url")
        # As a URI: a path is escaped there, else a `#` or `?` in a folder's name would
        # end it and drop `mode=ro` (SQLite would open, or create, another file read-write).
        uri = f"{Path(url.database).resolve().as_uri()}?mode=ro"
        engine = create_engine(url, creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False))
        event.listen(engine, "connect", _configure_read_only_sqlite)
        return engine
    connect_args = {"options": "-c default_transaction_read_only=on", **_server_connect_args(url)}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _configure_read_only_sqlite(dbapi_connection, _record) -> None:
    # ATTACH could open another file read-write through this connection.
    dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    dbapi_connection.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")


@contextmanager
def open_engine(database_url: str) -> Iterator[Engine]:
    """An engine for the length of a ``with`` block, its connections closed after it (what a
    task or a command that runs once needs; a long-lived process keeps one engine)."""
    engine = make_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One unit of work: commit on success, roll back everything on any error."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


@contextmanager
def read_only_connection(engine: Engine) -> Iterator[Connection]:
    """A connection the database itself refuses to write through.

    SQLite: the file is opened with ``mode=ro`` and ATTACH is disabled. PostgreSQL: the
    transaction is ``READ ONLY`` and is rolled back at the end.
    """
    if engine.dialect.name == "sqlite":
        read_only = read_only_engine(engine.url)
        try:
            with read_only.connect() as connection:
                yield connection
        finally:
            read_only.dispose()
        return
    with engine.connect() as connection:
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")
        try:
            yield connection
        finally:
            connection.rollback()

