"""Fixtures: every store test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``WORKBENCH_TEST_POSTGRES_URL`` (default: the local server,
user postgres). The schema is migrated once per session into a template; each test gets
a fresh copy (a copied SQLite file, or ``CREATE DATABASE ... TEMPLATE``).
"""

import csv
import functools
import gzip
import os
import shutil
import sys
import uuid
from itertools import permutations
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from workbench.cli import app
from workbench.store import migrate
from workbench.store.engine import make_engine

REPO = Path(__file__).resolve().parents[1]
# Real data committed with its licence (tests/data/README.md): tests need nothing else.
PEROVSKITES = REPO / "workbench" / "examples" / "perovskites_labeled.csv.gz"
PEROVSKITE_POOL = REPO / "workbench" / "examples" / "perovskites_pool.json.gz"
JARVIS_DOS = REPO / "tests" / "data" / "jarvis_dos"
POSTGRES_ADMIN_URL = os.environ.get(
    "WORKBENCH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ["sqlite", "postgresql"]
csv.field_size_limit(sys.maxsize)  # CIF columns are long


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    """Write ``columns`` of ``rows`` (e.g. perovskite rows) as a CSV file."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({key: row[key] for key in columns} for row in rows)
    return path


def perovskite_rows(count: int | None = None) -> list[dict]:
    """The first ``count`` (default: all 1,000) rows of the bundled labeled perovskites."""
    with gzip.open(PEROVSKITES, "rt", newline="") as handle:
        return [row for _, row in zip(range(count or 10**9), csv.DictReader(handle), strict=False)]


@functools.cache
def charged_perovskite_cifs(count: int) -> tuple[tuple[str, str, list[float]], ...]:
    """``(material id, CIF text, charges)`` of the first ``count`` bundled perovskites that
    pymatgen can charge-balance with whole oxidation states, each site's formal oxidation
    state (its most likely guess) in ``_atom_site_charge``.

    Real per-site values that sum to zero per cell, like DFT partial charges; the per-site
    DFT charge set of the benchmarks has no licence that lets the repository carry it.
    """
    from pymatgen.core import Structure

    cifs: list[tuple[str, str, list[float]]] = []
    for row in perovskite_rows():
        structure = Structure.from_str(row["cif"], fmt="cif")
        guesses = structure.composition.oxi_state_guesses()
        if guesses and all(float(state).is_integer() for state in guesses[0].values()):
            charges = [guesses[0][site.specie.symbol] for site in structure]
            cifs.append((row["material_id"], cif_with_site_charges(structure, charges, row["material_id"]), charges))
        if len(cifs) == count:
            return tuple(cifs)
    raise AssertionError(f"only {len(cifs)} bundled perovskites charge-balance")


def cif_with_site_charges(structure, charges: list[float], name: str) -> str:
    """A P1 CIF of a pymatgen structure with one ``_atom_site_charge`` per site."""
    lattice = structure.lattice
    cell = [f"_cell_length_{axis} {length:.8f}" for axis, length in zip("abc", lattice.abc, strict=True)]
    cell += [f"_cell_angle_{axis} {angle:.8f}"
             for axis, angle in zip(("alpha", "beta", "gamma"), lattice.angles, strict=True)]
    header = ["loop_", "_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x",
              "_atom_site_fract_y", "_atom_site_fract_z", "_atom_site_charge"]
    sites = [f"{site.specie.symbol}{index} {site.specie.symbol} {x:.8f} {y:.8f} {z:.8f} {charge:.6f}"
             for index, (site, charge) in enumerate(zip(structure, charges, strict=True), start=1)
             for x, y, z in [site.frac_coords]]
    return "\n".join([f"data_{name}", *cell, *header, *sites, ""])


def jarvis_dos_spectra() -> list[list[float]]:
    """The 300-value DOS spectra of the committed JARVIS crystals, in file order."""
    with (JARVIS_DOS / "id_prop.csv").open() as handle:
        return [[float(value) for value in row[1:]] for row in csv.reader(handle)]


@pytest.fixture(scope="session")
def postgres_admin():
    engine = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect():
            pass
    except Exception as error:  # noqa: BLE001
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {error}")
        pytest.skip(f"no PostgreSQL at {POSTGRES_ADMIN_URL}: {error}")
    yield engine
    engine.dispose()


def postgres_url(name: str) -> str:
    """The URL of database ``name`` on the test server."""
    return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def create_postgres_database(admin, *, template: str | None = None) -> str:
    name = f"wbtest_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        clause = f" TEMPLATE {template}" if template else ""
        connection.execute(text(f"CREATE DATABASE {name}{clause}"))
    return name


def drop_postgres_database(admin, name: str) -> None:
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "store.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_template(postgres_admin):
    name = create_postgres_database(postgres_admin)
    engine = make_engine(postgres_url(name))
    migrate.upgrade(engine)
    engine.dispose()
    yield name
    drop_postgres_database(postgres_admin, name)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def empty_database_url(request, backend, tmp_path):
    """A URL of a database with no schema, on the backend under test."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    admin = request.getfixturevalue("postgres_admin")
    name = create_postgres_database(admin)
    yield postgres_url(name)
    drop_postgres_database(admin, name)


@pytest.fixture
def database_url(request, backend, tmp_path):
    """A migrated, empty store on the backend under test."""
    if backend == "sqlite":
        path = tmp_path / "store.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    admin = request.getfixturevalue("postgres_admin")
    name = create_postgres_database(admin, template=request.getfixturevalue("postgres_template"))
    yield postgres_url(name)
    drop_postgres_database(admin, name)


@pytest.fixture
def engine(database_url):
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def run_cli(database_url, tmp_path, monkeypatch):
    """Run ``workbench ...`` in-process against the test store; returns the Result."""
    monkeypatch.setenv("WORKBENCH_DATABASE_URL", database_url)
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    runner = CliRunner()

    def run(*args: str, expect: int = 0):
        result = runner.invoke(app, [str(arg) for arg in args], catch_exceptions=False)
        assert result.exit_code == expect, f"exit {result.exit_code}\n{result.output}"
        return result

    return run


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An MLflow SQLite store migrated once per session (its migrations take seconds)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(mlflow_template, tmp_path) -> str:
    """A fresh copy of the migrated MLflow store, for one test."""
    path = tmp_path / "mlflow.db"
    shutil.copy(mlflow_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def settings(tmp_path, database_url, mlflow_uri):
    """The settings of a command on the test's store and MLflow store, its home in tmp_path."""
    from workbench.settings import Settings

    return Settings(home=tmp_path / "home", database_url=database_url, mlflow_tracking_uri=mlflow_uri)


@pytest.fixture
def alloys(engine) -> dict[str, int]:
    """42 L1_2 alloys of the metals EMT knows, stored under source ``test``."""
    from tests.dft_helpers import LATTICE, l12, store_crystals

    return store_crystals(engine, {f"{a}3{b}": l12(a, b) for a, b in permutations(LATTICE, 2)})
