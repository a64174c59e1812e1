"""Prefect flows run the package functions, against a real (test-harness) Prefect API."""

import os
import subprocess
import sys

import pytest
from prefect import flow
from prefect.testing.utilities import prefect_test_harness
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from flows.import_structures import import_structures
from flows.tasks import store_task
from tests.conftest import JARVIS_DOS, REPO, perovskite_rows, write_csv
from tests.dft_helpers import campaign_document
from workbench.store.engine import session_scope
from workbench.store.schema import Structure, TargetValue


@pytest.fixture(scope="session")
def prefect_api():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
def test_flows_run_as_modules_from_anywhere(tmp_path):
    """`flows` is a package of the install: no sys.path edit, whatever the directory."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-m", "flows.campaign"], cwd=tmp_path, env=environment,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "usage: python -m flows.campaign CONFIG.yaml" in result.stderr
    for source in (REPO / "flows").glob("*.py"):
        assert "sys.path" not in source.read_text(), source


@pytest.mark.slow
def test_store_task_retries_a_dropped_connection_and_nothing_else(prefect_api):
    calls = []

    @store_task
    def flaky(error: type[Exception]) -> int:
        calls.append(error)
        if len(calls) == 1:
            raise error("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
        return len(calls)

    @flow
    def run(error: type[Exception]) -> int:
        return flaky.with_options(retry_delay_seconds=0)(error)

    assert run(OperationalError) == 2
    calls.clear()
    with pytest.raises(IntegrityError):
        run(IntegrityError)
    assert len(calls) == 1


@pytest.mark.slow
def test_store_tasks_run_again_on_the_same_arguments_when_results_are_persisted(prefect_api, tmp_path):
    """A store task answers from the store, which changes under the same arguments (the
    campaign flow's second ``next_round_task(name)``): with results persisted by default,
    it is still run every time, not answered from a cache keyed on its inputs."""
    from prefect.settings import (
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_RESULTS_PERSIST_BY_DEFAULT,
        temporary_settings,
    )

    calls = []

    @store_task
    def next_round(campaign: str) -> int:
        calls.append(campaign)
        return len(calls)

    @flow
    def rounds(campaign: str) -> list[int]:
        return [next_round(campaign), next_round(campaign)]

    with temporary_settings({PREFECT_RESULTS_PERSIST_BY_DEFAULT: True,
                             PREFECT_LOCAL_STORAGE_PATH: tmp_path / "results"}):
        assert rounds("alloys") == [1, 2]


@pytest.mark.slow
def test_step_flow_walks_a_random_round(prefect_api, engine, alloys, database_url, mlflow_uri, tmp_path,
                                        monkeypatch):
    """The flow `step` runs the table's next step; a random round passes retrain and
    predict without a model."""
    from flows.campaign import step
    from workbench.campaign.config import config_from_document
    from workbench.campaign.loop import open_campaign
    from workbench.store.schema import Acquisition, Round, RoundKind

    for name, value in {"WORKBENCH_DATABASE_URL": database_url, "MLFLOW_TRACKING_URI": mlflow_uri,
                        "WORKBENCH_HOME": str(tmp_path / "home")}.items():
        monkeypatch.setenv(name, value)
    open_campaign(engine, config_from_document(campaign_document("stepped", 12)))
    walked = [step("stepped") for _ in range(5)]
    assert [(r["number"], r["kind"], r["status"]) for r in walked] == [
        (0, RoundKind.RANDOM, status) for status in ("trained", "predicted", "ranked", "relaxed", "dispatched")]
    with session_scope(engine) as session:
        assert session.scalar(select(Round.models)) is None
        assert session.scalar(select(func.count(Acquisition.calculation_id))) == 10


@pytest.mark.slow
def test_import_flow(prefect_api, engine, database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATABASE_URL", database_url)
    write_csv(tmp_path / "batch.csv", perovskite_rows(30), ["material_id", "cif", "dir_gap"])
    summaries = import_structures([str(tmp_path / "batch.csv"), str(JARVIS_DOS)],
                                  source="flow", targets={"dir_gap": "dir_gap"})
    assert summaries[0]["new_structures"] == 30 and len(summaries) == 1 + 20 + 1  # csv, POSCARs, id_prop
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Structure)) == 50
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
def test_run_dft_flow_computes_a_batched_preset_in_batches(prefect_api, engine, database_url, tmp_path,
                                                          monkeypatch):
    from flows.run_dft import run_dft
    from tests.dft_helpers import calculation_of, l12, store_crystals

    monkeypatch.setenv("WORKBENCH_DATABASE_URL", database_url)
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    preset = tmp_path / "emt-batch.yaml"
    preset.write_text("name: emt-batch\ncalculator: emt\nkpoint_density: null\nspin: off\ndos: false\n"
                      "properties: [energy]\nbatch_size: 3\n")
    ids = store_crystals(engine, {"Cu3Au": l12("Cu", "Au"), "Ni3Al": l12("Ni", "Al")})
    outcome = run_dft(list(ids.values()), preset=str(preset), jobs=2)
    assert len(outcome["done"]) == 6  # the references Cu, Au, Ni and Al, then the two alloys
    batches = {calculation_of(engine, structure_id, "emt-batch")[1][0].parameters.get("batch")
               for structure_id in ids.values()}
    assert None not in batches  # computed by a batch worker, not one process each


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_campaign_on_a_two_worker_local_dask_cluster(prefect_api, engine, alloys, database_url, mlflow_uri,
                                                     tmp_path, monkeypatch):
    import yaml

    from flows.campaign import campaign
    from workbench.store.schema import Acquisition, AcquisitionStatus, Calculation, Round, RoundKind

    for name, value in {"WORKBENCH_DATABASE_URL": database_url, "MLFLOW_TRACKING_URI": mlflow_uri,
                        "WORKBENCH_HOME": str(tmp_path / "home"), "WORKBENCH_DASK_WORKERS": "2"}.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "campaign.yaml"
    config.write_text(yaml.safe_dump(campaign_document("dask", 14)))  # 10 random, then one round of 4
    assert campaign(str(config)) == {"campaign": "dask", "rounds": 2}
    with session_scope(engine) as session:
        assert set(session.scalars(select(Acquisition.status))) == {AcquisitionStatus.LABELED}
        assert list(session.scalars(select(Round.kind).order_by(Round.number))) == [RoundKind.RANDOM, RoundKind.MODEL]
        workers = set(session.scalars(select(Calculation.pid)))
    # The calculations ran in the Dask worker processes (a local cluster of two per
    # run-dft flow run), none in this one.
    assert len(workers) >= 2 and os.getpid() not in workers
