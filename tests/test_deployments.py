"""Deployments through a real local Prefect server and process worker, as a user runs
them: `prefect deploy --all`, `prefect worker start`, `prefect deployment run
'campaign/local' -p config=...` — an EMT campaign recorded in the store.

Twice: the embedded default (Prefect's SQLite, an MLflow SQLite store, the store on
SQLite), and the services of docker/compose.yaml started directly on this machine (the
Prefect server and an MLflow server on their own PostgreSQL databases, the store on
PostgreSQL)."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select, text

from tests.conftest import REPO, create_postgres_database, drop_postgres_database, postgres_url
from tests.dft_helpers import campaign_document
from workbench.store.engine import make_engine, session_scope
from workbench.store.schema import Acquisition, AcquisitionStatus, Campaign

BIN = Path(sys.executable).parent
SERVER_START_S = 120
STOP_GRACE_S = 30


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"{server.args[0]} exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{server.args[0]} did not answer in time:\n{log.read_text()[-3000:]}")


def _start(command: list[str], environment: dict, health_url: str, log: Path) -> subprocess.Popen:
    with log.open("w") as output:
        process = subprocess.Popen(command, env=environment, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    _wait_healthy(health_url, process, log)
    return process


def _stop(processes: list[subprocess.Popen]) -> None:
    """Terminate, then kill the session of any process that has not exited after a grace
    period: on a loaded machine a Prefect worker can take longer than that to shut down."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def services(backend, tmp_path, mlflow_uri, request):
    """A Prefect server and an MLflow store for the backend under test: on PostgreSQL,
    both as servers on databases of their own, as docker/compose.yaml runs them."""
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    environment = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_API_URL=api,
                       PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_WORKER_QUERY_SECONDS="2",
                       MLFLOW_TRACKING_URI=mlflow_uri)
    databases, processes = [], []
    if backend == "postgresql":
        admin = request.getfixturevalue("postgres_admin")
        databases = [create_postgres_database(admin) for _ in ("prefect", "mlflow")]
        with make_engine(postgres_url(databases[0])).begin() as connection:
            connection.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
        environment["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = postgres_url(databases[0]).replace(
            "postgresql://", "postgresql+asyncpg://")
        mlflow_port = _free_port()
        processes.append(_start(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
             "--backend-store-uri", postgres_url(databases[1]).replace("postgresql://", "postgresql+psycopg://"),
             "--artifacts-destination", (tmp_path / "artifacts").as_uri(), "--serve-artifacts"],
            environment, f"http://127.0.0.1:{mlflow_port}", tmp_path / "mlflow.log"))
        environment["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{mlflow_port}"
    try:
        processes.append(_start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                environment, api, tmp_path / "prefect.log"))
        yield environment
    finally:
        _stop(processes)
        for name in databases:
            drop_postgres_database(request.getfixturevalue("postgres_admin"), name)


def _prefect(environment: dict, *args: str, timeout: float = 120) -> str:
    result = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], env=environment, cwd=REPO, check=False,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_every_deployment_entrypoint_is_an_installed_flow():
    """Entrypoints are module paths of the installed package `flows`, not files."""
    from prefect.flows import Flow, load_flow_from_entrypoint

    deployments = yaml.safe_load((REPO / "flows" / "prefect.yaml").read_text())["deployments"]
    names = set()
    for deployment in deployments:
        module, _ = deployment["entrypoint"].split(":")
        assert module.startswith("flows.") and not module.endswith(".py")
        loaded = load_flow_from_entrypoint(deployment["entrypoint"], use_placeholder_flow=False)
        assert isinstance(loaded, Flow)
        names.add(loaded.name)
    assert names == {"campaign", "step", "run-dft", "import"}


@pytest.mark.slow
def test_campaign_deployment_runs_through_server_and_worker(services, engine, alloys, database_url, tmp_path):
    environment = dict(services, WORKBENCH_DATABASE_URL=database_url, WORKBENCH_HOME=str(tmp_path / "home"),
                       OMP_NUM_THREADS="1")
    config = tmp_path / "campaign.yaml"
    config.write_text(yaml.safe_dump(campaign_document("deployed", 14)))
    _prefect(environment, "work-pool", "create", "local", "--type", "process")
    deployed = _prefect(environment, "deploy", "--all", "--prefect-file", "flows/prefect.yaml")
    assert "campaign/local" in deployed
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "local"], env=environment,
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        output = _prefect(environment, "deployment", "run", "campaign/local", "-p", f"config={config}",
                          "--watch", "--watch-timeout", "600", timeout=660)
    finally:
        _stop([worker])
    assert "Completed" in output
    with session_scope(engine) as session:
        assert session.scalar(select(Campaign.status).where(Campaign.name == "deployed")) == "finished"
        statuses = session.scalars(select(Acquisition.status)).all()
    assert len(statuses) == 14 and set(statuses) == {AcquisitionStatus.LABELED}
