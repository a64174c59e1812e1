"""Benchmark the structure store against ASE's database, on SQLite and PostgreSQL.

Run from the repository root:

    .venv/bin/python benchmarks/store_benchmark.py [--out benchmarks/store.md]

Measures, in one run:

1. ``import_file`` (2 worker processes, as ``workbench import`` runs it) of the 15,143
   perovskites of ``perov5`` in ``WORKBENCH_DATA_DIR`` (``labeled_val.csv`` with its four scalar
   targets, ``unlabeled_pool.json.gz``) into a fresh SQLite and a fresh PostgreSQL store,
   then the same import again (idempotent: must add nothing).
2. The peer: ASE's database (``ase.db.connect(file)``, SQLite, all writes in one
   ``with db:`` block), (a) parsing the same CIF/POSCAR strings with ``ase.io.read`` and
   writing them with their labels as key-value pairs, (b) writing already-parsed Atoms.
3. "Top 100 candidates by std for one target" over 1,000,000 prediction rows
   (250,000 structures x 2 targets x 2 model versions, 10 % of the structures labelled),
   through the ``candidates`` and ``latest_predictions`` views, on both backends: median
   of 5 runs after a warm-up, results checked against NumPy, plans recorded.

``--only``/``--backends``/``--query-structures`` run a part of the benchmark while
working on it.

PostgreSQL databases ``wbbench_<pid>_*`` are created on ``--pg-url``'s server and dropped
at the end, also on error; SQLite files live in a temporary directory.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Self

import numpy as np
import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from workbench.io.importer import check_entry, import_file
from workbench.io.readers import ReadOptions, read_entries
from workbench.settings import Settings
from workbench.store import migrate
from workbench.store.engine import make_engine
from workbench.store.types import array_to_bytes

REPO = Path(__file__).resolve().parent.parent
DATA = Settings().data_dir / "perov5"
FILES = (DATA / "labeled_val.csv", DATA / "unlabeled_pool.json.gz")
EXPECTED_STRUCTURES = 15_143
SOURCE = "perov5"
LABEL_COLUMNS = ("heat_all", "heat_ref", "dir_gap", "ind_gap")
WORKERS = 2

QUERY_STRUCTURES = 250_000
QUERY_TARGETS = ("dir_gap", "heat_ref")  # ids 1 and 2
QUERY_MODEL_VERSIONS = (1, 2)  # registry versions of model "m", ids 1 and 2
LABELLED_FRACTION = 0.10
BATCH = 10_000
TOP_N = 100
RUNS = 5
AIM_MS = 50.0
# The target given by id (a scalar subquery, so the planner knows it before it starts)
# lets both backends walk ix_predictions_target_id_std; by name, PostgreSQL sorts instead.
BY_ID = "target_id = (SELECT id FROM target_definitions WHERE name = 'dir_gap')"
BY_NAME = "target = 'dir_gap'"
QUERIES = {
    f"{view}, {label}": f"SELECT structure_id, mean, std FROM {view} WHERE {where} ORDER BY std DESC LIMIT 100"
    for view in ("candidates", "latest_predictions")
    for label, where in (("target_id", BY_ID), ("name", BY_NAME))
}


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    """One line of the throughput table."""

    what: str
    backend: str
    structures: int
    seconds: float
    notes: str = ""
    cpu: str = ""

    @property
    def rate(self) -> float:
        return self.structures / self.seconds if self.seconds else float("nan")


@dataclass
class QueryResult:
    view: str
    backend: str
    runs_ms: list[float]
    warmup_ms: float
    correct: bool
    check: str
    plan: str = ""

    @property
    def median_ms(self) -> float:
        return statistics.median(self.runs_ms)


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    queries: list[QueryResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class CpuMeter:
    """Wall time and CPU seconds of one section: this process, its reaped children (the
    import's worker pool), the PostgreSQL server processes, and everything else on the
    machine (``/proc/stat`` minus the rest), to tell a slow section from a busy machine."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> Self:
        self.wall0 = time.perf_counter()
        self.total0 = self._machine_busy()
        self.self0, self.children0 = self._own()
        self.pg0 = self._postgres()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall0
        own_self, own_children = self._own()
        self.main = own_self - self.self0
        self.workers = own_children - self.children0
        pg1 = self._postgres()
        self.postgres = sum(pg1[pid] - self.pg0[pid] for pid in pg1.keys() & self.pg0.keys())
        total = self._machine_busy() - self.total0
        self.other = max(0.0, total - self.main - self.workers - self.postgres)

    def summary(self) -> str:
        return f"{self.main:.1f} / {self.workers:.1f} / {self.postgres:.1f} / {self.other:.1f}"

    @classmethod
    def _machine_busy(cls) -> float:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
        return (user + nice + system + irq + softirq + steal) / cls.TICK

    @staticmethod
    def _own() -> tuple[float, float]:
        me = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime, children.ru_utime + children.ru_stime

    @classmethod
    def _postgres(cls) -> dict[int, float]:
        seconds = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            name_end = text.rfind(")")
            if text[text.find("(") + 1 : name_end] != "postgres":
                continue
            fields = text[name_end + 2 :].split()
            seconds[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / cls.TICK
        return seconds


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- PostgreSQL


class PgDatabases:
    """Throw-away databases on one server; all dropped by :meth:`drop_all`."""

    def __init__(self, server_url: str) -> None:
        self.server_url = make_url(server_url)
        self.created: list[str] = []
        self.engines: list[sa.Engine] = []

    def _admin(self) -> psycopg.Connection:
        url = self.server_url
        return psycopg.connect(
            host=url.host,
            port=url.port or 5432,
            user=url.username,
            password=url.password,
            dbname="postgres",
            autocommit=True,
        )

    def create(self, suffix: str) -> str:
        name = f"wbbench_{os.getpid()}_{suffix}"
        with self._admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.server_url.set(database=name).render_as_string(hide_password=False)

    def engine(self, url: str) -> sa.Engine:
        engine = make_engine(url)
        self.engines.append(engine)
        return engine

    def server_version(self) -> str:
        with self._admin() as admin:
            return admin.execute("SHOW server_version").fetchone()[0]

    def drop_all(self) -> None:
        for engine in self.engines:
            engine.dispose()
        with self._admin() as admin:
            for name in self.created:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                log(f"dropped PostgreSQL database {name}")
        self.created.clear()


# --------------------------------------------------------------------------- 1. import


def bench_import(results: Results, backend: str, engine: sa.Engine) -> None:
    migrate.upgrade(engine)
    for label, expect_new in (("import_file, fresh store", True), ("re-import, same files", False)):
        reports = []
        per_file = []
        # As `workbench import -j 2`: one pool for the whole command, started inside it.
        with CpuMeter() as meter, ProcessPoolExecutor(WORKERS) as executor:
            for path in FILES:
                t0 = time.perf_counter()
                reports.append(
                    import_file(
                        engine, path, source=SOURCE, options=ReadOptions(), executor=executor
                    )
                )
                per_file.append(time.perf_counter() - t0)
        entries = sum(r.entries for r in reports)
        new = sum(r.new_structures for r in reports)
        matched = sum(r.matched_structures for r in reports)
        new_labels = sum(r.new_labels for r in reports)
        unchanged = sum(r.unchanged_labels for r in reports)
        new_sources = sum(r.new_sources for r in reports)
        skipped = sum(len(r.skipped) for r in reports)
        files = " + ".join(f"{s:.1f} s" for s in per_file)
        if expect_new:
            notes = (
                f"{new:,} new structures, {new_labels:,} labels (3,787 CSV rows x 4 targets); "
                f"CSV + JSON: {files}"
            )
            ok = new == EXPECTED_STRUCTURES and new_sources == EXPECTED_STRUCTURES and skipped == 0
        else:
            notes = (
                f"added {new} structures, {new_sources} sources, {new_labels} labels "
                f"({matched:,} matched, {unchanged:,} labels unchanged); CSV + JSON: {files}"
            )
            ok = new == 0 and new_sources == 0 and new_labels == 0 and skipped == 0
        if not ok:
            results.problems.append(
                f"{backend} {label}: unexpected counts ({notes}, {skipped} skipped)"
            )
        results.rows.append(Row(label, backend, entries, meter.wall, notes, meter.summary()))
        log(
            f"{backend} {label}: {meter.wall:.1f} s ({entries / meter.wall:.0f}/s) {notes}; "
            f"CPU main/workers/pg/other {meter.summary()}"
        )
    with engine.connect() as conn:
        counts = {
            t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in ("structures", "structure_sources", "target_values", "target_definitions")
        }
    results.notes.append(
        f"{backend} store after both imports: " + ", ".join(f"{n:,} {t}" for t, n in counts.items())
    )


def bench_worker_cost(results: Results) -> None:
    """Serial cost of the work the import does in worker processes, on a sample."""
    sample = []
    for path in FILES:
        entries = read_entries(path, ReadOptions())
        sample.extend(entries[:1000])
    started = time.perf_counter()
    for entry in sample:
        check_entry(entry)
    per_entry_ms = (time.perf_counter() - started) / len(sample) * 1000
    results.notes.append(
        f"Worker-side work of the import (parse + check + identify), serially in one process: "
        f"{per_entry_ms:.2f} ms per structure (1,000 CIF + 1,000 POSCAR entries), i.e. "
        f"{per_entry_ms * EXPECTED_STRUCTURES / 1000:.1f} CPU s for all {EXPECTED_STRUCTURES:,}, "
        f"{per_entry_ms * EXPECTED_STRUCTURES / 1000 / WORKERS:.1f} s of wall time at best "
        f"on {WORKERS} workers"
    )


# --------------------------------------------------------------------------- 2. ASE peer


def read_raw() -> list[tuple[str, str, str, dict]]:
    """``(material_id, text, ase format, labels)`` for every structure, CSV first."""
    csv.field_size_limit(sys.maxsize)
    records = []
    with FILES[0].open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            labels = {k: float(row[k]) for k in LABEL_COLUMNS if row[k].strip()}
            records.append((_key_value(row["material_id"]), row["cif"], "cif", labels))
    with gzip.open(FILES[1], "rt", encoding="utf-8") as handle:
        for material_id, text in json.load(handle).items():
            records.append((_key_value(material_id), text.replace("\\n", "\n"), "vasp", {}))
    return records


def _key_value(material_id: str) -> int | str:
    # ASE refuses a string key-value that reads as a number.
    return int(material_id) if material_id.isdigit() else material_id


def bench_ase(results: Results, workdir: Path) -> None:
    import ase.db
    import ase.io

    warnings.simplefilter("ignore")  # ASE's CIF reader warns about the pymatgen preamble

    with CpuMeter() as meter:
        records = read_raw()
        db = ase.db.connect(str(workdir / "ase_parse_write.db"))
        with db:
            for material_id, text, fmt, labels in records:
                atoms = ase.io.read(io.StringIO(text), format=fmt)
                db.write(atoms, material_id=material_id, **labels)
    n = len(records)
    results.rows.append(
        Row(
            "ASE db: read files + parse (ase.io.read) + write",
            "SQLite (ase.db)",
            n,
            meter.wall,
            "1 process; labels and material_id as key-value pairs",
            meter.summary(),
        )
    )
    log(f"ASE parse+write: {meter.wall:.1f} s")

    parsed = [
        (mid, ase.io.read(io.StringIO(text), format=fmt), labels)
        for mid, text, fmt, labels in records
    ]
    with CpuMeter() as meter:
        db = ase.db.connect(str(workdir / "ase_write_only.db"))
        with db:
            for material_id, atoms, labels in parsed:
                db.write(atoms, material_id=material_id, **labels)
    results.rows.append(
        Row(
            "ASE db: write only (Atoms parsed beforehand)",
            "SQLite (ase.db)",
            n,
            meter.wall,
            "1 process",
            meter.summary(),
        )
    )
    log(f"ASE write only: {meter.wall:.1f} s")
    count = ase.db.connect(str(workdir / "ase_write_only.db")).count()
    if count != EXPECTED_STRUCTURES:
        results.problems.append(f"ASE db holds {count} rows, expected {EXPECTED_STRUCTURES}")
    warnings.resetwarnings()


# --------------------------------------------------------------------------- 3. queries


@dataclass
class Synthetic:
    """The generated data and what the queries must return."""

    n: int
    mean: np.ndarray  # (n, target, model version)
    std: np.ndarray
    labelled: np.ndarray  # bool (n,), has a dir_gap value

    def expected(self, view: str) -> list[tuple[int, float, float]]:
        """``(structure_id, mean, std)`` of the top 100 by std of model version 2 for dir_gap."""
        keep = ~self.labelled if view == "candidates" else np.ones(self.n, dtype=bool)
        index = np.flatnonzero(keep)
        std = self.std[index, 0, 1]
        top = index[np.argsort(-std, kind="stable")[:TOP_N]]
        return [(int(i) + 1, float(self.mean[i, 0, 1]), float(self.std[i, 0, 1])) for i in top]


def make_synthetic(n: int) -> Synthetic:
    rng = np.random.default_rng(20261121)
    mean = rng.normal(size=(n, len(QUERY_TARGETS), len(QUERY_MODEL_VERSIONS)))
    std = rng.lognormal(mean=-2.0, sigma=0.5, size=mean.shape)
    labelled = np.zeros(n, dtype=bool)
    labelled[rng.choice(n, size=int(n * LABELLED_FRACTION), replace=False)] = True
    return Synthetic(n, mean, std, labelled)


STRUCTURE_COLUMNS = (
    "id",
    "formula",
    "reduced_formula",
    "chemical_system",
    "composition",
    "elements",
    "nsites",
    "nelements",
    "lattice",
    "species",
    "frac_coords",
    "volume",
    "density",
    "spacegroup_number",
    "spacegroup_symbol",
    "dedup_key",
    "fingerprint",
)
PREDICTION_COLUMNS = ("id", "model_version_id", "structure_id", "target_id", "mean", "std")
VALUE_COLUMNS = ("id", "structure_id", "target_id", "value", "source_file", "source_row")


def structure_rows(n: int) -> Iterator[tuple]:
    frac = array_to_bytes(np.zeros((1, 3)))
    fingerprint = array_to_bytes(np.zeros(1))
    lattice = json.dumps([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    for i in range(1, n + 1):
        yield (
            i,
            "Na1",
            "Na",
            "Na",
            '{"Na": 1.0}',
            '["Na"]',
            1,
            1,
            lattice,
            '["Na"]',
            frac,
            1.0,
            1.0,
            229,
            "Im-3m",
            f"x|{i}",
            fingerprint,
        )


def prediction_rows(data: Synthetic) -> Iterator[tuple]:
    # As a model would write them: one model version after the other, target by target.
    pid = 0
    for m, _ in enumerate(QUERY_MODEL_VERSIONS):
        for t, _ in enumerate(QUERY_TARGETS):
            mean, std = data.mean[:, t, m].tolist(), data.std[:, t, m].tolist()
            for i in range(data.n):
                pid += 1
                yield (pid, m + 1, i + 1, t + 1, mean[i], std[i])


def value_rows(data: Synthetic) -> Iterator[tuple]:
    for vid, i in enumerate(np.flatnonzero(data.labelled).tolist(), start=1):
        yield (vid, i + 1, 1, float(data.mean[i, 0, 1]), "synthetic", str(i + 1))


def fill_small_tables(conn: sa.Connection) -> None:
    for tid, name in enumerate(QUERY_TARGETS, start=1):
        conn.execute(
            sa.text(
                "INSERT INTO target_definitions (id, name, kind, units, description, grid_units) "
                "VALUES (:id, :name, 'scalar', 'eV', '', '')"
            ),
            {"id": tid, "name": name},
        )
    for mid, registry_version in enumerate(QUERY_MODEL_VERSIONS, start=1):
        conn.execute(
            sa.text(
                "INSERT INTO model_versions (id, name, registry_version, targets, architecture, metrics) "
                "VALUES (:id, 'm', :v, :targets, 'cgcnn', '{}')"
            ),
            {"id": mid, "v": registry_version, "targets": json.dumps(list(QUERY_TARGETS))},
        )


def batched(rows: Iterator[tuple], size: int = BATCH) -> Iterator[list[tuple]]:
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_sqlite(engine: sa.Engine, data: Synthetic) -> None:
    """SQLAlchemy core executemany, 10k rows a batch, all in one transaction."""
    tables = {
        "structures": (STRUCTURE_COLUMNS, structure_rows(data.n)),
        "predictions": (PREDICTION_COLUMNS, prediction_rows(data)),
        "target_values": (VALUE_COLUMNS, value_rows(data)),
    }
    with engine.begin() as conn:
        fill_small_tables(conn)
        for name, (columns, rows) in tables.items():
            # Untyped columns: values go to the driver as given (JSON text, .npy bytes).
            statement = sa.insert(sa.table(name, *[sa.column(c) for c in columns]))
            for batch in batched(rows):
                conn.execute(statement, [dict(zip(columns, row, strict=True)) for row in batch])
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")


def load_postgresql(engine: sa.Engine, data: Synthetic) -> None:
    """COPY through psycopg; foreign-key triggers off while loading (the data is consistent
    by construction); then VACUUM ANALYZE, the state autovacuum would bring the tables to."""
    with engine.begin() as conn:
        fill_small_tables(conn)
    raw = engine.raw_connection()
    try:
        pg: psycopg.Connection = raw.driver_connection
        with pg.cursor() as cur:
            cur.execute("SET session_replication_role = replica")
            for name, columns, rows in (
                ("structures", STRUCTURE_COLUMNS, structure_rows(data.n)),
                ("predictions", PREDICTION_COLUMNS, prediction_rows(data)),
                ("target_values", VALUE_COLUMNS, value_rows(data)),
            ):
                with cur.copy(f"COPY {name} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            cur.execute("SET session_replication_role = DEFAULT")
        pg.commit()
        pg.autocommit = True
        pg.execute("VACUUM ANALYZE")
        pg.autocommit = False
    finally:
        raw.close()


def time_query(conn: sa.Connection, sql: str) -> tuple[float, list[tuple]]:
    started = time.perf_counter()
    rows = [tuple(r) for r in conn.exec_driver_sql(sql).fetchall()]
    return (time.perf_counter() - started) * 1000, rows


def check_rows(rows: list[tuple], expected: list[tuple]) -> tuple[bool, str]:
    if len(rows) != len(expected):
        return False, f"{len(rows)} rows, expected {len(expected)}"
    got_ids = [r[0] for r in rows]
    want_ids = [r[0] for r in expected]
    if got_ids != want_ids:
        wrong = len(set(got_ids) - set(want_ids))
        return False, f"{wrong} of {len(rows)} structure ids not in the expected top {TOP_N}"
    if not all(
        np.isclose(g[1], w[1]) and np.isclose(g[2], w[2])
        for g, w in zip(rows, expected, strict=True)
    ):
        return False, "mean/std differ from model version 2's"
    return True, f"top {TOP_N} = NumPy's (v2 only, no labelled structure)"


def explain(conn: sa.Connection, backend: str, sql: str) -> str:
    if backend == "SQLite":
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").fetchall()
        depth = {0: -1}
        lines = []
        for node_id, parent, _, detail in rows:
            depth[node_id] = depth.get(parent, -1) + 1
            lines.append("  " * depth[node_id] + detail)
        return "\n".join(lines)
    rows = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {sql}").fetchall()
    return "\n".join(r[0] for r in rows)


def run_queries(
    results: Results,
    backend: str,
    engine: sa.Engine,
    data: Synthetic,
    queries: dict[str, str] | None = None,
    record: bool = True,
) -> list[QueryResult]:
    out = []
    with engine.connect() as conn:
        for view, sql in (queries or QUERIES).items():
            warmup_ms, rows = time_query(conn, sql)
            runs = [time_query(conn, sql)[0] for _ in range(RUNS)]
            expected_view = "candidates" if "candidates" in view else "latest_predictions"
            correct, check = check_rows(rows, data.expected(expected_view))
            plan = explain(conn, backend, sql)
            result = QueryResult(view, backend, runs, warmup_ms, correct, check, plan)
            out.append(result)
            log(
                f"{backend} {view}: median {result.median_ms:.1f} ms "
                f"(warm-up {warmup_ms:.1f} ms, runs {', '.join(f'{r:.1f}' for r in runs)}); {check}"
            )
            if record:
                results.queries.append(result)
                if not correct:
                    results.problems.append(f"{backend} {view}: wrong result ({check})")
            conn.rollback()
    return out


def bench_queries(results: Results, backend: str, engine: sa.Engine) -> None:
    data = make_synthetic(QUERY_STRUCTURES)
    migrate.upgrade(engine)
    started = time.perf_counter()
    (load_sqlite if backend == "SQLite" else load_postgresql)(engine, data)
    seconds = time.perf_counter() - started
    with engine.connect() as conn:
        n_pred = conn.exec_driver_sql("SELECT count(*) FROM predictions").scalar_one()
    results.notes.append(
        f"{backend} query data: {data.n:,} structures, {n_pred:,} predictions, "
        f"{int(data.labelled.sum()):,} dir_gap labels, loaded and analysed in "
        f"{seconds:.0f} s"
    )
    log(f"{backend} query data loaded in {seconds:.1f} s")
    run_queries(results, backend, engine, data)


# --------------------------------------------------------------------------- report


def environment(pg: PgDatabases | None) -> list[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    # Read-only: --no-optional-locks keeps git from refreshing the index.
    dirty = subprocess.run(
        [
            "git",
            "-C",
            str(REPO),
            "--no-optional-locks",
            "status",
            "--porcelain",
            "--",
            "workbench",
            "migrations",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split("\n")
    dirty = [line[3:] for line in dirty if line.strip()]
    versions = ", ".join(
        f"{p} {version(p)}"
        for p in ("sqlalchemy", "ase", "pymatgen", "psycopg", "numpy", "gemmi", "moyopy")
    )
    lines = [
        (
            f"- Machine: `nproc` = {nproc}, CPU {cpu}, {mem_gib:.0f} GiB RAM, "
            f"load average {os.getloadavg()[0]:.2f} at the start"
        ),
        (
            f"- Python {platform.python_version()}; {versions}; SQLite {sqlite3.sqlite_version}"
            + (f"; PostgreSQL {pg.server_version()} (local, default settings)" if pg else "")
        ),
        f"- Code: commit {commit}"
        + (f" with uncommitted changes in {', '.join(dirty)}" if dirty else ""),
    ]
    return lines


def command_line() -> str:
    exe = (
        os.path.relpath(sys.executable)
        if sys.executable.startswith(os.getcwd())
        else sys.executable
    )
    return shlex.join([exe, *sys.argv])


def render(results: Results, env: list[str], started: str, seconds: float) -> str:
    out = [
        "# Store benchmark",
        "",
        "What was measured (one run of `benchmarks/store_benchmark.py`):",
        "",
        (
            f"1. `import_file` of the {EXPECTED_STRUCTURES:,} perov5 structures "
            f"(`labeled_val.csv`: 3,787 CIF rows with 4 scalar targets; `unlabeled_pool.json.gz`: "
            f"11,356 POSCAR strings), {WORKERS} worker processes as `workbench import` uses, into a "
            "fresh store; then the same two files again, which must add nothing. Pool start-up is "
            "included, as in the CLI."
        ),
        (
            "2. The peer, ASE's database (`ase.db.connect(file)`, SQLite, all writes in one "
            "`with db:` block): (a) read both files, parse every string with `ase.io.read` "
            '(`format="cif"` / `"vasp"`) and write it with its labels and material_id as '
            "key-value pairs; (b) write only, from Atoms parsed beforehand."
        ),
        (
            f"3. Top {TOP_N} candidates by std for one target, over {QUERY_STRUCTURES * 4:,} "
            f"prediction rows ({QUERY_STRUCTURES:,} minimal structures x 2 scalar targets x 2 model "
            f"versions; {LABELLED_FRACTION:.0%} of the structures have a `dir_gap` value), through "
            f"the `candidates` and `latest_predictions` views: median of {RUNS} runs after one "
            "warm-up, client-side wall time including fetching the rows; result checked against "
            "NumPy. Data loaded with SQLAlchemy core executemany (SQLite) / COPY (PostgreSQL), then "
            "ANALYZE (PostgreSQL: VACUUM ANALYZE)."
        ),
        "",
        *env,
        f"- Command: `{command_line()}`",
        f"- Run: {started}, {seconds / 60:.1f} min in all",
        "",
    ]
    if results.rows:
        out += [
            "## Writing structures",
            "",
            (
                "| What | Backend | Structures | Seconds | Structures/s "
                "| CPU s: main / workers / PostgreSQL / other | Notes |"
            ),
            "|---|---|---:|---:|---:|---|---|",
        ]
        out += [
            f"| {r.what} | {r.backend} | {r.structures:,} | {r.seconds:.1f} | {r.rate:,.0f} "
            f"| {r.cpu} | {r.notes} |"
            for r in results.rows
        ]
        out += [
            "",
            (
                "CPU seconds during each row: this process / its worker processes / the PostgreSQL "
                "server's backends / everything else on the machine (other people's jobs: a large "
                f"value means the row was slowed by them). {os.cpu_count()} cores, so wall time x "
                f"{os.cpu_count()} is all the CPU there was."
            ),
            "",
        ]
    if results.queries:
        out += [
            f"## Top {TOP_N} by std over {QUERY_STRUCTURES * 4:,} predictions (aim: < {AIM_MS:.0f} ms)",
            "",
            "| Query | Backend | Median ms | Min ms | Max ms | Warm-up ms | Aim met | Result |",
            "|---|---|---:|---:|---:|---:|---|---|",
        ]
        for q in results.queries:
            out.append(
                f"| `{q.view}` | {q.backend} | {q.median_ms:,.1f} | {min(q.runs_ms):,.1f} | "
                f"{max(q.runs_ms):,.1f} | {q.warmup_ms:,.1f} | "
                f"{'yes' if q.median_ms < AIM_MS else '**no**'} | "
                f"{'ok' if q.correct else '**wrong**'}: {q.check} |"
            )
        out += ["", "Queries:", ""]
        out += [f"- `{view}`: `{sql}`" for view, sql in QUERIES.items()]
        out.append("")
    if results.notes or results.problems:
        out += ["## Notes", ""]
        out += [f"- {note}" for note in results.notes]
        out += [f"- **Problem:** {p}" for p in results.problems]
        out.append("")
    if results.queries:
        out += ["## Query plans", ""]
        for q in results.queries:
            kind = "EXPLAIN QUERY PLAN" if q.backend == "SQLite" else "EXPLAIN (ANALYZE, BUFFERS)"
            out += [
                "<details>",
                f"<summary>{q.backend}, <code>{q.view}</code> ({kind})</summary>",
                "",
                "```",
                q.plan,
                "```",
                "",
                "</details>",
                "",
            ]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def main() -> int:
    global QUERY_STRUCTURES
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the markdown report here too")
    parser.add_argument(
        "--pg-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL server to create throw-away databases on",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=("import", "ase", "queries"),
        default=["import", "ase", "queries"],
        help="run only these parts",
    )
    parser.add_argument(
        "--backends", nargs="+", choices=("sqlite", "postgresql"), default=["sqlite", "postgresql"]
    )
    parser.add_argument(
        "--query-structures",
        type=int,
        default=QUERY_STRUCTURES,
        help="structures of the query data (4 predictions each)",
    )
    args = parser.parse_args()
    QUERY_STRUCTURES = args.query_structures

    # A SIGTERM unwinds like Ctrl-C, so that the databases are dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started_at = time.strftime("%Y-%m-%d %H:%M %Z")
    started = time.perf_counter()
    results = Results()
    workdir = Path(tempfile.mkdtemp(prefix="wbbench_"))
    pg = PgDatabases(args.pg_url) if "postgresql" in args.backends else None
    env = environment(pg)
    backends = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
    try:
        if "import" in args.only:
            for key in args.backends:
                if key == "sqlite":
                    url = f"sqlite:///{workdir / 'import.db'}"
                    engine = make_engine(url)
                else:
                    url = pg.create("import")
                    engine = pg.engine(url)
                bench_import(results, backends[key], engine)
                engine.dispose()
            bench_worker_cost(results)
        if "ase" in args.only:
            bench_ase(results, workdir)
        if "queries" in args.only:
            for key in args.backends:
                if key == "sqlite":
                    engine = make_engine(f"sqlite:///{workdir / 'queries.db'}")
                else:
                    engine = pg.engine(pg.create("queries"))
                bench_queries(results, backends[key], engine)
                engine.dispose()
    finally:
        if pg:
            pg.drop_all()
        shutil.rmtree(workdir, ignore_errors=True)

    report = render(results, env, started_at, time.perf_counter() - started)
    print("\n" + report)
    if args.out:
        args.out.write_text(report + "\n", encoding="utf-8")
        log(f"wrote {args.out}")
    return 1 if results.problems else 0


if __name__ == "__main__":
    sys.exit(main())
