"""The DFT runner's machinery with real processes and ASE's EMT, on both backends."""

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from tests.dft_helpers import calculation_of, count_rows, cu3au, store_crystals, targets_of
from workbench.dft.ingest import ingest_outputs
from workbench.dft.job import CALCULATOR_LOG, build_calculator
from workbench.dft.outputs import DOS_GRID, band_gaps, broadened_dos, electrons_below, standard_dos
from workbench.dft.presets import (
    BUILTIN_PRESETS,
    Preset,
    PresetError,
    load_preset,
    resolve_parameters,
)
from workbench.dft.runner import (
    RunOptions,
    job_record,
    queue_calculations,
    requeue_lost,
    retry_failed,
    run_attempt,
    run_queued,
    select_structures,
)
from workbench.errors import InputError, ReadOnlyViolation
from workbench.io.entries import Entry, Label
from workbench.io.importer import import_entries
from workbench.io.readers import ReadOptions
from workbench.store.engine import make_engine, session_scope
from workbench.store.queries import store_status
from workbench.store.schema import (
    Calculation,
    CalculationAttempt,
    CalculationStatus,
    TargetKind,
    TargetValue,
)
from workbench.structures.crystal import Crystal

EMT = BUILTIN_PRESETS["emt"]


@pytest.fixture
def options(tmp_path) -> RunOptions:
    return RunOptions(workdir=tmp_path / "dft", heartbeat_s=0.5)


def test_presets_from_names_and_files(tmp_path):
    assert load_preset("gpaw-fast").calculator == "gpaw"
    preset_file = tmp_path / "lj.yaml"
    preset_file.write_text("name: lj\ncalculator: ase.calculators.lj:LennardJones\n"
                           "parameters: {sigma: 2.3}\nspin: off\ndos: false\n")
    assert load_preset(str(preset_file)).parameters == {"sigma": 2.3}

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ncalculator: emt\nmax_atempts: 3\n")
    with pytest.raises(PresetError, match=r"bad.yaml: unknown preset fields \['max_atempts'\]"):
        load_preset(str(bad))
    bad.write_text("name: bad\ncalculator: NoSuchThing\n")
    with pytest.raises(PresetError, match="neither one of"):
        load_preset(str(bad))
    with pytest.raises(PresetError, match="unknown preset 'gpw'"):
        load_preset("gpw")


@pytest.mark.parametrize(("fields", "message"), [
    ("scf_ladder: {maxiter: 1000}", "scf_ladder must be a list of mappings"),
    ("relax: true", "relax must be a mapping or null"),
    ("properties: energy", "properties must be a list of names"),
    ("parameters: [1, 2]", "parameters must be a mapping"),
    ("max_attempts: four", "max_attempts must be an integer, not 'four'"),
    ("relax: {fmax: small}", "relax.fmax must be a number, not 'small'"),
    ("relax: {fmax: -1}", "relaxation fmax must be positive"),
    ("wall_time_s: 0", "wall_time_s and kpoint_density must be positive"),
])
def test_a_malformed_preset_file_is_refused_by_file_and_field(tmp_path, fields, message):
    preset_file = tmp_path / "malformed.yaml"
    preset_file.write_text(f"name: malformed\ncalculator: emt\n{fields}\n")
    with pytest.raises(PresetError, match=f"malformed.yaml: .*{message}"):
        load_preset(str(preset_file))


def test_a_calculator_spelled_by_its_import_path_is_set_up_the_same(tmp_path):
    gpaw = BUILTIN_PRESETS["gpaw-fast"]
    preset_file = tmp_path / "gpaw-path.yaml"
    preset_file.write_text(json.dumps(gpaw.to_dict() | {"name": "gpaw-path", "calculator": "gpaw:GPAW"}))
    spelled = load_preset(str(preset_file))
    for atoms in (bulk("Si"), bulk("Fe")):
        assert resolve_parameters(spelled, atoms) == resolve_parameters(gpaw, atoms)
    assert resolve_parameters(spelled, bulk("Fe"))["spinpol"] is True
    # Built as the job builds it (nothing computed): GPAW's log beside the job's files.
    build_calculator(job_record(spelled, Crystal.from_ase(bulk("Si")), 0, RunOptions(workdir=tmp_path)), tmp_path)
    assert (tmp_path / CALCULATOR_LOG).is_file()


def test_a_ladder_rung_that_sets_kpts_keeps_them():
    preset = Preset(name="lj", calculator="ase.calculators.lj:LennardJones", kpoint_density=2.0,
                    scf_ladder=({"kpts": [1, 1, 1]},), spin="off")
    assert resolve_parameters(preset, bulk("Cu"))["kpts"] != [1, 1, 1]
    assert resolve_parameters(preset, bulk("Cu"), rung=1)["kpts"] == [1, 1, 1]


