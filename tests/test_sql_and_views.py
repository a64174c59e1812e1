"""Plain SQL over the store: read-only access, output formats, and the two views."""

import csv
import io
import json
import shutil

import numpy as np
import pytest
from sqlalchemy import URL, insert, text
from sqlalchemy.exc import DBAPIError

from workbench.errors import ReadOnlyViolation
from workbench.store.engine import make_engine, read_only_engine, session_scope
from workbench.store.queries import run_read_only, store_status
from workbench.store.schema import (
    ModelVersion,
    Prediction,
    Structure,
    TargetDefinition,
    TargetKind,
    TargetValue,
)


def add_structures(session, n: int) -> list[int]:
    rows = [{
        "formula": "Na1 Cl1", "reduced_formula": "NaCl", "chemical_system": "Cl-Na",
        "composition": {"Na": 1.0, "Cl": 1.0}, "elements": ["Cl", "Na"], "nsites": 2, "nelements": 2,
        "lattice": [[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]], "species": ["Na", "Cl"],
        "frac_coords": np.array([[0, 0, 0], [0.5, 0.5, 0.5]]), "volume": 64.0, "density": 1.5,
        "spacegroup_number": 221, "spacegroup_symbol": "Pm-3m", "dedup_key": f"NaCl|221|{i}",
        "fingerprint": np.array([3.46, 3.46]),
    } for i in range(n)]
    return list(session.scalars(insert(Structure).returning(Structure.id, sort_by_parameter_order=True), rows))


@pytest.fixture
def predicted_store(engine):
    """Four structures, two targets, two model versions; structure 0 labeled for gap."""
    with session_scope(engine) as session:
        ids = add_structures(session, 4)
        gap = TargetDefinition(name="gap", kind=TargetKind.SCALAR, units="eV", description="", grid_units="")
        dos = TargetDefinition(name="dos", kind=TargetKind.SPECTRUM, units="1/eV", description="",
                               grid_units="eV", length=3, grid=np.array([-1.0, 0.0, 1.0]))
        session.add_all([gap, dos])
        session.flush()
        old = ModelVersion(name="m", registry_version=1, targets=["gap"], architecture="cgcnn", metrics={})
        new = ModelVersion(name="m", registry_version=2, targets=["gap"], architecture="cgcnn", metrics={})
        session.add_all([old, new])
        session.flush()
        session.add(TargetValue(structure_id=ids[0], target_id=gap.id, value=1.1))
        for index, structure_id in enumerate(ids):
            session.add(Prediction(model_version_id=old.id, structure_id=structure_id, target_id=gap.id,
                                   mean=9.0, std=9.0))
            if index < 3:  # the new model has not predicted structure 3 yet
                session.add(Prediction(model_version_id=new.id, structure_id=structure_id,
                                       target_id=gap.id, mean=float(index), std=0.1 * (index + 1)))
        session.add(Prediction(model_version_id=new.id, structure_id=ids[1], target_id=dos.id,
                               mean_array=np.ones(3), std_array=np.zeros(3)))
    return {"ids": ids, "old": old.id, "new": new.id}


def test_latest_predictions_keep_the_newest_model_per_structure(engine, predicted_store):
    ids, old, new = predicted_store["ids"], predicted_store["old"], predicted_store["new"]
    result = run_read_only(engine, "SELECT structure_id, target, mean, std, model_version_id "
                                   "FROM latest_predictions WHERE target = 'gap' ORDER BY structure_id")
    assert result.columns == ["structure_id", "target", "mean", "std", "model_version_id"]
    assert [(r[0], r[4]) for r in result.rows] == [(ids[0], new), (ids[1], new), (ids[2], new), (ids[3], old)]
    assert result.rows[2][2:4] == (2.0, pytest.approx(0.3))


def test_candidates_are_unlabeled_with_latest_mean_and_std(engine, predicted_store):
    ids = predicted_store["ids"]
    for where in ("target = 'gap'", "target_id = (SELECT id FROM target_definitions WHERE name = 'gap')"):
        result = run_read_only(engine, f"SELECT structure_id, mean, std FROM candidates WHERE {where} "
                                       "ORDER BY std DESC LIMIT 2")
        assert result.rows == [(ids[3], 9.0, 9.0), (ids[2], 2.0, pytest.approx(0.3))]
    unlabeled = run_read_only(engine, "SELECT structure_id FROM candidates WHERE target = 'gap' "
                                      "ORDER BY structure_id").rows
    assert unlabeled == [(ids[1],), (ids[2],), (ids[3],)]  # structure 0 has a label
    spectra = run_read_only(engine, "SELECT structure_id, mean FROM candidates WHERE target = 'dos'")
    assert spectra.rows == [(ids[1], None)]  # only predicted structures; spectra have no scalar mean


