"""Bad input: a clear error naming file and row, and nothing half-written."""

import csv
import json
import pickle
import re
import sys

import ase.db
import numpy as np
import pytest
from ase.build import bulk
from sqlalchemy import func, select

from tests.conftest import JARVIS_DOS, PEROVSKITE_POOL, PEROVSKITES, perovskite_rows, write_csv
from workbench.errors import ImportFailed, InputError
from workbench.io.importer import import_file
from workbench.io.readers import ReadOptions
from workbench.store.engine import session_scope
from workbench.store.schema import Structure, StructureSource, TargetDefinition, TargetValue

csv.field_size_limit(sys.maxsize)

CLOSE_ATOMS_CIF = """data_close
_cell_length_a 4.0
_cell_length_b 4.0
_cell_length_c 4.0
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Na1 Na 0.0 0.0 0.0
Cl1 Cl 0.05 0.0 0.0
"""
UNKNOWN_ELEMENT_CIF = CLOSE_ATOMS_CIF.replace("Cl1 Cl 0.05", "Xx1 Xx 0.5").replace("data_close", "data_xx")


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return perovskite_rows(4)


COLUMNS = ["material_id", "cif", "heat_ref", "dir_gap"]


def nothing_stored(engine) -> bool:
    with session_scope(engine) as session:
        return all(
            session.scalar(select(func.count()).select_from(model)) == 0
            for model in (Structure, StructureSource, TargetValue, TargetDefinition)
        )


CSV_CASES = {
    "malformed CIF": ({"cif": "data_broken\n_cell_length_a 4.0\nloop_\n_atom_site_label\n"}, "atom sites"),
    "unknown element": ({"cif": UNKNOWN_ELEMENT_CIF}, "unknown element"),
    "atoms too close": ({"cif": CLOSE_ATOMS_CIF}, "closer than 0.5"),
    "NaN label": ({"heat_ref": "nan"}, "not finite"),
    "infinite label": ({"dir_gap": "-inf"}, "not finite"),
    "text in a number column": ({"dir_gap": "n/a"}, "is not a number"),
}


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_bad_csv_row_fails_the_file_and_names_the_row(case, engine, tmp_path, rows):
    change, message = CSV_CASES[case]
    rows = [dict(row) for row in rows]
    rows[2].update(change)
    path = tmp_path / "batch.csv"
    write_csv(path, rows, COLUMNS)
    with pytest.raises(ImportFailed) as failure:
        import_file(engine, path, source="s", options=ReadOptions())
    [error] = failure.value.errors
    assert error.file == str(path)
    assert error.row == f"row 3 (id {rows[2]['material_id']})"
    assert message in str(error)
    assert str(path) in str(failure.value) and "row 3" in str(failure.value)
    assert nothing_stored(engine)

    report = import_file(engine, path, source="s", options=ReadOptions(), skip_bad=True)
    assert [e.row for e in report.skipped] == [error.row]
    assert report.new_structures == 3
    with session_scope(engine) as session:
        imported = set(session.scalars(select(StructureSource.external_id)))
    assert imported == {row["material_id"] for index, row in enumerate(rows) if index != 2}


def test_duplicate_ids_inside_one_file(engine, tmp_path, rows):
    rows = [dict(row) for row in rows]
    rows[3]["material_id"] = rows[1]["material_id"]
    path = tmp_path / "dups.csv"
    write_csv(path, rows, COLUMNS)
    with pytest.raises(ImportFailed, match=r"row 4 .*duplicate id .*first at row 2") as failure:
        import_file(engine, path, source="s", options=ReadOptions())
    [error] = failure.value.errors
    assert error.file == str(path)  # named like every other error of the file
    assert nothing_stored(engine)