def test_resolved_parameters_follow_the_structure():
    gpaw = BUILTIN_PRESETS["gpaw-fast"]
    silicon = resolve_parameters(gpaw, bulk("Si"))
    iron = resolve_parameters(gpaw, bulk("Fe"))
    assert "spinpol" not in silicon and iron["spinpol"] is True
    assert silicon["kpts"]["gamma"] and all(n >= 4 for n in silicon["kpts"]["size"])
    # Rung 2 of the ladder: damped mixing merged into the preset's parameters.
    damped = resolve_parameters(gpaw, bulk("Si"), rung=2)
    assert damped["mixer"]["beta"] == 0.02 and damped["mode"] == silicon["mode"]


def test_dos_and_gaps_from_eigenvalues():
    # Two bands at -1 and +1 eV, one k-point: integral per valence electron is 1 below E_F.
    eigenvalues = np.array([[[-1.0, 1.0]]])
    dos = standard_dos(eigenvalues, np.array([1.0]), fermi_level=0.0, valence_electrons=2.0)
    step = DOS_GRID[1] - DOS_GRID[0]
    assert dos.shape == (300,) and DOS_GRID[0] == -5.0 and step == pytest.approx(0.05)
    assert dos[DOS_GRID < 0].sum() * step == pytest.approx(1.0, rel=1e-3)
    assert broadened_dos(eigenvalues, np.array([1.0]), np.array([-1.0]))[0] > 0
    assert band_gaps(eigenvalues, 0.0) == pytest.approx((2.0, 2.0))
    assert electrons_below(eigenvalues, np.array([1.0]), 0.0) == 2.0


def test_emt_calculations_become_targets_once(engine, options):
    ids = store_crystals(engine, {"Cu3Au": cu3au(), "Cu": bulk("Cu", a=3.6)})
    queue_calculations(engine, [ids["Cu3Au"]], EMT)
    report = run_queued(engine, EMT, options)
    # The references (fcc Cu, fcc Au) run first; Cu from the test source is Cu's reference.
    assert len(report.done) == 3 and not report.failed
    assert report.formation_energies == 3

    targets = targets_of(engine, ids["Cu3Au"])
    assert {"emt.energy", "emt.energy_per_atom", "emt.forces", "emt.formation_energy_per_atom"} <= set(targets)
    assert targets["emt.forces"].value_array.shape == (4, 3)
    assert targets["emt.energy_per_atom"].value == pytest.approx(targets["emt.energy"].value / 4)
    calculation, attempts = calculation_of(engine, ids["Cu3Au"], "emt")
    assert calculation.status is CalculationStatus.DONE and calculation.parameters["name"] == "emt"
    assert [attempt.status for attempt in attempts] == [CalculationStatus.DONE]
    assert (options.workdir / "emt" / str(ids["Cu3Au"]) / "attempt-1" / "job.json").is_file()

    # Nothing done is computed again, however it is asked for.
    labels, tries = count_rows(engine, TargetValue), count_rows(engine, CalculationAttempt)
    assert select_structures(engine, "emt", every=True) == []
    queue_calculations(engine, list(ids.values()), EMT)
    again = run_queued(engine, EMT, options)
    assert again.done == [] and count_rows(engine, CalculationAttempt) == tries

    # Ingesting a done calculation a second time writes nothing.
    assert not ingest_outputs(engine, calculation.id, {"energy": 1.0, "natoms": 4},
                              {"forces": np.zeros((4, 3))}, wall_time_s=1.0)
    assert count_rows(engine, TargetValue) == labels


def test_crash_is_retried_once_then_retry_requeues(engine, options):
    ids = store_crystals(engine, {"Si": bulk("Si")})  # EMT has no potential for Si
    queue_calculations(engine, [ids["Si"]], EMT)
    report = run_queued(engine, EMT, options, references=False)
    assert report.failed == {calculation_of(engine, ids["Si"], "emt")[0].id: "crash"}
    calculation, attempts = calculation_of(engine, ids["Si"], "emt")
    assert [attempt.reason for attempt in attempts] == ["crash", "crash"]
    assert "No EMT-potential for Si" in attempts[0].message
    assert calculation.reason == "crash" and attempts[0].exit_code == 1

    assert retry_failed(engine, "emt", reasons=["scf"]) == []
    with pytest.raises(InputError, match=r"--reason.*unknown reasons \['scff'\]"):
        retry_failed(engine, "emt", reasons=["crash", "scff"])
    assert retry_failed(engine, "emt") == [calculation.id]
    run_queued(engine, EMT, options, references=False)
    _, attempts = calculation_of(engine, ids["Si"], "emt")
    assert [attempt.number for attempt in attempts] == [1, 2, 3, 4]


