"""The command line: it starts without the heavy libraries, every project error ends a
command as a message and an exit code, and help shows the library's own defaults."""

import json
import os
import socket
import subprocess
import sys

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from typer import BadParameter
from typer.testing import CliRunner

from tests.conftest import perovskite_rows, write_csv
from workbench.cli import app
from workbench.cli.shared import check_structure_choice
from workbench.featurize.config import GraphConfig
from workbench.models.architectures import ARCHITECTURES, DEFAULT_ARCHITECTURE
from workbench.store import migrate
from workbench.store.engine import make_engine
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


def run_on(url: str, home, *args: str):
    """``workbench ...`` in-process against the store at ``url``, exceptions included."""
    env = {"WORKBENCH_DATABASE_URL": url, "WORKBENCH_HOME": str(home)}
    return CliRunner().invoke(app, [str(arg) for arg in args], env=env, catch_exceptions=False)


def test_a_store_behind_the_code_is_refused_until_init(tmp_path):
    """A store one migration behind (after the package was upgraded) is refused with what
    to do, not run into a missing table or column; `init` upgrades it and it works again."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    assert run_on(url, tmp_path / "home", "init").exit_code == 0
    labeled = write_csv(tmp_path / "labeled.csv", perovskite_rows(2), ["material_id", "cif", "dir_gap"])
    assert run_on(url, tmp_path / "home", "import", labeled, "--jobs", "1").exit_code == 0
    engine = make_engine(url)
    try:  # the store as the previous release left it, with its rows
        scripts = ScriptDirectory.from_config(migrate.alembic_config(engine))
        previous = scripts.get_revision(migrate.head_revision()).down_revision
        migrate.downgrade(engine, previous)
    finally:
        engine.dispose()
    with socket.socket() as taken:  # serve must refuse before it listens: here it could not
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args in (["export-ase", tmp_path / "out.db"], ["status"], ["serve", "--port", port]):
            refused = run_on(url, tmp_path / "home", *args)
            assert refused.exit_code == 1, args
            assert f"has schema {previous}, older than this workbench's {migrate.SCHEMA_REVISION}: " \
                   "run `workbench init` to upgrade it." in " ".join(refused.output.split()), args
    assert run_on(url, tmp_path / "home", "init").exit_code == 0
    exported = run_on(url, tmp_path / "home", "export-ase", tmp_path / "out.db")
    assert exported.exit_code == 0 and "Wrote 2 rows" in exported.output


def test_a_store_from_a_newer_workbench_is_refused(tmp_path):
    """A revision this workbench's migrations do not have: `init` could not help."""
    url = f"sqlite:///{tmp_path / 'new.db'}"
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
        with engine.begin() as connection:
            connection.execute(text(f"UPDATE {migrate.VERSION_TABLE} SET version_num = 'from_the_future'"))
    finally:
        engine.dispose()
    refused = run_on(url, tmp_path / "home", "status")
    assert refused.exit_code == 1
    assert "has schema from_the_future, from a newer workbench" in " ".join(refused.output.split())


def test_sql_and_serve_read_the_read_only_url_checked_like_the_store(tmp_path):
    """Both read WORKBENCH_READONLY_DATABASE_URL where it is set (the store's URL is then not
    needed), and refuse a store there that was never created in the words every command uses."""
    store, missing = (f"sqlite:///{tmp_path / name}" for name in ("store.db", "missing.db"))
    assert run_on(store, tmp_path / "home", "init").exit_code == 0

    def run(readonly_url: str, *args):
        env = {"WORKBENCH_DATABASE_URL": f"sqlite:///{tmp_path / 'unused.db'}",
               "WORKBENCH_READONLY_DATABASE_URL": readonly_url, "WORKBENCH_HOME": str(tmp_path / "home")}
        return CliRunner().invoke(app, [str(arg) for arg in args], env=env, catch_exceptions=False)

    counted = run(store, "sql", "SELECT count(*) FROM structures", "--format", "csv")
    assert counted.exit_code == 0 and counted.stdout.split() == ["count(*)", "0"]
    with socket.socket() as taken:  # serve must refuse before it listens: here it could not
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        for args in (["sql", "SELECT 1"], ["serve", "--port", taken.getsockname()[1]]):
            refused = run(missing, *args)
            assert refused.exit_code == 1, args
            assert f"No workbench store at {missing}: run `workbench init` first." in \
                " ".join(refused.output.split()), args
    assert not (tmp_path / "unused.db").exists()
    assert not (tmp_path / "missing.db").exists()  # a reader creates nothing


@pytest.mark.parametrize("backend", ["sqlite"])
def test_commands_on_stored_structures_take_exactly_one_choice(run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # the message on one line
    check_structure_choice("1,2", "", False)
    for ids, where, every in (("", "", False), ("1", "", True), ("1", "nsites > 2", False)):
        with pytest.raises(BadParameter, match="exactly one of --ids, --where, --all"):
            check_structure_choice(ids, where, every)
    for command in (["dft", "run", "--preset", "emt"], ["relax", "--preset", "emt", "--ids", "1", "--all"],
                    ["workflow", "gpaw-fast-relaxed", "--where", "nsites > 2", "--all"]):
        assert "exactly one of --ids, --where, --all" in run_cli(*command, expect=2).output, command


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_the_default_jobs_are_the_cores_this_process_may_use():
    """Under a one-core allocation (taskset, SLURM) on a bigger machine, --jobs defaults to 1."""
    one_core = min(os.sched_getaffinity(0))
    code = "from workbench.cli.shared import DEFAULT_JOBS; print(DEFAULT_JOBS)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          preexec_fn=lambda: os.sched_setaffinity(0, {one_core}))
    assert done.stdout.strip() == "1"
