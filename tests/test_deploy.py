"""The container set-up, checked without Docker: docker/compose.yaml, its env file, the
Dockerfile, the PostgreSQL init script on a server of its own, the read-only role of
`workbench sql`, and that nothing in the package unpickles what it loads.

What runs in the containers is checked against this repository's virtual environment:
the image installs the same pinned packages, so an executable, subcommand or option
that this environment lacks would fail there too.
"""

import ast
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from workbench.cli import app
from workbench.io.importer import import_file
from workbench.io.readers import ReadOptions
from workbench.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
BIN = Path(sys.executable).parent
# The commands the workbench image provides (console scripts of this environment).
IMAGE_COMMANDS = {"workbench", "prefect", "mlflow"}
# ${NAME}, ${NAME:-default}, ${NAME:?message}, ...
VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<modifier>:?[-?+])?[^}]*\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN", re.IGNORECASE)
URL_PASSWORD = re.compile(r"://[^/:@\s]+:(?P<password>\$\{[^}]*\}|[^@\s]+)@")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    values = {}
    for number, line in enumerate((DOCKER / ".env.example").read_text().splitlines(), start=1):
        if line.strip() and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"docker/.env.example line {number}: expected NAME=VALUE, got {line!r}"
            values[name] = value
    return values


def _dockerfile_entrypoint() -> list[str]:
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        if line.startswith("ENTRYPOINT "):
            return json.loads(line.removeprefix("ENTRYPOINT "))
    raise AssertionError("docker/Dockerfile has no ENTRYPOINT")


def _argv(service: dict) -> list[str]:
    """What the container runs: its entrypoint, or the image's entrypoint and its command."""
    def words(value) -> list[str]:
        return shlex.split(value) if isinstance(value, str) else list(value or [])

    if "entrypoint" in service:
        return words(service["entrypoint"]) + words(service.get("command"))
    if "build" in service:
        return _dockerfile_entrypoint() + words(service.get("command"))
    # An official image keeps its own entrypoint, which runs the command.
    return words(service.get("command"))