def test_where_is_read_only_and_selection_is_exact(engine):
    ids = store_crystals(engine, {"Cu": bulk("Cu", a=3.6), "Au": bulk("Au", a=4.1)})
    assert select_structures(engine, "emt", where="formula = 'Au1'") == [ids["Au"]]
    with pytest.raises(ReadOnlyViolation):
        select_structures(engine, "emt", where="1=1; DELETE FROM structures")
    with pytest.raises(ValueError, match="no structures with ids"):
        select_structures(engine, "emt", ids=[ids["Cu"], 999_999])


def test_lost_workers_are_requeued_by_pid_or_stale_heartbeat(engine):
    ids = store_crystals(engine, {"Cu": bulk("Cu", a=3.6), "Au": bulk("Au", a=4.1)})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = datetime.now(UTC)
    cu, au = queue_calculations(engine, [ids["Cu"], ids["Au"]], EMT)
    with session_scope(engine) as session:
        session.execute(update(Calculation).where(Calculation.id == cu).values(
            status=CalculationStatus.RUNNING, host=os.uname().nodename, pid=dead.pid, heartbeat_at=now))
        session.execute(update(Calculation).where(Calculation.id == au).values(
            status=CalculationStatus.RUNNING, host="another-host", pid=1, heartbeat_at=now))
    assert requeue_lost(engine, stale_after_s=60) == [cu]
    with session_scope(engine) as session:
        session.execute(update(Calculation).where(Calculation.id == au).values(
            heartbeat_at=now - timedelta(minutes=5)))
    assert requeue_lost(engine, stale_after_s=60) == [au]
    with session_scope(engine) as session:
        states = session.scalars(select(Calculation.status).where(Calculation.id.in_([cu, au]))).all()
    assert set(states) == {CalculationStatus.QUEUED}


