"""Universal potentials (SevenNet, CHGNet) as presets, and batches of structures in one
worker process.

The models run once per module, in one batch each, on a SQLite store (loading one costs
10-40 s); the batch machinery is tested with EMT on both backends.
"""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from sqlalchemy import func, select, update

from tests.dft_helpers import calculation_of, cu3au, store_crystals, targets_of
from workbench.dft import universal
from workbench.dft.presets import BUILTIN_PRESETS, Preset, PresetError, Relaxation, load_preset
from workbench.dft.runner import RunOptions, queue_calculations, run_queued
from workbench.store.engine import make_engine, session_scope
from workbench.store.schema import (
    Calculation,
    CalculationAttempt,
    CalculationStatus,
    TargetDefinition,
)

EMT_BATCH = replace(BUILTIN_PRESETS["emt"], name="emt-batch", batch_size=3,
                    properties=("energy", "forces", "stress"))
UNIVERSAL = ("sevennet", "chgnet")
# Finite-difference step for the force check, Å.
STEP = 1e-3


def rattled_silicon() -> Atoms:
    atoms = bulk("Si")
    atoms.rattle(0.05, seed=3)
    return atoms


def oganesson() -> Atoms:
    """An element no universal model was trained on: its structure must fail alone."""
    return Atoms("Og", cell=np.eye(3) * 3.5, pbc=True)


def attempts_count(engine) -> int:
    with session_scope(engine) as session:
        return session.scalar(select(func.count()).select_from(CalculationAttempt))


# -- models that would need a download ----------------------------------------------------

def test_models_that_need_a_download_are_refused_by_name(tmp_path):
    with pytest.raises(PresetError, match="mace downloads its weights at run time"):
        load_preset("mace")
    with pytest.raises(PresetError, match="'7net-mf-ompa' is not inside the installed package"):
        Preset(name="omat", calculator="sevennet", parameters={"model": "7net-mf-ompa"})
    preset_file = tmp_path / "mattersim.yaml"
    preset_file.write_text("name: mattersim\ncalculator: mattersim.forcefield:MatterSimCalculator\n")
    with pytest.raises(PresetError, match="downloads its weights"):
        load_preset(str(preset_file))
    # The factories refuse too, before their package could fetch anything.
    with pytest.raises(PresetError, match="'7net-omat'"):
        universal.sevennet(model="7net-omat")
    assert load_preset("sevennet-l3i5").parameters["model"] == "7net-l3i5"
    assert all(BUILTIN_PRESETS[name].batch_size > 1 and not BUILTIN_PRESETS[name].dos for name in UNIVERSAL)


# -- batches with EMT, on both backends ----------------------------------------------------

@pytest.fixture
def options(tmp_path) -> RunOptions:
    return RunOptions(workdir=tmp_path / "dft", heartbeat_s=0.5)


def test_a_batch_records_a_failed_structure_alone_and_a_rerun_adds_nothing(engine, options):
    ids = store_crystals(engine, {"Cu3Au": cu3au(), "Cu": bulk("Cu", a=3.6), "Si": bulk("Si"),
                                  "Ni": bulk("Ni", a=3.52)})
    queue_calculations(engine, list(ids.values()), EMT_BATCH)
    report = run_queued(engine, EMT_BATCH, options)
    # EMT has no potential for Si: that structure (also silicon's reference) fails alone,
    # and its one crash retry (the emt preset's crash_retries) runs in a batch of its own.
    silicon, silicon_attempts = calculation_of(engine, ids["Si"], "emt-batch")
    assert report.failed == {silicon.id: "crash"}
    assert [attempt.reason for attempt in silicon_attempts] == ["crash", "crash"]
    assert "No EMT-potential for Si" in silicon_attempts[0].message
    alloy, alloy_attempts = calculation_of(engine, ids["Cu3Au"], "emt-batch")
    assert alloy.status is CalculationStatus.DONE and len(alloy_attempts) == 1
    assert alloy_attempts[0].parameters["batch"] and alloy_attempts[0].wall_time_s is not None
    # Cu3Au, Cu, Si, Ni and the reference Au: 5 structures in batches of 3, then the retry.
    batches = sorted((options.workdir / "emt-batch" / "batches").iterdir())
    assert len(batches) == 3 and len(report.done) == 4
    assert sorted(len(json.loads((batch / "batch.json").read_text())["items"]) for batch in batches) == [1, 2, 3]
    targets = targets_of(engine, ids["Cu3Au"])
    assert {"emt-batch.energy", "emt-batch.forces", "emt-batch.formation_energy_per_atom"} <= set(targets)
    assert targets["emt-batch.forces"].value_array.shape == (4, 3)

    attempts = attempts_count(engine)
    again = run_queued(engine, EMT_BATCH, options)
    assert not again.done and not again.failed and attempts_count(engine) == attempts


