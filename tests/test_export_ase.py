"""Export to ASE databases: the ``ase db`` tool reads it, and re-importing loses nothing."""

import gzip
import subprocess
import sys
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from sqlalchemy import func, select

from tests.conftest import JARVIS_DOS, perovskite_rows, write_csv
from workbench.io.export import export_ase
from workbench.io.importer import import_file
from workbench.io.readers import ReadOptions
from workbench.store import migrate
from workbench.store.engine import make_engine, session_scope
from workbench.store.schema import Structure, StructureSource, TargetDefinition, TargetValue

ASE_CLI = Path(sys.executable).parent / "ase"


def fill_store(engine, tmp_path: Path) -> None:
    """Scalars from the perovskite CSV, per-site arrays and results from extxyz, DOS spectra."""
    write_csv(tmp_path / "perov.csv", perovskite_rows(20), ["material_id", "cif", "heat_ref", "dir_gap"])
    import_file(engine, tmp_path / "perov.csv", source="castelli",
                options=ReadOptions(units={"heat_ref": "eV"}))

    frames = []
    for index, element in enumerate(("Fe", "Ni")):
        atoms = bulk(element, "bcc" if element == "Fe" else "fcc", a=2.87 if element == "Fe" else 3.52, cubic=True)
        atoms.info["material_id"] = f"m-{index}"
        atoms.arrays["bader"] = np.linspace(-0.1, 0.1, len(atoms))
        atoms.calc = SinglePointCalculator(
            atoms, energy=-8.0 - index, forces=np.random.default_rng(index).normal(size=(len(atoms), 3)),
            magmoms=np.full(len(atoms), 2.2 - index),
        )
        frames.append(atoms)
    ase.io.write(tmp_path / "metals.extxyz", frames, format="extxyz")
    import_file(engine, tmp_path / "metals.extxyz", source="dft", options=ReadOptions())
    grid = (np.linspace(-5, 10, 300, endpoint=False), "eV")
    import_file(engine, JARVIS_DOS / "id_prop.csv", source="jarvis",
                options=ReadOptions(targets={"value": "dos"}, grids={"dos": grid}))


def snapshot(engine) -> dict:
    """Everything a user stored, keyed so that ids do not matter."""
    with session_scope(engine) as session:
        structures = {s.id: s for s in session.scalars(select(Structure))}
        sources = {}
        for source in session.scalars(select(StructureSource)):
            sources.setdefault(source.structure_id, set()).add((source.source, source.external_id))
        # Keyed by the original source: a re-import adds its own label beside it.
        key = {sid: min(p for p in pairs if p[0] != "from-export") for sid, pairs in sources.items()}
        definitions = {
            t.id: (t.name, t.kind, t.units, t.length, tuple(t.site_shape or ()), t.grid_units,
                   None if t.grid is None else tuple(t.grid))
            for t in session.scalars(select(TargetDefinition))
        }
        labels = {}
        for value in session.scalars(select(TargetValue)):
            payload = value.value if value.value is not None else value.value_array
            labels[(key[value.structure_id], definitions[value.target_id][0])] = payload
        return {
            "structures": {key[sid]: (s.reduced_formula, s.spacegroup_number, tuple(s.species),
                                      np.array(s.lattice), s.frac_coords)
                           for sid, s in structures.items()},
            "sources": {key[sid]: pairs for sid, pairs in sources.items()},
            "definitions": sorted(definitions.values()),
            "labels": labels,
        }


def assert_same(before: dict, after: dict) -> None:
    assert after["definitions"] == before["definitions"]
    assert after["structures"].keys() == before["structures"].keys()
    for key, (formula, group, species, lattice, coords) in before["structures"].items():
        formula2, group2, species2, lattice2, coords2 = after["structures"][key]
        assert (formula2, group2, species2) == (formula, group, species)
        np.testing.assert_allclose(lattice2, lattice, atol=1e-10)
        np.testing.assert_allclose(coords2, coords, atol=1e-10)
    for key, pairs in before["sources"].items():
        assert pairs <= after["sources"][key]
    assert after["labels"].keys() == before["labels"].keys()
    for key, value in before["labels"].items():
        np.testing.assert_allclose(after["labels"][key], value, rtol=1e-12)