def test_result_of_a_finished_job_is_ingested_not_recomputed(engine, options):
    """A worker that died after its job finished: the next run reads the job's folder."""
    ids = store_crystals(engine, {"Cu": bulk("Cu", a=3.6)})
    (calculation_id,) = queue_calculations(engine, [ids["Cu"]], EMT)
    directory = options.workdir / "finished"
    directory.mkdir(parents=True)
    job = {"calculator_path": "ase.calculators.emt:EMT", "parameters": {},
           "structure": {"symbols": ["Cu"], "cell": (np.eye(3) * 2.55).tolist(),
                         "frac_coords": [[0.0, 0.0, 0.0]], "initial_magmoms": None},
           "dos": False, "runner_pid": os.getpid(), "espresso_pseudo_dir": "",
           "espresso_command": "pw.x"}
    (directory / "job.json").write_text(json.dumps(job))
    subprocess.run([sys.executable, "-m", "workbench.dft.job", str(directory)], check=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with session_scope(engine) as session:
        session.execute(update(Calculation).where(Calculation.id == calculation_id).values(
            status=CalculationStatus.RUNNING, host=os.uname().nodename, pid=dead.pid,
            heartbeat_at=datetime.now(UTC)))
        session.add(CalculationAttempt(calculation_id=calculation_id, number=1, parameters={},
                                       status=CalculationStatus.RUNNING, workdir=str(directory)))
    report = run_queued(engine, EMT, options, references=False)
    assert report.requeued == [calculation_id] and report.done == [calculation_id]
    _, attempts = calculation_of(engine, ids["Cu"], "emt")
    assert [(attempt.number, attempt.status) for attempt in attempts] == [(1, CalculationStatus.DONE)]
    assert "emt.energy" in targets_of(engine, ids["Cu"])


def test_cli_runs_status_and_retry(run_cli, engine):
    ids = store_crystals(engine, {"Cu": bulk("Cu", a=3.6), "Si": bulk("Si")})
    run_cli("dft", "run", "--preset", "emt", "--ids", f"{ids['Cu']},{ids['Si']}", expect=2)
    shown = run_cli("dft", "status").output
    assert "done" in shown and "crash" in shown
    store = store_status(engine)  # the store's counts, in plain SQL
    assert store.calculations == {"done": 1, "failed": 1} and store.structures == 2
    assert store.sources == {"elemental-reference": 2, "test": 2} and store.targets["emt.energy"] == 1
    assert "unknown reasons ['scff']" in run_cli("dft", "retry", "--preset", "emt", "--reason", "scff",
                                                  expect=1).output
    run_cli("dft", "retry", "--preset", "emt", "--reason", "crash", expect=2)
    silicon, _ = calculation_of(engine, ids["Si"], "emt")
    shown = run_cli("dft", "show", silicon.id).output
    assert "No EMT-potential for Si" in shown and "crash" in shown
    run_cli("dft", "show", 999_999, expect=1)
    run_cli("dft", "run", "--preset", "emt", "--ids", "1", "--all", expect=2)
    assert "gpaw-fast" in run_cli("dft", "presets").output


def test_parallel_calculations_define_their_targets_once(engine, tmp_path):
    ids = store_crystals(engine, {"Cu": bulk("Cu", a=3.6), "Au": bulk("Au", a=4.1),
                                  "Al": bulk("Al", a=4.05), "Ni": bulk("Ni", a=3.52)})
    queue_calculations(engine, list(ids.values()), EMT)
    report = run_queued(engine, EMT, RunOptions(workdir=tmp_path / "dft", jobs=4), references=False)
    assert len(report.done) == 4 and not report.failed
    # ASE's EMT implements moments (all zero), so the spin-restricted run records 0.
    assert {name for name in targets_of(engine, ids["Ni"])} == {
        "emt.energy", "emt.energy_per_atom", "emt.forces", "emt.magmom_total"}


def test_a_result_contradicting_a_stored_value_fails_its_calculation_alone(engine, options):
    """An imported ``emt.energy_per_atom`` the computed one would contradict: that
    calculation fails with reason ``conflict``, the others are done, none stays running,
    and a retry ingests the finished job again instead of recomputing it."""
    imported = Entry(row="Cu", external_id="Cu", crystal=Crystal.from_ase(bulk("Cu", a=3.6)),
                     labels={"emt.energy_per_atom": Label(TargetKind.SCALAR, -1.0, "eV/atom")})
    import_entries(engine, [imported], source="test", file="mine.csv", options=ReadOptions())
    ids = store_crystals(engine, {"Ni": bulk("Ni", a=3.52)})
    copper, nickel = queue_calculations(engine, [ids["Cu"], ids["Ni"]], EMT)
    report = run_queued(engine, EMT, options, references=False)
    assert report.done == [nickel] and report.failed == {copper: "conflict"}
    calculation, attempts = calculation_of(engine, ids["Cu"], "emt")
    assert calculation.status is CalculationStatus.FAILED
    assert [(attempt.status, attempt.reason) for attempt in attempts] == [(CalculationStatus.FAILED, "conflict")]
    assert "mine.csv" in attempts[0].message
    assert targets_of(engine, ids["Cu"])["emt.energy_per_atom"].value == -1.0
    assert requeue_lost(engine, stale_after_s=0) == []

    assert retry_failed(engine, "emt", reasons=["conflict"]) == [copper]
    again = run_queued(engine, EMT, options, references=False)
    assert again.failed == {copper: "conflict"} and len(calculation_of(engine, ids["Cu"], "emt")[1]) == 1


@pytest.mark.parametrize("batch_size", [None, 2])
def test_a_runner_error_after_the_claim_fails_the_calculation_instead_of_leaving_it_running(
        engine, tmp_path, batch_size):
    ids = store_crystals(engine, {"Cu": bulk("Cu", a=3.6)})
    (calculation_id,) = queue_calculations(engine, [ids["Cu"]], EMT)
    not_a_folder = tmp_path / "dft"
    not_a_folder.write_text("")
    with pytest.raises(NotADirectoryError):
        run_queued(engine, EMT, RunOptions(workdir=not_a_folder, batch_size=batch_size), references=False)
    calculation, attempts = calculation_of(engine, ids["Cu"], "emt")
    assert (calculation.status, calculation.reason) == (CalculationStatus.FAILED, "crash")
    assert all(attempt.status is CalculationStatus.FAILED and "NotADirectoryError" in attempt.message
               for attempt in attempts)
    assert requeue_lost(engine, stale_after_s=0) == []
    # With a folder to work in, a retry computes it.
    assert retry_failed(engine, "emt") == [calculation_id]
    report = run_queued(engine, EMT, RunOptions(workdir=tmp_path / "work", batch_size=batch_size),
                        references=False)
    assert report.done == [calculation_id]


def job_processes(directory) -> list[int]:
    """Pids of the live processes whose command line names ``directory``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(directory).encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended meanwhile
            continue
    return pids


def test_a_job_is_killed_when_its_runner_fails_while_it_runs(tmp_path):
    """A heartbeat that cannot reach the store raises in the runner: the job's process
    group goes with it instead of computing on beside the attempt that replaces it."""
    broken = make_engine(f"sqlite:///{tmp_path / 'unmigrated.db'}")  # no tables: every write fails

    def heartbeat() -> None:
        with session_scope(broken) as session:
            session.execute(update(Calculation).values(heartbeat_at=datetime.now(UTC)))

    directory = tmp_path / "attempt-1"
    record = job_record(EMT, Crystal.from_ase(bulk("Cu", a=3.6)), 0, RunOptions(workdir=tmp_path))
    with pytest.raises(OperationalError):
        run_attempt(directory, record, threads=1, wall_time_s=60.0, heartbeat_s=0.01, heartbeat=heartbeat)
    assert job_processes(directory) == []
    broken.dispose()