def test_a_batch_killed_at_its_limit_fails_only_the_structure_it_was_computing(engine, tmp_path):
    ids = store_crystals(engine, {"Cu": bulk("Cu", a=3.6), "Ni": bulk("Ni", a=3.52), "Al": bulk("Al", a=4.05)})
    # Too short for the process to start: each batch is killed during its first structure.
    options = RunOptions(workdir=tmp_path / "dft", heartbeat_s=0.5, wall_time_s=0.05)
    queue_calculations(engine, list(ids.values()), EMT_BATCH)
    report = run_queued(engine, EMT_BATCH, options, references=False)
    assert sorted(report.failed.values()) == ["timeout"] * 3
    for structure_id in ids.values():
        _, attempts = calculation_of(engine, structure_id, "emt-batch")
        # The structures a killed batch never started have no attempt: the next batch takes them.
        assert [attempt.reason for attempt in attempts] == ["timeout"]
    assert len(list((tmp_path / "dft" / "emt-batch" / "batches").iterdir())) == 3


# Long enough for a batch process to start and compute an isolated atom, even on a busy machine.
SHARED_LIMIT_S = 5.0


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_structure_the_others_left_no_time_is_blamed_only_for_a_limit_of_its_own(engine, tmp_path):
    # An isolated atom (no neighbour within EMT's cutoff) has no force: relaxed at once. The
    # rattled alloy never gets its forces to this fmax: it relaxes until its batch is killed.
    endless = replace(EMT_BATCH, name="emt-endless", dos=False,
                      relax=Relaxation(fmax=1e-150, steps=10**9, cell=False))
    alloy = cu3au()
    alloy.rattle(0.05, seed=1)
    ids = store_crystals(engine, {"atom": Atoms("Cu", cell=np.eye(3) * 12.0, pbc=True), "Cu3Au": alloy})
    (atom,) = queue_calculations(engine, [ids["atom"]], endless)
    (relaxing,) = queue_calculations(engine, [ids["Cu3Au"]], endless)
    options = RunOptions(workdir=tmp_path / "dft", heartbeat_s=0.5, wall_time_s=SHARED_LIMIT_S)
    report = run_queued(engine, endless, options, references=False)
    assert report.done == [atom] and report.failed == {relaxing: "timeout"}
    # Killed in the batch that computed the atom first, the alloy went to the next batch
    # without an attempt; killed there during its own limit, it failed.
    first, second = sorted((tmp_path / "dft" / "emt-endless" / "batches").iterdir())
    _, attempts = calculation_of(engine, ids["Cu3Au"], "emt-endless")
    assert [(attempt.reason, attempt.parameters["batch"]) for attempt in attempts] == [("timeout", str(second))]
    assert calculation_of(engine, ids["atom"], "emt-endless")[1][0].parameters["batch"] == str(first)


def test_a_calculator_that_cannot_be_built_fails_its_batch_with_the_reason(engine, options):
    ids = store_crystals(engine, {"Cu": bulk("Cu", a=3.6), "Ni": bulk("Ni", a=3.52)})
    broken = Preset(name="broken", calculator="ase.calculators.emt:NoSuchCalculator", spin="off",
                    dos=False, batch_size=10)
    queue_calculations(engine, list(ids.values()), broken)
    report = run_queued(engine, broken, options, references=False)
    assert sorted(report.failed.values()) == ["crash", "crash"]
    _, attempts = calculation_of(engine, ids["Cu"], "broken")
    assert "NoSuchCalculator" in attempts[0].message


def write_batch(folder, items: dict[str, str]) -> None:
    """A batch.json of one-atom EMT cells: ``{item folder: element}``."""
    folder.mkdir(parents=True, exist_ok=True)
    batch = {"calculator_path": "ase.calculators.emt:EMT", "parameters": {},
             "properties": ["energy", "forces", "stress"], "dos": False, "runner_pid": os.getpid(),
             "espresso_pseudo_dir": "", "espresso_command": "pw.x",
             "items": [{"calculation_id": n, "directory": directory,
                        "structure": {"symbols": [symbol], "cell": (np.eye(3) * 2.55).tolist(),
                                      "frac_coords": [[0.0, 0.0, 0.0]], "initial_magmoms": None}}
                       for n, (directory, symbol) in enumerate(items.items())]}
    (folder / "batch.json").write_text(json.dumps(batch))


