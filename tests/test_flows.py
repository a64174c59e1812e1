"""Prefect flows run the package functions, against a real (test-harness) Prefect API."""

import pytest
from prefect.testing.utilities import prefect_test_harness
from sqlalchemy import func, select

from flows.import_structures import import_structures
from tests.conftest import perovskite_rows, write_csv
from workbench.store.engine import session_scope
from workbench.store.schema import Structure, TargetValue


@pytest.fixture(scope="session")
def prefect_api():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
def test_import_flow(prefect_api, engine, database_url, shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATABASE_URL", database_url)
    write_csv(tmp_path / "batch.csv", perovskite_rows(shared_data, 30), ["material_id", "cif", "dir_gap"])
    summaries = import_structures([str(tmp_path / "batch.csv"), str(shared_data / "jarvis_dos50")],
                                  source="flow", targets={"dir_gap": "dir_gap"})
    assert summaries[0]["new_structures"] == 30 and len(summaries) == 1 + 50 + 1  # csv, POSCARs, id_prop
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Structure)) == 80
        assert session.scalar(select(func.count()).select_from(TargetValue)) == 30
