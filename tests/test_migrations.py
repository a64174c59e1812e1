"""The schema: migrations up, down and up again, no drift, the views exist."""

import pytest
from sqlalchemy import column, inspect, select, table, text
from sqlalchemy.exc import IntegrityError

from workbench.store import migrate
from workbench.store.engine import make_engine
from workbench.store.schema import Base
from workbench.store.types import JsonDocument

USER_TABLES = {
    "structures", "structure_sources", "target_definitions", "target_values", "calculations",
    "calculation_attempts", "featurizers", "graphs", "model_versions", "predictions",
    "campaigns", "rounds", "acquisitions", "structure_lineage",
}


def test_up_down_up_without_drift(empty_database_url):
    engine = make_engine(empty_database_url)
    try:
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        migrate.check(engine)  # raises on any difference between models and schema
        migrate.downgrade(engine, "base")
        assert migrate.current_revision(engine) is None
        assert set(inspect(engine).get_table_names()) == {migrate.VERSION_TABLE}
        migrate.upgrade(engine)
        migrate.upgrade(engine)  # idempotent
        migrate.check(engine)
        inspector = inspect(engine)
        assert USER_TABLES <= set(inspector.get_table_names())
        assert {"latest_predictions", "candidates"} <= set(inspector.get_view_names())
        assert "alembic_version" not in inspector.get_table_names()
    finally:
        engine.dispose()


def test_the_revision_commands_expect_is_the_head():
    """Commands check a store against ``SCHEMA_REVISION`` without Alembic: a new migration
    must move it too."""
    assert migrate.SCHEMA_REVISION == migrate.head_revision()


def test_models_cover_every_table(engine):
    assert set(Base.metadata.tables) == USER_TABLES
    with engine.connect() as connection:
        for view in ("latest_predictions", "candidates"):
            assert connection.execute(text(f"SELECT count(*) FROM {view}")).scalar_one() == 0


def test_alembic_command_line_checks_clean(empty_database_url, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    alembic = Path(sys.executable).parent / "alembic"
    for args in (["upgrade", "head"], ["check"]):
        result = subprocess.run(
            [str(alembic), "-c", str(repo / "alembic.ini"), "-x", f"url={empty_database_url}", *args],
            cwd=tmp_path, capture_output=True, text=True, check=False,
        )
        assert result.returncode == 0, result.stderr


def test_upgrade_keeps_rows_of_rebuilt_tables(empty_database_url):
    """SQLite rebuilds `calculations` in 0002; the attempts pointing at it must survive."""
    engine = make_engine(empty_database_url)
    try:
        migrate.upgrade(engine, "0001")
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO structures (id, formula, reduced_formula, chemical_system, composition,"
                " elements, nsites, nelements, lattice, species, frac_coords, volume, density,"
                " spacegroup_number, spacegroup_symbol, dedup_key, fingerprint)"
                " VALUES (1, 'Si2', 'Si', 'Si', '{}', '[]', 2, 1, '[]', '[]', :blob, 40.0, 2.3,"
                " 227, 'Fd-3m', 'k', :blob)"), {"blob": b"x"})
            connection.execute(text(
                "INSERT INTO calculations (id, structure_id, preset, parameters, status)"
                " VALUES (7, 1, 'emt', '{}', 'failed')"))
            connection.execute(text(
                "INSERT INTO calculation_attempts (calculation_id, number, parameters, status, reason)"
                " VALUES (7, 1, '{}', 'failed', 'crash')"))
        migrate.upgrade(engine)
        migrate.check(engine)
        with engine.connect() as connection:
            reasons = connection.execute(text("SELECT reason FROM calculation_attempts")).scalars().all()
        assert reasons == ["crash"]
    finally:
        engine.dispose()


def test_round_kind_is_backfilled_from_the_summary_and_back(empty_database_url):
    """0004 moves a round's ``{"random": true}`` out of its summary into ``rounds.kind``
    (random or model, CHECKed), and puts it back on the way down."""
    engine = make_engine(empty_database_url)
    rounds = table("rounds", column("number"), column("kind"), column("summary", JsonDocument))
    try:
        migrate.upgrade(engine, "0003")
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO campaigns (id, name, config, status) VALUES (1, 'c', '{}', 'active')"))
            connection.execute(text(
                "INSERT INTO rounds (campaign_id, number, status, summary) VALUES"
                " (1, 0, 'done', :random), (1, 1, 'done', :guided), (1, 2, 'started', NULL)"),
                {"random": '{"random": true, "hits": 2}', "guided": '{"hits": 1}'})
        migrate.upgrade(engine)
        migrate.check(engine)
        with engine.connect() as connection:
            assert [tuple(row) for row in connection.execute(select(rounds).order_by("number"))] == [
                (0, "random", {"hits": 2}), (1, "model", {"hits": 1}), (2, "model", None)]
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(text("UPDATE rounds SET kind = 'guess' WHERE number = 2"))
        migrate.downgrade(engine, "0003")
        with engine.connect() as connection:
            summaries = connection.execute(select(rounds.c.summary).order_by("number")).scalars().all()
        assert summaries == [{"hits": 2, "random": True}, {"hits": 1}, None]
    finally:
        engine.dispose()