def test_an_empty_id_is_that_rows_error(engine, tmp_path, rows):
    """Not the file's: --skip-bad leaves out just those rows (two empty ids are not duplicates)."""
    rows = [dict(row) for row in rows]
    rows[1]["material_id"] = rows[2]["material_id"] = " "
    path = tmp_path / "blank.csv"
    write_csv(path, rows, COLUMNS)
    with pytest.raises(ImportFailed) as failure:
        import_file(engine, path, source="s", options=ReadOptions())
    assert [(e.file, e.row, e.field, e.message) for e in failure.value.errors] == [
        (str(path), f"row {number}", "material_id", "empty material_id") for number in (2, 3)]
    assert nothing_stored(engine)
    report = import_file(engine, path, source="s", options=ReadOptions(), skip_bad=True)
    assert [e.row for e in report.skipped] == ["row 2", "row 3"] and report.new_structures == 2


def test_import_failed_survives_a_process_boundary(engine, tmp_path, rows):
    rows = [dict(row) for row in rows]
    rows[2]["dir_gap"] = "n/a"
    path = tmp_path / "bad.csv"
    write_csv(path, rows, COLUMNS)
    with pytest.raises(ImportFailed) as failure:
        import_file(engine, path, source="s", options=ReadOptions())
    copy = pickle.loads(pickle.dumps(failure.value))
    assert str(copy) == str(failure.value) and "row 3" in str(copy)
    assert [(e.file, e.row, e.field) for e in copy.errors] == [(str(path), failure.value.errors[0].row, "dir_gap")]


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("grid", ["dos=0:10:-5", "dos=0:10:0"])
def test_a_grid_without_points_is_a_usage_error(grid, run_cli):
    refused = run_cli("import", JARVIS_DOS, "--target", "dos=value", "--grid", grid, expect=2)
    assert "--grid needs a COUNT of 1 or more" in " ".join(refused.output.split())


def _ase_db_with_labels(path, labels_per_row: list[dict], per_site: bool) -> None:
    with ase.db.connect(str(path)) as database:
        for index, data in enumerate(labels_per_row):
            database.write(bulk("Si", "diamond", a=5.43 + 0.1 * index), data=data)
    if per_site:
        database.metadata = {"workbench": {"targets": {"bader": {"key": "bader", "kind": "per_site"}}}}


def test_spectrum_of_the_wrong_length(engine, tmp_path):
    path = tmp_path / "dos.db"
    _ase_db_with_labels(path, [{"dos": np.ones(300)}, {"dos": np.ones(299)}], per_site=False)
    with pytest.raises(ImportFailed) as failure:
        import_file(engine, path, source="s", options=ReadOptions())
    [error] = failure.value.errors
    assert (error.file, error.row, error.field) == (str(path), "row id 2", "dos")
    assert "shape (299,), expected (300,)" in str(error)
    assert nothing_stored(engine)


def test_per_site_array_of_the_wrong_length(engine, tmp_path):
    path = tmp_path / "bader.db"
    _ase_db_with_labels(path, [{"bader": np.ones(2)}, {"bader": np.ones(3)}], per_site=True)
    with pytest.raises(ImportFailed, match=r"row id 2, field 'bader': per-site array has shape \(3,\), "
                       r"expected \(2,\) \(2 sites\)"):
        import_file(engine, path, source="s", options=ReadOptions())
    assert nothing_stored(engine)


def test_conflicting_label_for_a_stored_structure_is_refused(engine, tmp_path, rows):
    rows = [dict(row) for row in rows[:2]]
    write_csv(tmp_path / "a.csv", rows, COLUMNS)
    import_file(engine, tmp_path / "a.csv", source="a", options=ReadOptions())
    rows[1]["dir_gap"] = "9.99"
    write_csv(tmp_path / "b.csv", rows, COLUMNS)
    with pytest.raises(ImportFailed, match=r"b\.csv, row 2 .*'dir_gap'.*already .*a\.csv.*this entry gives 9\.99"):
        import_file(engine, tmp_path / "b.csv", source="b", options=ReadOptions())
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(StructureSource)) == 2