@pytest.mark.parametrize("suffix", [".db", ".json"])
def test_export_lists_in_ase_db_and_round_trips(suffix, engine, empty_database_url, tmp_path):
    fill_store(engine, tmp_path)
    out = tmp_path / f"export{suffix}"
    assert export_ase(engine, out) == 20 + 2 + 20
    with pytest.raises(FileExistsError):
        export_ase(engine, out)

    database = ase.db.connect(str(out))
    iron = next(database.select(formula="Fe2"))
    assert iron.energy == -8.0 and iron.magmoms.tolist() == [2.2, 2.2] and iron.forces.shape == (2, 3)
    assert iron.data["bader"].shape == (2,)
    assert next(database.select("wb_dir_gap>0")).wb_dir_gap > 0
    spectra = [row.data["dos"] for row in database.select() if "dos" in row.data]
    assert len(spectra) == 20 and {len(spectrum) for spectrum in spectra} == {300}

    listing = subprocess.run([str(ASE_CLI), "db", str(out), "wb_heat_ref<1.0", "-c", "formula,wb_heat_ref"],
                             capture_output=True, text=True, check=True).stdout
    with session_scope(engine) as session:
        expected = session.scalar(select(func.count(TargetValue.id)).join(TargetDefinition)
                                  .where(TargetDefinition.name == "heat_ref", TargetValue.value < 1.0))
    assert f"Rows: {expected}" in listing and expected > 0
    assert len(listing.splitlines()) == expected + 3  # header, rows, "Rows:", "Keys:"

    before = snapshot(engine)
    fresh = make_engine(empty_database_url)
    migrate.upgrade(fresh)
    try:
        report = import_file(fresh, out, source="from-export", options=ReadOptions())
        assert report.new_structures == 42 and not report.skipped
        assert_same(before, snapshot(fresh))
        again = import_file(fresh, out, source="from-export", options=ReadOptions())
        assert (again.new_structures, again.new_labels, again.new_sources) == (0, 0, 0)
    finally:
        fresh.dispose()


def test_export_cli(run_cli, engine, tmp_path):
    fill_store(engine, tmp_path)
    out = tmp_path / "cli.db"
    assert "Wrote 42 rows" in run_cli("export-ase", out).output
    run_cli("export-ase", out, expect=1)
    run_cli("export-ase", out, "--overwrite")


def test_a_gzipped_json_export_round_trips(engine, empty_database_url, tmp_path):
    fill_store(engine, tmp_path)
    out = tmp_path / "export.json"
    export_ase(engine, out)
    packed = tmp_path / "export.json.gz"
    packed.write_bytes(gzip.compress(out.read_bytes()))
    fresh = make_engine(empty_database_url)
    migrate.upgrade(fresh)
    try:
        report = import_file(fresh, packed, source="from-export", options=ReadOptions())
        assert report.new_structures == 42 and not report.skipped
        assert_same(snapshot(engine), snapshot(fresh))
    finally:
        fresh.dispose()


def test_targets_named_like_calculator_results_keep_their_units(engine, empty_database_url, tmp_path):
    """A CSV column `energy` in eV/atom is exported as ASE's energy result; re-imported, it is
    in eV/atom as the export's metadata says, not in ASE's eV."""
    rows = [{**row, "energy": row["heat_ref"]} for row in perovskite_rows(2)]
    write_csv(tmp_path / "energies.csv", rows, ["material_id", "cif", "energy"])
    import_file(engine, tmp_path / "energies.csv", source="csv", options=ReadOptions(units={"energy": "eV/atom"}))
    out = tmp_path / "export.db"
    export_ase(engine, out)
    assert next(ase.db.connect(str(out)).select()).energy == pytest.approx(float(rows[0]["heat_ref"]))
    fresh = make_engine(empty_database_url)
    migrate.upgrade(fresh)
    try:
        import_file(fresh, out, source="from-export", options=ReadOptions())
        assert_same(snapshot(engine), snapshot(fresh))  # the definitions with their units
    finally:
        fresh.dispose()
