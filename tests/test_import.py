"""Importing real files: every format, dedup across sources, idempotence."""

import csv
import gzip
import json
import sys

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from pymatgen.core import Structure as PmgStructure
from sqlalchemy import func, select

from tests.conftest import (
    JARVIS_DOS,
    PEROVSKITE_POOL,
    PEROVSKITES,
    charged_perovskite_cifs,
    perovskite_rows,
    write_csv,
)
from workbench.io.entries import FRAME_ID_KEYS
from workbench.io.importer import import_file
from workbench.io.readers import ReadOptions
from workbench.store.engine import session_scope
from workbench.store.queries import run_read_only
from workbench.store.schema import (
    Structure,
    StructureSource,
    TargetDefinition,
    TargetKind,
    TargetValue,
)

csv.field_size_limit(sys.maxsize)


def count(engine, model) -> int:
    with session_scope(engine) as session:
        return session.scalar(select(func.count()).select_from(model))


def labels_of(engine, target: str) -> dict[int, object]:
    with session_scope(engine) as session:
        rows = session.execute(
            select(TargetValue.structure_id, TargetValue.value, TargetValue.value_array)
            .join(TargetDefinition).where(TargetDefinition.name == target)
        )
        return {r.structure_id: (r.value if r.value is not None else r.value_array) for r in rows}


def test_perovskite_csv_imports_scalars_and_is_idempotent(run_cli, engine):
    rows = perovskite_rows()
    args = ["import", PEROVSKITES, "--source", "perov5", "--target", "heat_ref=heat_ref",
            "--target", "dir_gap=dir_gap", "--target", "ind_gap=ind_gap", "--unit", "heat_ref=eV"]
    run_cli(*args)
    assert count(engine, Structure) == len(rows) == 1000
    assert count(engine, TargetValue) == 3 * 1000
    with session_scope(engine) as session:
        kinds = dict(session.execute(select(TargetDefinition.name, TargetDefinition.kind)).all())
        units = session.scalar(select(TargetDefinition.units).where(TargetDefinition.name == "heat_ref"))
    assert kinds == {name: TargetKind.SCALAR for name in ("heat_ref", "dir_gap", "ind_gap")}
    assert units == "eV"
    hits = run_read_only(engine, """
        SELECT count(*) FROM target_values g
        JOIN target_definitions gd ON gd.id = g.target_id AND gd.name = 'dir_gap'
        JOIN target_values h ON h.structure_id = g.structure_id
        JOIN target_definitions hd ON hd.id = h.target_id AND hd.name = 'heat_ref'
        WHERE g.value BETWEEN 1.5 AND 3 AND h.value < 1.0""")
    # The water-splitting screen of the Castelli data set, counted in the file itself.
    screened = sum(1.5 <= float(row["dir_gap"]) <= 3 and float(row["heat_ref"]) < 1.0 for row in rows)
    assert hits.rows[0][0] == screened == 9

    # A value from the file, to the digit.
    first = rows[0]
    with session_scope(engine) as session:
        structure_id = session.scalar(
            select(StructureSource.structure_id).where(StructureSource.external_id == first["material_id"])
        )
    assert labels_of(engine, "heat_ref")[structure_id] == float(first["heat_ref"])

    result = run_cli(*args)
    assert "0 new structures" in result.output and "0 new labels" in result.output
    assert count(engine, Structure) == 1000
    assert count(engine, TargetValue) == 3 * 1000
    assert count(engine, StructureSource) == 1000


@pytest.mark.slow
def test_unlabeled_pool_imports(run_cli, engine):
    run_cli("import", PEROVSKITE_POOL, "--source", "pool")
    assert count(engine, Structure) == 2000
    assert count(engine, TargetValue) == 0
    with session_scope(engine) as session:
        assert session.scalar(select(func.max(Structure.nsites))) == 5


def test_same_structure_from_two_sources_is_one_row_and_per_site_labels_follow_sites(engine, tmp_path):
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)  # 8 sites
    charges = np.where(np.array(atoms.get_chemical_symbols()) == "Na", 0.8, -0.8)
    atoms.arrays["bader"] = charges + np.arange(8) * 0.01
    ase.io.write(tmp_path / "first.extxyz", atoms, format="extxyz")

    # The same crystal, sites in reverse order and shifted by a lattice vector.
    order = np.arange(8)[::-1]
    shuffled = atoms[order]
    shuffled.positions += atoms.cell[0]
    shuffled.arrays["bader"] = atoms.arrays["bader"][order]
    ase.io.write(tmp_path / "second.extxyz", shuffled, format="extxyz")
    # The second source adds a label the first did not have: a total energy.
    shuffled.calc = SinglePointCalculator(shuffled, energy=-27.5)
    ase.io.write(tmp_path / "third.extxyz", shuffled, format="extxyz")

    import_file(engine, tmp_path / "first.extxyz", source="a", options=ReadOptions())
    report = import_file(engine, tmp_path / "second.extxyz", source="b", options=ReadOptions())
    assert (report.new_structures, report.matched_structures, report.unchanged_labels) == (0, 1, 1)
    report = import_file(engine, tmp_path / "third.extxyz", source="c", options=ReadOptions())
    assert report.new_labels == 1

    assert count(engine, Structure) == 1
    with session_scope(engine) as session:
        sources = sorted(session.scalars(select(StructureSource.source)))
    assert sources == ["a", "b", "c"]
    [bader] = labels_of(engine, "bader").values()
    np.testing.assert_allclose(bader, atoms.arrays["bader"])
    assert list(labels_of(engine, "energy").values()) == [-27.5]