def test_the_job_module_runs_a_batch_file(tmp_path):
    write_batch(tmp_path, {str(tmp_path / "Cu"): "Cu", str(tmp_path / "Si"): "Si", str(tmp_path / "Ni"): "Ni"})
    subprocess.run([sys.executable, "-m", "workbench.dft.job", str(tmp_path)], check=True)
    # Si fails alone; the structure after it is computed.
    assert (tmp_path / "Cu" / "result.json").is_file() and (tmp_path / "Ni" / "result.json").is_file()
    assert "Si" in json.loads((tmp_path / "Si" / "error.json").read_text())["message"]


def test_a_batch_result_written_before_its_worker_died_is_ingested(engine, options, tmp_path):
    ids = store_crystals(engine, {"Cu": bulk("Cu", a=3.6)})
    (calculation_id,) = queue_calculations(engine, [ids["Cu"]], EMT_BATCH)
    finished = tmp_path / "finished"
    write_batch(tmp_path / "batch", {str(finished): "Cu"})
    subprocess.run([sys.executable, "-m", "workbench.dft.job", str(tmp_path / "batch")], check=True)
    with session_scope(engine) as session:
        # Claimed by a worker on another host that stopped beating.
        session.execute(update(Calculation).where(Calculation.id == calculation_id).values(
            status=CalculationStatus.RUNNING, host="elsewhere", pid=1, heartbeat_at=None))
        session.add(CalculationAttempt(calculation_id=calculation_id, number=1, parameters={},
                                       status=CalculationStatus.RUNNING, workdir=str(finished)))
    report = run_queued(engine, EMT_BATCH, options, references=False)
    assert report.requeued == [calculation_id] and report.done == [calculation_id]
    _, attempts = calculation_of(engine, ids["Cu"], "emt-batch")
    assert [(attempt.number, attempt.status) for attempt in attempts] == [(1, CalculationStatus.DONE)]
    assert not (options.workdir / "emt-batch" / "batches").exists()
    assert targets_of(engine, ids["Cu"])["emt-batch.stress"].value_array.shape == (6,)


def test_run_options_batch_any_preset_whose_settings_fit_every_structure(engine, tmp_path):
    ids = store_crystals(engine, {"Cu": bulk("Cu", a=3.6), "Ni": bulk("Ni", a=3.52)})
    queue_calculations(engine, list(ids.values()), BUILTIN_PRESETS["emt"])
    report = run_queued(engine, BUILTIN_PRESETS["emt"], RunOptions(workdir=tmp_path, batch_size=5),
                        references=False)
    assert len(report.done) == 2 and len(list((tmp_path / "emt" / "batches").iterdir())) == 1
    with pytest.raises(PresetError, match="batch_size > 1 needs"):
        run_queued(engine, BUILTIN_PRESETS["gpaw-fast"], RunOptions(workdir=tmp_path, batch_size=5))


def test_cli_batch_size_option(run_cli, engine):
    ids = store_crystals(engine, {"Cu": bulk("Cu", a=3.6), "Ni": bulk("Ni", a=3.52)})
    shown = run_cli("dft", "run", "--preset", "emt", "--ids", f"{ids['Cu']},{ids['Ni']}",
                    "--batch-size", "10").output
    assert "batch of" in shown and "0 failed" in shown
    # GPAW's k-points follow the structure: one calculator cannot serve a batch.
    refused = run_cli("dft", "run", "--preset", "gpaw-fast", "--all", "--batch-size", "10", expect=2).output
    assert "batch_size > 1 needs" in refused
    assert "sevennet" in run_cli("dft", "presets").output


# -- the models themselves, once per module -------------------------------------------------

@pytest.fixture(scope="module")
def computed(sqlite_template, tmp_path_factory):
    """Every universal preset over Si (rattled), bcc Fe, Cu3Au and an Og cell, one batch each."""
    root = tmp_path_factory.mktemp("universal")
    shutil.copy(sqlite_template, root / "store.db")
    engine = make_engine(f"sqlite:///{root / 'store.db'}")
    ids = store_crystals(engine, {"Si": rattled_silicon(), "Fe": bulk("Fe"), "Cu3Au": cu3au(),
                                  "Og": oganesson()})
    reports = {}
    for name in UNIVERSAL:
        queue_calculations(engine, list(ids.values()), BUILTIN_PRESETS[name])
        reports[name] = run_queued(engine, BUILTIN_PRESETS[name], RunOptions(workdir=root / "dft"))
    yield engine, ids, reports, root
    engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("preset", UNIVERSAL)