def test_writes_are_refused(engine, predicted_store):
    for statement in ("DELETE FROM structures", "UPDATE target_values SET value = 0",
                      "CREATE TABLE sneaky (id integer)", "DROP VIEW candidates"):
        with pytest.raises(ReadOnlyViolation, match="read-only"):
            run_read_only(engine, statement)
    # A second statement could end the read-only transaction first.
    for statement in ("SELECT 1; COMMIT; DELETE FROM structures", "SELECT 1; DELETE FROM structures"):
        with pytest.raises(ReadOnlyViolation, match="exactly one SQL statement"):
            run_read_only(engine, statement)
    if engine.dialect.name == "sqlite":
        for statement in ("PRAGMA query_only=OFF", "ATTACH DATABASE 'elsewhere.db' AS elsewhere"):
            with pytest.raises(Exception):  # noqa: B017 - either refusal is fine, what matters is below
                run_read_only(engine, statement)
                run_read_only(engine, "DELETE FROM structures")
    assert run_read_only(engine, "SELECT count(*) FROM structures;").rows == [(4,)]
    assert run_read_only(engine, "SELECT count(*) FROM structures").rows == [(4,)]


def test_status_counts(engine, predicted_store):
    status = store_status(engine)
    assert (status.structures, status.models, status.predictions) == (4, 2, 8)
    assert status.targets == {"dos": 0, "gap": 1}
    assert status.sources == {} and status.calculations == {}  # stored without an import or a calculation


def test_sql_cli_formats(run_cli, predicted_store):
    query = "SELECT structure_id, target, std FROM latest_predictions WHERE target = 'gap' ORDER BY structure_id"
    rows = list(csv.reader(io.StringIO(run_cli("sql", query, "--format", "csv").stdout)))
    assert rows[0] == ["structure_id", "target", "std"] and len(rows) == 5
    records = json.loads(run_cli("sql", query, "--format", "json").stdout)
    assert records[0]["target"] == "gap" and len(records) == 4
    table = run_cli("sql", query).stdout
    assert "structure_id" in table and "gap" in table
    refused = run_cli("sql", "DELETE FROM structures", expect=1)
    assert "Refused" in refused.output and "read-only" in refused.output
    assert "predictions" in run_cli("status").stdout


def test_commands_need_an_initialised_store(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from workbench.cli import app

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    monkeypatch.delenv("WORKBENCH_DATABASE_URL", raising=False)
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 1 and "workbench init" in result.output
    assert CliRunner().invoke(app, ["init"]).exit_code == 0
    assert (tmp_path / "workbench.db").is_file()
    assert CliRunner().invoke(app, ["status"]).exit_code == 0


def test_a_store_in_a_folder_named_with_hash_and_question_mark_stays_read_only(sqlite_template, tmp_path):
    """The read-only SQLite URI escapes the path: unescaped, `#` or `?` would end it there,
    drop `mode=ro` and open (or create) another file read-write."""
    folder = tmp_path / "run #1?"
    folder.mkdir()
    shutil.copy(sqlite_template, folder / "store.db")
    url = URL.create("sqlite", database=str(folder / "store.db")).render_as_string()
    reader = read_only_engine(url)
    writer = make_engine(url)
    try:
        with reader.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM structures")).scalar() == 0
            for statement in ("DELETE FROM structures", "ATTACH DATABASE ':memory:' AS other"):
                with pytest.raises(DBAPIError, match="readonly database|too many attached"):
                    connection.execute(text(statement))
        # The store's own read-only connection (`workbench sql`, --where) opens the same file.
        assert run_read_only(writer, "SELECT count(*) FROM structures").rows == [(0,)]
        with pytest.raises(ReadOnlyViolation):
            run_read_only(writer, "DELETE FROM structures")
    finally:
        reader.dispose()
        writer.dispose()
    assert [path.name for path in tmp_path.iterdir()] == [folder.name]  # no file opened beside it