def test_cif_charges_become_per_site_labels(engine, tmp_path):
    written = {}
    for material_id, cif, charges in charged_perovskite_cifs(3):
        # Some CIF collections (CoRE MOF's DDEC charges) start with a provenance line.
        (tmp_path / f"{material_id}.cif").write_text(f"{{'source': 'castelli', 'id': {material_id}}}\n{cif}")
        written[material_id] = charges
    for material_id in written:
        import_file(engine, tmp_path / f"{material_id}.cif", source="oxi", options=ReadOptions())
    assert count(engine, Structure) == 3
    with session_scope(engine) as session:
        definition = session.scalar(select(TargetDefinition).where(TargetDefinition.name == "charges"))
        external_ids = dict(session.execute(select(StructureSource.structure_id, StructureSource.external_id)).all())
    assert definition.kind is TargetKind.PER_SITE and definition.site_shape == [] and definition.units == "e"
    for structure_id, charges in labels_of(engine, "charges").items():
        np.testing.assert_allclose(charges, written[external_ids[structure_id]])  # in site order
        assert abs(charges.sum()) < 1e-9  # charge-balanced cells


def test_alignn_directory_imports_poscars_and_dos_spectra(run_cli, engine):
    run_cli("import", JARVIS_DOS, "--source", "jarvis", "--target", "dos=value",
            "--grid", "dos=-5:10:300:eV")
    assert count(engine, Structure) == 20
    assert count(engine, StructureSource) == 20  # POSCAR files and id_prop rows name the same ids
    with session_scope(engine) as session:
        dos = session.scalar(select(TargetDefinition).where(TargetDefinition.name == "dos"))
        ids = set(session.scalars(select(StructureSource.external_id)))
    assert "POSCAR-JVASP-10.vasp" in ids
    assert dos.kind is TargetKind.SPECTRUM and dos.length == 300 and dos.grid_units == "eV"
    np.testing.assert_allclose(dos.grid[[0, 100, -1]], [-5.0, 0.0, 9.95])
    spectra = labels_of(engine, "dos")
    assert len(spectra) == 20 and all(spectrum.min() >= 0 for spectrum in spectra.values())


def test_pymatgen_json_and_cif_files(engine, tmp_path):
    rows = perovskite_rows(3)
    structures = [PmgStructure.from_str(row["cif"], fmt="cif") for row in rows]
    structures[0].properties = {"band_gap": 1.25}
    (tmp_path / "one.json").write_text(json.dumps(structures[0].as_dict()))
    (tmp_path / "many.json").write_text(json.dumps([s.as_dict() for s in structures[1:]]))
    (tmp_path / "first.cif").write_text(rows[0]["cif"])
    import_file(engine, tmp_path / "one.json", source="mp", options=ReadOptions())
    import_file(engine, tmp_path / "many.json", source="mp", options=ReadOptions())
    report = import_file(engine, tmp_path / "first.cif", source="cif", options=ReadOptions())
    assert report.matched_structures == 1  # gemmi and pymatgen read the same crystal
    assert count(engine, Structure) == 3
    assert list(labels_of(engine, "band_gap").values()) == [1.25]


def test_ase_db_results_become_targets(engine, tmp_path):
    import ase.db

    path = tmp_path / "calcs.db"
    with ase.db.connect(str(path)) as database:
        for index, a in enumerate((3.5, 3.6)):
            atoms = bulk("Cu", "fcc", a=a, cubic=True)
            atoms.calc = SinglePointCalculator(
                atoms, energy=-3.0 - index, forces=np.full((4, 3), 0.1 * index),
                magmoms=np.zeros(4), charges=np.zeros(4),
            )
            database.write(atoms, relaxed=index, data={"dos": np.linspace(0, 1, 300)})
    import_file(engine, path, source="calcs", options=ReadOptions())
    with session_scope(engine) as session:
        definitions = {t.name: t for t in session.scalars(select(TargetDefinition))}
    assert {name: definitions[name].kind for name in definitions} == {
        "energy": TargetKind.SCALAR, "forces": TargetKind.PER_SITE, "magmoms": TargetKind.PER_SITE,
        "charges": TargetKind.PER_SITE, "dos": TargetKind.SPECTRUM, "relaxed": TargetKind.SCALAR,
    }
    assert definitions["forces"].site_shape == [3] and definitions["dos"].length == 300
    assert sorted(labels_of(engine, "energy").values()) == [-4.0, -3.0]


