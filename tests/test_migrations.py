"""The schema: migrations up, down and up again, no drift, the views exist."""

from sqlalchemy import inspect, text

from workbench.store import migrate
from workbench.store.engine import make_engine
from workbench.store.schema import Base

USER_TABLES = {
    "structures", "structure_sources", "target_definitions", "target_values", "calculations",
    "calculation_attempts", "featurizers", "graphs", "model_versions", "predictions",
    "campaigns", "rounds", "acquisitions",
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