def test_universal_presets_store_their_targets(computed, preset):
    engine, ids, reports, root = computed
    report = reports[preset]
    og, og_attempts = calculation_of(engine, ids["Og"], preset)
    # The structure the model cannot compute fails alone, in the same batch as the others.
    assert report.failed == {og.id: "crash"} and len(og_attempts) == 1
    assert len(list((root / "dft" / preset / "batches").iterdir())) == 1
    assert "Og" in report.references_missing
    for name in ("Si", "Fe", "Cu3Au"):
        targets = targets_of(engine, ids[name])
        natoms = len(targets[f"{preset}.forces"].value_array)
        assert np.isfinite(targets[f"{preset}.energy"].value)
        assert targets[f"{preset}.energy_per_atom"].value == pytest.approx(targets[f"{preset}.energy"].value / natoms)
        assert targets[f"{preset}.stress"].value_array.shape == (6,)
        assert f"{preset}.dos" not in targets
    # Silicon near its equilibrium: a few eV per atom bound, a small stress.
    silicon = targets_of(engine, ids["Si"])
    assert -6.0 < silicon[f"{preset}.energy_per_atom"].value < -4.0
    assert np.abs(silicon[f"{preset}.stress"].value_array).max() < 0.05
    with session_scope(engine) as session:
        stress = session.scalars(select(TargetDefinition).where(TargetDefinition.name == f"{preset}.stress")).one()
        assert stress.kind.value == "spectrum" and stress.length == 6 and "Voigt" in stress.grid_units


@pytest.mark.slow
@pytest.mark.parametrize("preset", UNIVERSAL)
def test_formation_energies_use_references_of_the_same_model(computed, preset):
    engine, ids, _, _ = computed
    with session_scope(engine) as session:
        rows = session.execute(select(Calculation.structure_id, Calculation.results).where(
            Calculation.preset == preset, Calculation.status == CalculationStatus.DONE)).all()
    per_atom = {structure_id: results["energy_per_atom"] for structure_id, results in rows}
    from workbench.dft.references import reference_structure_ids

    references, _ = reference_structure_ids(engine, {"Cu", "Au"})
    alloy = targets_of(engine, ids["Cu3Au"])
    expected = per_atom[ids["Cu3Au"]] - (3 * per_atom[references["Cu"]] + per_atom[references["Au"]]) / 4
    assert alloy[f"{preset}.formation_energy_per_atom"].value == pytest.approx(expected)
    # Cu3Au is a stable ordered alloy: weakly negative (PBE about -0.07 eV/atom).
    assert -0.3 < expected < 0.05


@pytest.mark.slow
def test_chgnet_moments_per_site(computed):
    engine, ids, _, _ = computed
    iron = targets_of(engine, ids["Fe"])
    assert iron["chgnet.magmoms"].value_array.shape == (1,)
    assert 1.5 < iron["chgnet.magmom_total"].value < 3.0
    silicon = targets_of(engine, ids["Si"])
    assert np.abs(silicon["chgnet.magmoms"].value_array).max() < 0.1
    assert "sevennet.magmoms" not in iron


@pytest.mark.slow
def test_a_rerun_computes_nothing_again(computed):
    engine, _, _, root = computed
    attempts = attempts_count(engine)
    for name in UNIVERSAL:
        again = run_queued(engine, BUILTIN_PRESETS[name], RunOptions(workdir=root / "dft"))
        assert not again.done and not again.failed and again.formation_energies == 0
    assert attempts_count(engine) == attempts


@pytest.mark.slow
@pytest.mark.parametrize("preset", UNIVERSAL)
def test_stored_forces_match_finite_differences(computed, preset):
    engine, ids, _, _ = computed
    forces = targets_of(engine, ids["Si"])[f"{preset}.forces"].value_array
    parameters = BUILTIN_PRESETS[preset].parameters
    calculator = getattr(universal, BUILTIN_PRESETS[preset].calculator)(**parameters)
    atoms = rattled_silicon()
    atoms.calc = calculator
    energies = []
    for sign in (1, -1):
        atoms.positions[0, 0] += sign * STEP
        energies.append(atoms.get_potential_energy())
        atoms.positions[0, 0] -= sign * STEP
    # float32 models: energies to about 1e-6 eV, so the difference to about 1e-3 eV/Å.
    assert -(energies[0] - energies[1]) / (2 * STEP) == pytest.approx(forces[0, 0], abs=0.02)
