"""SQL conditions a user gives (``dft run --where``, ``predict --where``, a campaign's
``candidates.where``) run read-only as one statement, and bad SQL is an error naming
where the condition came from."""

import json

import pytest
from ase.build import bulk
from sqlalchemy import func, select

from tests.conftest import perovskite_rows, write_csv
from tests.dft_helpers import campaign_document, store_crystals
from workbench.campaign.config import config_from_document
from workbench.campaign.loop import candidate_ids
from workbench.errors import InputError, ReadOnlyViolation
from workbench.store.engine import session_scope
from workbench.store.queries import structures_where
from workbench.store.schema import Prediction, Structure

WRITES = ["1=1; DELETE FROM structures", "id IN (SELECT id FROM structures) OR 1=1; DROP TABLE structures"]


@pytest.fixture
def crystals(engine) -> dict[str, int]:
    return store_crystals(engine, {"Cu": bulk("Cu", a=3.6), "Au": bulk("Au", a=4.1), "Ni": bulk("Ni", a=3.5)})


def count_structures(engine) -> int:
    with session_scope(engine) as session:
        return session.scalar(select(func.count()).select_from(Structure))


def test_a_condition_selects_read_only_and_names_its_option(engine, crystals):
    assert structures_where(engine, "formula = 'Au1' -- gold", option="--where") == [crystals["Au"]]
    assert structures_where(engine, "formula <> 'Au1'", option="--where") == sorted(
        [crystals["Cu"], crystals["Ni"]])
    for condition in WRITES:
        with pytest.raises(ReadOnlyViolation, match="^--where .*Refused: expected exactly one SQL statement"):
            structures_where(engine, condition, option="--where")
    with pytest.raises(InputError, match=r"^--where 'formula = = 1': SQL error: .*syntax"):
        structures_where(engine, "formula = = 1", option="--where")
    with pytest.raises(InputError, match="^--where 'no_such_column > 1': SQL error"):
        structures_where(engine, "no_such_column > 1", option="--where")
    assert count_structures(engine) == 3


def test_campaign_candidates_where_is_read_only(engine, crystals):
    chosen = config_from_document(campaign_document("gold", 4, candidates={"source": "test", "where": "formula = 'Au1'"}))
    assert candidate_ids(engine, chosen) == [crystals["Au"]]
    writing = config_from_document(campaign_document("bad", 4, candidates={"where": WRITES[0]}))
    with pytest.raises(ReadOnlyViolation, match="campaign 'bad': candidates.where"):
        candidate_ids(engine, writing)
    broken = config_from_document(campaign_document("broken", 4, candidates={"where": "formula = = 1"}))
    with pytest.raises(InputError, match="campaign 'broken': candidates.where 'formula = = 1': SQL error"):
        candidate_ids(engine, broken)
    assert count_structures(engine) == 3


def test_sql_json_writes_numeric_results(run_cli, crystals):
    """PostgreSQL's ``avg`` of an integer column is ``numeric`` (a Decimal in Python): a
    number in JSON, as SQLite's float is."""
    query = "SELECT avg(nsites) / 4 AS quarter, count(*) AS n FROM structures"
    assert json.loads(run_cli("sql", query, "--format", "json").stdout) == [{"quarter": 0.25, "n": 3}]


def test_dft_run_where_errors_are_messages(run_cli, engine, crystals):
    for condition in (WRITES[0], "formula ="):
        result = run_cli("dft", "run", "--preset", "emt", "--where", condition, expect=1)
        assert f"--where {condition!r}: " in result.output and "Traceback" not in result.output
    assert count_structures(engine) == 3


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_predict_where_is_read_only(run_cli, engine, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    write_csv(tmp_path / "perov.csv", perovskite_rows(20), ["material_id", "cif", "dir_gap"])
    run_cli("import", tmp_path / "perov.csv", "--jobs", "1")
    run_cli("train", "--target", "dir_gap", "--name", "gap", "--members", "1", "--epochs", "1",
            "--device", "cpu", "--jobs", "1")
    refused = run_cli("predict", "--model", "gap@champion", "--where", WRITES[0], "--jobs", "1", expect=1)
    assert "--where" in refused.output and "Refused" in refused.output
    broken = run_cli("predict", "--model", "gap@champion", "--where", "id <", "--jobs", "1", expect=1)
    assert "--where 'id <': SQL error" in broken.output and "Traceback" not in broken.output
    with session_scope(engine) as session:
        first = sorted(session.scalars(select(Structure.id)))[:5]
    written = run_cli("predict", "--model", "gap@champion", "--where", f"id <= {first[-1]}", "--jobs", "1")
    assert "Wrote 5 predictions" in written.output
    with session_scope(engine) as session:
        assert sorted(session.scalars(select(Prediction.structure_id))) == first
    assert count_structures(engine) == 20