def test_a_skipped_entry_leaves_nothing_that_later_entries_see(engine, tmp_path, rows):
    row = rows[0]
    write_csv(tmp_path / "stored.csv", [row], ["material_id", "cif", "heat_ref"])
    import_file(engine, tmp_path / "stored.csv", source="a", options=ReadOptions())
    # Two more ids of the stored crystal: the first conflicts on heat_ref after giving
    # dir_gap and a new target ind_gap; the second gives the same dir_gap, and only that.
    conflicting = dict(row, material_id="conflicting", heat_ref=str(float(row["heat_ref"]) + 1))
    same = dict(row, material_id="same", heat_ref="", ind_gap="")
    columns = ["material_id", "cif", "dir_gap", "ind_gap", "heat_ref"]
    path = write_csv(tmp_path / "later.csv", [conflicting, same], columns)
    report = import_file(engine, path, source="b", options=ReadOptions(), skip_bad=True)
    assert [error.row for error in report.skipped] == ["row 1 (id conflicting)"]
    assert (report.new_labels, report.unchanged_labels) == (1, 0)
    with session_scope(engine) as session:
        labels = dict(session.execute(
            select(TargetDefinition.name, TargetValue.value).join(TargetValue)).all())
        names = set(session.scalars(select(TargetDefinition.name)))
    assert labels == {"heat_ref": float(row["heat_ref"]), "dir_gap": float(row["dir_gap"])}
    assert names == {"heat_ref", "dir_gap"}  # ind_gap came only from the skipped entry


@pytest.mark.parametrize("grid", [False, True], ids=["no grid", "grid"])
def test_a_spectrum_that_is_one_number_is_skipped_and_does_not_define_the_target(grid, engine, tmp_path):
    path = tmp_path / "dos.db"
    _ase_db_with_labels(path, [{"dos": 0.5}, {"dos": np.ones(300)}], per_site=False)
    options = ReadOptions(grids={"dos": (np.linspace(-5, 10, 300), "eV")} if grid else {})
    with pytest.raises(ImportFailed) as failure:
        import_file(engine, path, source="s", options=options)
    [error] = failure.value.errors
    assert (error.row, error.field) == ("row id 1", "dos") and "shape (), expected a 1-d array" in str(error)
    report = import_file(engine, path, source="s", options=options, skip_bad=True)
    assert report.new_structures == 1 and [e.row for e in report.skipped] == ["row id 1"]
    with session_scope(engine) as session:
        assert session.scalar(select(TargetDefinition.length).where(TargetDefinition.name == "dos")) == 300


def test_unreadable_files_name_the_file(engine, tmp_path):
    cases = {
        "notes.txt": "unknown file type",
        "empty.csv": "no structure column",
        "broken.json": "cannot read file",
        "broken.cif": "cannot read file",
    }
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty.csv").write_text("a,b\n1,2\n")
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "broken.cif").write_text("data_x\nloop_\n_atom_site_label 'unterminated\n")
    for name, message in cases.items():
        with pytest.raises(InputError, match=message) as failure:
            import_file(engine, tmp_path / name, source="s", options=ReadOptions())
        assert failure.value.file == str(tmp_path / name)
    (tmp_path / "structures.json").write_text(json.dumps({"a": 3}))
    with pytest.raises(ImportFailed, match="structures.json, entry 1 .id a.: expected a structure dict"):
        import_file(engine, tmp_path / "structures.json", source="s", options=ReadOptions())
    assert nothing_stored(engine)


def test_cli_reports_bad_rows_and_skip_bad(run_cli, engine, tmp_path, rows):
    rows = [dict(row) for row in rows]
    rows[1]["heat_ref"] = "inf"
    path = tmp_path / "batch.csv"
    write_csv(path, rows, COLUMNS)
    result = run_cli("import", path, "--jobs", "1", expect=1)
    assert "not imported, nothing written" in result.output
    assert "row 2" in result.output and "not finite" in result.output
    result = run_cli("import", path, "--jobs", "1", "--skip-bad")
    assert "3 new structures" in result.output and "skipped" in result.output


