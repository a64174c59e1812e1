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


@pytest.mark.slow
def test_run_dft_flow(prefect_api, engine, database_url, tmp_path, monkeypatch):
    from ase.build import bulk

    from flows.run_dft import run_dft
    from tests.dft_helpers import calculation_of, cu3au, store_crystals, targets_of
    from workbench.store.schema import CalculationStatus

    monkeypatch.setenv("WORKBENCH_DATABASE_URL", database_url)
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    ids = store_crystals(engine, {"Cu3Au": cu3au(), "Si": bulk("Si")})
    outcome = run_dft([ids["Cu3Au"], ids["Si"]], preset="emt")
    # References Cu and Au run first, then the two structures; EMT knows no Si.
    assert len(outcome["done"]) == 3 and len(outcome["failed"]) == 1
    assert "emt.formation_energy_per_atom" in targets_of(engine, ids["Cu3Au"])
    assert calculation_of(engine, ids["Si"], "emt")[0].status is CalculationStatus.FAILED
    again = run_dft([ids["Cu3Au"]], preset="emt")
    assert again == {"done": [], "failed": [], "skipped": []}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_campaign_on_a_two_worker_local_dask_cluster(prefect_api, engine, alloys, database_url, mlflow_uri,
                                                     tmp_path, monkeypatch):
    import os

    import yaml

    from flows.campaign import campaign
    from tests.dft_helpers import campaign_document
    from workbench.store.schema import Acquisition, AcquisitionStatus, Calculation

    for name, value in {"WORKBENCH_DATABASE_URL": database_url, "MLFLOW_TRACKING_URI": mlflow_uri,
                        "WORKBENCH_HOME": str(tmp_path / "home"), "WORKBENCH_DASK_WORKERS": "2"}.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "campaign.yaml"
    config.write_text(yaml.safe_dump(campaign_document("dask", 14)))  # 10 random, then one round of 4
    assert campaign(str(config)) == {"campaign": "dask", "rounds": 2}
    with session_scope(engine) as session:
        assert set(session.scalars(select(Acquisition.status))) == {AcquisitionStatus.LABELED}
        workers = set(session.scalars(select(Calculation.pid)))
    # The calculations ran in the Dask worker processes (a local cluster of two per
    # run-dft flow run), none in this one.
    assert len(workers) >= 2 and os.getpid() not in workers
