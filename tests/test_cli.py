"""The command line: it starts without the heavy libraries, every project error ends a
command as a message and an exit code, and help shows the library's own defaults."""

import json
import subprocess
import sys

import pytest

from workbench.featurize.config import GraphConfig
from workbench.models.architectures import ARCHITECTURES, DEFAULT_ARCHITECTURE
from workbench.train.config import TrainConfig

HEAVY = ("torch", "pymatgen", "mlflow", "prefect", "scipy", "alembic")


def modules_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    """Top-level packages imported by running ``code`` in a fresh interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_importing_the_cli_imports_no_heavy_library():
    assert not modules_after("import workbench.cli") & set(HEAVY)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sql_and_status_start_without_heavy_libraries(database_url, tmp_path):
    env = {"WORKBENCH_DATABASE_URL": database_url, "WORKBENCH_HOME": str(tmp_path / "home"), "PATH": ""}
    for argv in (["sql", "SELECT 1"], ["status"], ["--help"]):
        run = f"from workbench.cli import app\ntry:\n    app({argv!r})\nexcept SystemExit as end:\n    assert not end.code"
        loaded = modules_after(run, env)
        assert not loaded & set(HEAVY), argv
        assert "numpy" not in loaded, argv  # status counts in plain SQL, without the ORM's array columns


def test_a_project_error_is_a_message_and_an_exit_code(run_cli):
    assert run_cli("campaign", "status", "nonesuch", expect=1).output.strip() == (
        "no campaign named 'nonesuch' in the store")
    assert "no calculation with id 999999" in run_cli("dft", "show", "999999", expect=1).output
    sql_error = run_cli("sql", "SELEC 1", expect=1).output
    assert sql_error.startswith("SQL error: ") and "Traceback" not in sql_error


def test_help_shows_the_library_defaults(run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per option
    train = " ".join(run_cli("train", "--help").output.split())
    assert f"[default: {TrainConfig.epochs}]" in train and f"[default: {TrainConfig.members}]" in train
    assert f"Backbone: {', '.join(ARCHITECTURES)}." in train and f"[default: {DEFAULT_ARCHITECTURE}]" in train
    featurize = " ".join(run_cli("featurize", "--help").output.split())
    assert f"[default: {GraphConfig.cutoff}]" in featurize
    commands = run_cli("--help").output
    for command in ("init", "import", "export-ase", "sql", "status", "featurize", "train", "predict",
                    "replay", "dft", "campaign"):
        assert f" {command} " in commands


def test_a_bad_setting_is_a_message(run_cli, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DASK_WORKERS", "many")
    refused = run_cli("status", expect=1).output
    assert refused.startswith("WORKBENCH_DASK_WORKERS: ") and "Traceback" not in refused