def test_parallel_parsing_gives_the_same_store(engine, tmp_path):
    from concurrent.futures import ProcessPoolExecutor

    with gzip.open(PEROVSKITE_POOL, "rt") as handle:
        pool = json.load(handle)
    subset = dict(list(pool.items())[:300])
    (tmp_path / "pool.json").write_text(json.dumps(subset))
    with ProcessPoolExecutor(2) as executor:
        report = import_file(engine, tmp_path / "pool.json", source="pool", options=ReadOptions(),
                             executor=executor)
    assert report.new_structures == 300
    with session_scope(engine) as session:
        formulas = set(session.scalars(select(Structure.reduced_formula)))
    assert len(formulas) > 100


def test_ase_atoms_without_periodicity_are_refused(engine, tmp_path):
    from workbench.errors import ImportFailed

    ase.io.write(tmp_path / "molecule.xyz", Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]),
                 format="extxyz")
    with pytest.raises(ImportFailed, match="not a periodic crystal"):
        import_file(engine, tmp_path / "molecule.xyz", source="x", options=ReadOptions())


def test_cif_charges_inside_a_csv_follow_the_target_mapping(engine, tmp_path):
    [(material_id, cif, charges)] = charged_perovskite_cifs(1)
    [heat_ref] = [row["heat_ref"] for row in perovskite_rows() if row["material_id"] == material_id]
    with (tmp_path / "charged.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["material_id", "cif", "heat_ref"])
        writer.writeheader()
        writer.writerow({"material_id": material_id, "cif": cif, "heat_ref": heat_ref})
    only_heat = ReadOptions(targets={"heat_ref": "heat_ref"})
    import_file(engine, tmp_path / "charged.csv", source="only-heat", options=only_heat)
    assert labels_of(engine, "charges") == {}  # not asked for
    import_file(engine, tmp_path / "charged.csv", source="renamed",
                options=ReadOptions(targets={"heat_ref": "heat_ref", "charges": "oxidation"}, units={"oxidation": "e"}))
    [oxidation] = labels_of(engine, "oxidation").values()
    np.testing.assert_allclose(oxidation, charges)


def test_csv_column_empty_in_the_first_row_is_still_a_target(engine, tmp_path):
    rows = perovskite_rows(3)
    rows[0] = dict(rows[0], dir_gap="")  # a missing label, not a text column
    path = write_csv(tmp_path / "gaps.csv", rows, ["material_id", "cif", "heat_ref", "dir_gap"])
    import_file(engine, path, source="s", options=ReadOptions())
    assert sorted(labels_of(engine, "dir_gap").values()) == sorted(float(row["dir_gap"]) for row in rows[1:])


@pytest.mark.parametrize("id_key", FRAME_ID_KEYS)
def test_a_numeric_extxyz_frame_id_is_the_id_not_a_label(id_key, engine, tmp_path):
    frames = [bulk("Cu", "fcc", a=3.61, cubic=True), bulk("Ni", "fcc", a=3.52, cubic=True)]
    for frame, frame_id in zip(frames, ("1.1", "1.2"), strict=True):
        frame.info[id_key] = float(frame_id)  # written as id=1.1, which ASE reads back as a float
        frame.info["gap"] = 0.25
    ase.io.write(tmp_path / "frames.extxyz", frames, format="extxyz")
    import_file(engine, tmp_path / "frames.extxyz", source="s", options=ReadOptions())
    with session_scope(engine) as session:
        assert set(session.scalars(select(StructureSource.external_id))) == {"1.1", "1.2"}
        assert set(session.scalars(select(TargetDefinition.name))) == {"gap"}


def test_extxyz_frames_that_share_a_name_import_under_their_positions(engine, tmp_path):
    """A frame's ``name`` is no id (trajectories repeat it): frames are ``<stem>:<n>``."""
    frames = [bulk("Si", "diamond", a=5.43), bulk("Si", "diamond", a=5.60)]
    for frame in frames:
        frame.info["name"] = "Si-bulk"
    ase.io.write(tmp_path / "t.extxyz", frames, format="extxyz")
    import_file(engine, tmp_path / "t.extxyz", source="s", options=ReadOptions())
    with session_scope(engine) as session:
        assert set(session.scalars(select(StructureSource.external_id))) == {"t:1", "t:2"}