@pytest.mark.parametrize("bundled", [PEROVSKITES, PEROVSKITE_POOL], ids=lambda path: path.name)
def test_a_truncated_gzip_file_is_refused_by_name(bundled, engine, tmp_path):
    data = bundled.read_bytes()
    path = tmp_path / bundled.name
    path.write_bytes(data[: len(data) // 2])  # as an interrupted copy or download leaves it
    with pytest.raises(InputError, match="not a complete gzip file") as failure:
        import_file(engine, path, source="s", options=ReadOptions())
    assert failure.value.file == str(path)
    assert nothing_stored(engine)


def disordered_perovskite(row: dict):
    """The row's perovskite as a solid solution: its B site shared half and half with Zr."""
    from pymatgen.core import Structure as PmgStructure

    structure = PmgStructure.from_str(row["cif"], fmt="cif")
    b_site = structure[1].specie.symbol
    structure.replace_species({b_site: {b_site: 0.5, "Zr": 0.5}})
    return structure


def test_partial_occupancies_are_refused_naming_file_block_and_sites(engine, tmp_path, rows):
    from pymatgen.io.cif import CifWriter

    ordered, disordered = rows[0], disordered_perovskite(rows[1])
    b_site = disordered[1].species.elements[0].symbol
    path = tmp_path / "two.cif"
    path.write_text(ordered["cif"] + "\n" + str(CifWriter(disordered)))
    with pytest.raises(ImportFailed) as failure:
        import_file(engine, path, source="s", options=ReadOptions())
    [error] = failure.value.errors
    assert error.file == str(path) and error.row.startswith("block 2 (data_")
    assert error.message.startswith("partial occupancy at atom sites ")  # the CIF rows, by label
    assert re.search(rf"\b{b_site}\d+ \(0\.5\)", error.message) and re.search(r"\bZr\d+ \(0\.5\)", error.message)
    assert "only ordered crystals are stored" in error.message
    assert nothing_stored(engine)
    report = import_file(engine, path, source="s", options=ReadOptions(), skip_bad=True)
    assert report.new_structures == 1 and [e.row for e in report.skipped] == [error.row]


def test_partial_occupancies_in_a_csv_row_or_a_pymatgen_dict(engine, tmp_path, rows):
    from pymatgen.io.cif import CifWriter

    rows = [dict(row) for row in rows]
    rows[2]["cif"] = str(CifWriter(disordered_perovskite(rows[2])))
    path = write_csv(tmp_path / "batch.csv", rows, COLUMNS)
    with pytest.raises(ImportFailed, match=r"batch\.csv, row 3 .*partial occupancy at atom sites"):
        import_file(engine, path, source="s", options=ReadOptions())
    (tmp_path / "solid.json").write_text(json.dumps(disordered_perovskite(rows[0]).as_dict()))
    with pytest.raises(ImportFailed, match=r"solid\.json.*partial occupancy at sites 2 \(.*only ordered"):
        import_file(engine, tmp_path / "solid.json", source="s", options=ReadOptions())
    assert nothing_stored(engine)


def test_a_file_that_is_not_utf8_is_refused_by_name(engine, tmp_path, rows):
    rows = [dict(row) for row in rows]
    rows[1]["cif"] = rows[1]["cif"].replace("# generated using pymatgen", "# généré par pymatgen")
    path = write_csv(tmp_path / "latin1.csv", rows, COLUMNS)
    path.write_bytes(path.read_text().encode("latin-1"))  # as some spreadsheet exports save it
    line = next(number for number, text in enumerate(path.read_bytes().split(b"\n"), 1) if b"\xe9" in text)
    with pytest.raises(InputError, match=rf"not UTF-8 text: byte 0xe9 on line {line} ") as failure:
        import_file(engine, path, source="s", options=ReadOptions())
    assert failure.value.file == str(path)

    cif = tmp_path / "author.cif"  # once read with replacement characters, silently
    cif.write_bytes(f"_publ_author_name 'Müller'\n{rows[0]['cif']}".encode("cp1252"))
    with pytest.raises(InputError, match="not UTF-8 text: byte 0xfc on line 1") as failure:
        import_file(engine, cif, source="s", options=ReadOptions())
    assert failure.value.file == str(cif)
    assert nothing_stored(engine)

    # UTF-8 with a byte-order mark (as spreadsheets write it) is UTF-8.
    path.write_bytes(path.read_text(encoding="latin-1").encode("utf-8-sig"))
    assert import_file(engine, path, source="s", options=ReadOptions()).new_structures == 4