def _strings(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif node is not None:
        yield str(node)


def test_compose_has_the_services(compose):
    services = compose["services"]
    assert {"postgres", "prefect-server", "mlflow", "init", "worker-cpu", "worker-gpu"} <= set(services)
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    # Any other profile would hide a service from a plain `docker compose up`.
    assert [name for name, service in services.items() if "profiles" in service] == ["worker-gpu"]
    for name, service in services.items():
        if "build" in service:
            assert (REPO / "docker" / service["build"]["context"]).resolve() == REPO, name
            assert (REPO / service["build"]["dockerfile"]).is_file(), name
            assert set(service["build"].get("args", {})) <= {"TORCH_INDEX"}, name
    assert "ARG TORCH_INDEX=" in (DOCKER / "Dockerfile").read_text()


def _command_path(argv: list[str]) -> tuple[str, ...]:
    """``EXECUTABLE SUBCOMMAND...``: the words before the first option."""
    path = [argv[0]]
    for word in argv[1:]:
        if word.startswith("-"):
            break
        path.append(word)
    return tuple(path)


def _help(path: tuple[str, ...]) -> str:
    environment = os.environ | {"COLUMNS": "250", "NO_COLOR": "1"}
    result = subprocess.run([str(BIN / path[0]), *path[1:], "--help"], capture_output=True, text=True,
                            env=environment, timeout=120, check=False)
    assert result.returncode == 0, f"`{' '.join(path)} --help` failed:\n{result.stdout}{result.stderr}"
    return result.stdout


@pytest.mark.slow
def test_every_service_runs_a_command_that_exists(compose):
    helps = {}  # command path -> its --help
    for name, service in compose["services"].items():
        argv = _argv(service)
        assert argv, f"service {name} runs nothing"
        if service.get("image", "").startswith("postgres:"):
            # The official image's entrypoint starts its own `postgres` server.
            assert argv[0] == "postgres", name
            assert service["healthcheck"]["test"][1] == "pg_isready", name
            continue
        assert argv[0] in IMAGE_COMMANDS, f"service {name} runs {argv[0]!r}"
        assert service["image"].startswith("workbench:") and "build" in service, name
        if "healthcheck" in service:
            assert service["healthcheck"]["test"][1] == "python", name
        # The subcommand answers --help, and lists every option the service passes it.
        path = _command_path(argv)
        if path not in helps:
            helps[path] = _help(path)
        for option in (word.split("=")[0] for word in argv if word.startswith("--")):
            assert re.search(rf"(?<![\w-]){option}(?![\w-])", helps[path]), \
                f"service {name}: `{' '.join(path)}` has no option {option}"


@pytest.mark.slow
def test_environment_variables_are_known_settings(compose):
    import mlflow.environment_variables
    import prefect.settings
    from mlflow.cli import server

    workbench = {f"WORKBENCH_{name.upper()}" for name in Settings.model_fields} | {"MLFLOW_TRACKING_URI"}
    workbench.add("PWD")  # read by flows/prefect.yaml ("{{ $PWD }}") when deploying
    mlflow_server = {parameter.envvar for parameter in server.params if parameter.envvar}
    script = (DOCKER / "postgres-init.sh").read_text()
    postgres = {"POSTGRES_PASSWORD"} | set(re.findall(r"\$(\w+_PASSWORD)", script))
    for name, service in compose["services"].items():
        for variable in service.get("environment", {}):
            if service["image"].startswith("postgres:"):
                assert variable in postgres, f"{name}: {variable} is not used by the init script"
            elif variable.startswith("PREFECT_"):
                assert hasattr(prefect.settings, variable), f"{name}: {variable} is no Prefect setting"
            elif variable.startswith("MLFLOW_"):
                assert variable in mlflow_server or hasattr(mlflow.environment_variables, variable), \
                    f"{name}: {variable} is no MLflow variable"
            else:
                assert variable in workbench, f"{name}: {variable} is no workbench setting"
    # Everything the init script reads (but the image's own POSTGRES_USER) is passed in.
    assert postgres <= set(compose["services"]["postgres"]["environment"])


def test_published_ports_are_bound_to_localhost(compose):
    published = 0
    for name, service in compose["services"].items():
        assert service.get("network_mode") != "host", name
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: port {port} is not bound to 127.0.0.1"
    assert published >= 3  # PostgreSQL, Prefect, MLflow


def test_credentials_come_only_from_the_env_file(compose, env_example):
    text = (DOCKER / "compose.yaml").read_text()
    used = list(VARIABLE.finditer(text))
    names = {match["name"] for match in used}
    assert names <= env_example.keys(), f"docker/.env.example lacks {sorted(names - env_example.keys())}"
    secrets = {name for name in names if SECRET_NAME.search(name)}
    assert secrets, "compose.yaml takes no password from the env file"
    for match in used:
        # ${NAME:?message}: compose refuses to start while a credential is missing.
        assert match["name"] not in secrets or match["modifier"] == ":?", f"{match[0]} has a default"
    for name in secrets:
        assert env_example[name].startswith("change-me"), f".env.example: {name} must be a placeholder"
        assert env_example[name] not in text
    for name, service in compose["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(variable):
                assert VARIABLE.fullmatch(str(value)), f"{name}: {variable} is not from the env file"
    for value in _strings(compose):
        for match in URL_PASSWORD.finditer(value):
            assert VARIABLE.fullmatch(match["password"]), f"a password in a URL is not a variable: {value}"


def test_dockerfile_copies_files_that_exist():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    copies = [line.split()[1:-1] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    assert copies
    for sources in copies:
        for source in sources:
            assert not source.startswith("--"), "COPY --from/--chown: check by hand"
            assert (REPO / source).exists(), f"docker/Dockerfile copies {source}, which does not exist"
    # The GPAW build line keeps its configuration (a serial build against libxc).
    assert "GPAW_CONFIG=/opt/workbench/docker/gpaw-siteconfig.py" in dockerfile


def _calls(tree: ast.AST, dotted: str):
    module, _, function = dotted.rpartition(".")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == function
                and isinstance(node.func.value, ast.Name) and node.func.value.id == module):
            yield node


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else keyword.value
    return None


def test_nothing_unpickles():
    """Model weights and arrays from disk or the store never go through pickle."""
    sources = sorted((REPO / "workbench").rglob("*.py")) + sorted((REPO / "flows").rglob("*.py"))
    torch_loads = 0
    for path in sources:
        text = path.read_text()
        tree = ast.parse(text, filename=str(path))
        for call in _calls(tree, "torch.load"):
            torch_loads += 1
            assert _keyword(call, "weights_only") is True, f"{path}:{call.lineno}: torch.load unpickles"
        for call in _calls(tree, "np.load"):
            assert _keyword(call, "allow_pickle") in (None, False), f"{path}:{call.lineno}: np.load unpickles"
        for node in ast.walk(tree):
            # MLflow's load_model unpickles (a pyfunc's python_model, a pytorch model).
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in ("load_model", "read_pickle"), f"{path}:{node.lineno}"
        for module in ("pickle", "cloudpickle", "dill", "joblib"):
            assert not re.search(rf"^\s*(import|from) {module}\b", text, re.MULTILINE), f"{path} imports {module}"
    assert torch_loads >= 1  # the check above would pass vacuously if the loader moved


@pytest.fixture
def readonly_url(postgres_admin, database_url, engine, tmp_path):
    """A role that may only SELECT from the (PostgreSQL) test store, which holds 5 crystals."""
    from tests.conftest import perovskite_rows, write_csv

    rows = perovskite_rows(5)
    import_file(engine, write_csv(tmp_path / "five.csv", rows, ["material_id", "cif", "heat_ref"]),
                source="castelli", options=ReadOptions())
    role = f"wbtest_ro_{uuid.uuid4().hex[:12]}"
    database = make_url(database_url).database
    with postgres_admin.connect() as connection:
        connection.execute(text(f"CREATE ROLE {role} LOGIN"))
        connection.execute(text(f"GRANT CONNECT ON DATABASE {database} TO {role}"))
    with engine.begin() as connection:
        connection.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
        connection.execute(text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"))
    yield make_url(database_url).set(username=role).render_as_string(hide_password=False)
    with engine.begin() as connection:
        connection.execute(text(f"DROP OWNED BY {role}"))
    with postgres_admin.connect() as connection:
        connection.execute(text(f"REVOKE ALL ON DATABASE {database} FROM {role}"))
        connection.execute(text(f"DROP ROLE {role}"))


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_sql_uses_the_readonly_role(readonly_url, monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    # No store at the main URL: the answer can only come through the read-only one.
    monkeypatch.setenv("WORKBENCH_DATABASE_URL", f"sqlite:///{tmp_path / 'absent.db'}")
    monkeypatch.setenv("WORKBENCH_READONLY_DATABASE_URL", readonly_url)
    runner = CliRunner()
    result = runner.invoke(app, ["sql", "SELECT count(*) AS n, current_user AS who FROM structures",
                                 "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"n": 5, "who": make_url(readonly_url).username}]
    refused = runner.invoke(app, ["sql", "DELETE FROM structures"])
    assert refused.exit_code == 1 and "Refused" in refused.output
    # The role itself may not write, even outside the read-only transaction of `workbench sql`.
    with (psycopg.connect(readonly_url) as connection,
          pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied")):
        connection.execute("DELETE FROM structures")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def own_postgres():
    """A fresh PostgreSQL server (initdb), as the postgres image starts on an empty volume;
    yields the environment that reaches it with psql and the port."""
    bindir = shutil.which("pg_config") and subprocess.run(
        ["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
    if not bindir or not (Path(bindir) / "initdb").is_file():
        if os.environ.get("CI"):
            pytest.fail("the PostgreSQL server binaries (initdb) are required in CI")
        pytest.skip("no PostgreSQL server binaries (initdb)")
    # The server refuses to run as root: as root, run it as the postgres user.
    user = "postgres" if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="wbtest-pg-"))
    if user:
        shutil.chown(folder, user)
    port = _free_port()
    subprocess.run([f"{bindir}/initdb", "--auth=trust", "--username=postgres", "-D", str(folder / "data")],
                   user=user, cwd=folder, check=True, capture_output=True)
    server = subprocess.Popen(
        [f"{bindir}/postgres", "-D", str(folder / "data"), "-p", str(port), "-k", str(folder),
         "-c", "listen_addresses=127.0.0.1"],
        user=user, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    environment = os.environ | {"PGHOST": "127.0.0.1", "PGPORT": str(port), "POSTGRES_USER": "postgres"}
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["pg_isready", "-q"], env=environment, check=False).returncode != 0:
            assert time.monotonic() < deadline and server.poll() is None, "the test server did not start"
            time.sleep(0.2)
        yield environment, port
    finally:
        server.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
        server.wait(timeout=60)
        shutil.rmtree(folder)


@pytest.mark.slow
def test_postgres_init_script_makes_the_databases_and_roles(own_postgres, tmp_path):
    environment, port = own_postgres
    passwords = {name: f"pw{index}" for index, name in enumerate(
        ["WORKBENCH_DB_PASSWORD", "WORKBENCH_READONLY_PASSWORD", "PREFECT_DB_PASSWORD", "MLFLOW_DB_PASSWORD"])}
    subprocess.run(["bash", str(DOCKER / "postgres-init.sh")], env=environment | passwords, check=True,
                   capture_output=True)

    def url(role: str, database: str) -> str:
        return f"postgresql://{role}@127.0.0.1:{port}/{database}"

    with psycopg.connect(url("postgres", "prefect")) as connection:
        assert connection.execute("SELECT extname FROM pg_extension WHERE extname = 'pg_trgm'").fetchone()
    for database in ("prefect", "mlflow"):
        with pytest.raises(psycopg.OperationalError, match="permission denied"):
            psycopg.connect(url("workbench_readonly", database))
    # As the containers do: the store is created by its owner, read by the read-only role.
    workbench = os.environ | {"WORKBENCH_HOME": str(tmp_path), "WORKBENCH_DATABASE_URL": url("workbench", "workbench"),
                              "WORKBENCH_READONLY_DATABASE_URL": url("workbench_readonly", "workbench")}
    command = BIN / "workbench"
    subprocess.run([command, "init"], env=workbench, check=True, capture_output=True)
    listed = subprocess.run([command, "sql", "SELECT count(*) AS n FROM candidates", "--format", "csv"],
                            env=workbench, capture_output=True, text=True, check=True)
    assert listed.stdout.split() == ["n", "0"]
    with (psycopg.connect(url("workbench_readonly", "workbench")) as connection,
          pytest.raises(psycopg.errors.InsufficientPrivilege)):
        connection.execute("INSERT INTO target_definitions (name, kind) VALUES ('x', 'scalar')")
