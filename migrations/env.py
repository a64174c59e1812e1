"""Alembic environment for the workbench store.

The database URL comes from, in order: a connection handed over by
``workbench.store.migrate`` (``config.attributes["connection"]``), ``-x url=...`` on the
alembic command line, or the workbench settings (``WORKBENCH_DATABASE_URL``).
"""

from alembic import context

from workbench.store.engine import open_engine
from workbench.store.migrate import VERSION_TABLE
from workbench.store.schema import Base

config = context.config


def _run(connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch mode rebuilds a table by DROP + CREATE; with foreign keys on, the DROP
        # would cascade-delete the rows that point at it (attempts of a calculation).
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        render_as_batch=sqlite,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    if sqlite:
        broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(f"migration left rows with dangling foreign keys: {broken[:5]}")
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    if url:
        return url
    from workbench.settings import Settings

    return Settings().database_url


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    with open_engine(_url()) as engine, engine.begin() as new_connection:
        _run(new_connection)
