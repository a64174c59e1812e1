"""Prefect flows run the package functions, against a real (test-harness) Prefect API."""

import csv
import sys

import pytest
from prefect.testing.utilities import prefect_test_harness
from sqlalchemy import func, select

from flows.import_structures import import_structures
from workbench.store.engine import session_scope
from workbench.store.schema import Structure, TargetValue

csv.field_size_limit(sys.maxsize)


@pytest.fixture(scope="session")
def prefect_api():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
def test_import_flow(prefect_api, engine, database_url, shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATABASE_URL", database_url)
    with (shared_data / "perov5" / "labeled_val.csv").open() as handle:
        rows = [row for _, row in zip(range(30), csv.DictReader(handle), strict=False)]
    with (tmp_path / "batch.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["material_id", "cif", "dir_gap"])
        writer.writeheader()
        writer.writerows({key: row[key] for key in writer.fieldnames} for row in rows)
    summaries = import_structures([str(tmp_path / "batch.csv"), str(shared_data / "jarvis_dos50")],
                                  source="flow", targets={"dir_gap": "dir_gap"})
    assert summaries[0]["new_structures"] == 30 and len(summaries) == 1 + 50 + 1  # csv, POSCARs, id_prop
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Structure)) == 80
        assert session.scalar(select(func.count()).select_from(TargetValue)) == 30
