"""Named calculator presets: which ASE calculator, with which parameters, retried how.

A preset is plain data (JSON-able), stored with every calculation. The built-in presets
are listed in :data:`BUILTIN_PRESETS`; any other ASE calculator is reached through a
YAML or JSON preset file naming its import path::

    name: lj-argon
    calculator: ase.calculators.lj:LennardJones
    parameters: {sigma: 3.4, epsilon: 0.0104}

:func:`resolve_parameters` turns a preset and a structure into the full keyword
arguments of one attempt (k-point mesh from the k-point density, spin polarisation and
initial moments), which the runner records before it starts the calculation.

Universal interatomic potentials (SevenNet, CHGNet) are calculators like any other; their
presets name a model whose weights ship inside the installed package, and compute many
structures per worker process (``batch_size``). A model that would be downloaded at run
time is refused with a :class:`PresetError`, never fetched.

A relaxation is a task of a preset: :func:`relax_preset` derives ``<preset>-relax`` (the
same calculator and settings, with a :class:`Relaxation`), so that a relaxation is its own
calculation per structure, its targets are ``<preset>-relax.<quantity>`` and never mix
with the single points of ``<preset>``.
"""

import typing
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path

import numpy as np
import yaml
from ase import Atoms
from ase.calculators.calculator import kptdensity2monkhorstpack

from workbench.dft.job import DFT_PROPERTIES, PROPERTY_EXTRACTORS, calculator_spec
from workbench.errors import WorkbenchError

# Short names of calculators; anything else is "module:Class". What the workbench does
# differently for a calculator is its entry in workbench.dft.job.CALCULATORS, by path.
CALCULATOR_PATHS = {
    "gpaw": "gpaw:GPAW",
    "emt": "ase.calculators.emt:EMT",
    "espresso": "ase.calculators.espresso:Espresso",
    "vasp": "ase.calculators.vasp:Vasp",
    "sevennet": "workbench.dft.universal:sevennet",
    "chgnet": "workbench.dft.universal:chgnet",
}
# Models whose weights ship inside the calculator's package, so they load with no network:
# the values of the preset parameter ``model`` (the first is the calculator factories'
# default, workbench.dft.universal). Any other is refused.
OFFLINE_MODELS = {
    "sevennet": ("7net-0", "7net-0_22may2024", "7net-l3i5"),
    "chgnet": ("0.3.0", "0.2.0", "r2scan"),
}
# Universal potentials that download their weights at run time: name -> package (module).
DOWNLOADING_MODELS = {
    "mace": "mace", "mattersim": "mattersim", "orb": "orb_models", "fairchem": "fairchem",
    "matgl": "matgl",
}
# Spin handling: "auto" polarises when a magnetic element is present.
SPIN_MODES = ("auto", "on", "off")


class PresetError(WorkbenchError, ValueError):
    """A preset that cannot be used, named in the message."""


# What a preset file may hold for a field of each scalar type (YAML reads 5 as an integer).
SCALAR_TYPES = {
    int: ((int,), "an integer"), float: ((int, float), "a number"),
    float | None: ((int, float, type(None)), "a number or null"), bool: ((bool,), "true or false"),
    str: ((str,), "a string"),
}


def _wrong_types(cls: type, record: dict, prefix: str = "") -> list[str]:
    """Why each scalar field of ``record`` (fields of the dataclass ``cls``) is not of its type."""
    hints = typing.get_type_hints(cls)
    return [f"{prefix}{name} must be {SCALAR_TYPES[hints[name]][1]}, not {value!r}"
            for name, value in record.items()
            if hints[name] in SCALAR_TYPES and not isinstance(value, SCALAR_TYPES[hints[name]][0])]


# ASE optimisers a relaxation may use, by their class name in ase.optimize.
RELAX_OPTIMIZERS = ("FIRE", "BFGS", "LBFGS", "BFGSLineSearch")
RELAX_SUFFIX = "-relax"


@dataclass(frozen=True)
class Relaxation:
    """How a relax preset moves atoms (and cell) before its final single point.

    Attributes:
        fmax: converged when the largest force is below this, eV/Å (with ``cell``, the
            cell's stress times volume counts as a force, ASE's ``FrechetCellFilter``).
        steps: optimiser steps at most; a relaxation that reaches it is stored with
            ``converged: false``.
        cell: whether the cell relaxes with the atoms.
        optimizer: a class of ``ase.optimize``, one of :data:`RELAX_OPTIMIZERS`.
    """

    fmax: float = 0.05
    steps: int = 300
    cell: bool = True
    optimizer: str = "FIRE"

    def __post_init__(self) -> None:
        if not self.fmax > 0:
            raise PresetError(f"relaxation fmax must be positive, not {self.fmax}")
        if self.steps < 1:
            raise PresetError(f"relaxation steps must be at least 1, not {self.steps}")
        if self.optimizer not in RELAX_OPTIMIZERS:
            raise PresetError(f"relaxation optimizer {self.optimizer!r} is not one of {RELAX_OPTIMIZERS}")

    def label(self) -> str:
        """The part of a relax preset's name that tells non-default settings apart."""
        default = Relaxation()
        parts = [f"{name}{getattr(self, name):g}" for name in ("fmax", "steps")
                 if getattr(self, name) != getattr(default, name)]
        if not self.cell:
            parts.append("fixed-cell")
        if self.optimizer != default.optimizer:
            parts.append(self.optimizer.lower())
        return "-".join(parts)


@dataclass(frozen=True)
class Preset:
    """How to compute one structure.

    Attributes:
        name: the name stored with each calculation; a different setting needs a new name.
        calculator: a key of :data:`CALCULATOR_PATHS` or an import path ``module:Class``.
        parameters: keyword arguments of the calculator (JSON-able).
        kpoint_density: k-points per Å⁻¹ of reciprocal length (ASE's convention); ``None``
            leaves ``kpts`` to ``parameters``.
        spin: ``auto``, ``on`` or ``off``; ``auto`` polarises structures holding an element
            of :func:`magnetic_moments`, starting from those moments.
        scf_ladder: parameter overrides tried in turn after SCF non-convergence; each rung
            is merged into the parameters of the first attempt.
        max_attempts: attempts per calculation, all reasons together.
        crash_retries: how often a crashed attempt is tried again unchanged.
        retry_timeouts: whether a timed-out attempt is tried again.
        wall_time_s: default wall-time limit of one attempt.
        dos: whether the job extracts eigenvalues for the DOS and the band gap.
        properties: what the job asks of the calculator, keys of
            :data:`workbench.dft.job.PROPERTY_EXTRACTORS`: ``energy``, ``forces``,
            ``stress``, ``spin`` (a DFT code's spin-polarised moments, started from
            ``spin``'s initial moments) or ``magmoms`` (moments a model predicts for
            every structure).
        batch_size: structures computed by one worker process, which builds the
            calculator once (a model's weights load once); 1 runs each attempt as its own
            process. ``wall_time_s`` then limits the whole batch.
        description: one line for ``workbench dft presets``.
        relax: ``None`` for a single point on the stored geometry; a :class:`Relaxation`
            relaxes first, stores the relaxed structure and puts the targets on it.
    """

    name: str
    calculator: str
    parameters: dict = field(default_factory=dict)
    kpoint_density: float | None = None
    spin: str = "auto"
    scf_ladder: tuple[dict, ...] = ()
    max_attempts: int = 4
    crash_retries: int = 1
    retry_timeouts: bool = False
    wall_time_s: float = 3600.0
    dos: bool = True
    properties: tuple[str, ...] = DFT_PROPERTIES
    batch_size: int = 1
    description: str = ""
    relax: Relaxation | None = None

    def __post_init__(self) -> None:
        if self.spin not in SPIN_MODES:
            raise PresetError(f"preset {self.name!r}: spin must be one of {SPIN_MODES}, not {self.spin!r}")
        if self.max_attempts < 1:
            raise PresetError(f"preset {self.name!r}: max_attempts must be at least 1")
        if not self.wall_time_s > 0 or (self.kpoint_density is not None and not self.kpoint_density > 0):
            raise PresetError(f"preset {self.name!r}: wall_time_s and kpoint_density must be positive")
        unknown = sorted(set(self.properties) - set(PROPERTY_EXTRACTORS))
        if unknown or "energy" not in self.properties:
            raise PresetError(f"preset {self.name!r}: properties must include 'energy' and come from "
                              f"{sorted(PROPERTY_EXTRACTORS)}; unknown: {unknown}")
        if self.batch_size < 1:
            raise PresetError(f"preset {self.name!r}: batch_size must be at least 1")
        if self.batch_size > 1 and (self.kpoint_density is not None or self.scf_ladder):
            # A batch shares one calculator: its settings cannot depend on the structure.
            raise PresetError(f"preset {self.name!r}: batch_size > 1 needs the same calculator settings "
                              "for every structure (no kpoint_density, no scf_ladder)")
        calculator_path(self)
        check_offline(self)

    def to_dict(self) -> dict:
        record = asdict(self)
        record["scf_ladder"] = list(self.scf_ladder)
        record["properties"] = list(self.properties)
        return record

    @classmethod
    def from_dict(cls, record: dict, *, origin: str = "preset") -> "Preset":
        known = set(cls.__dataclass_fields__)
        unknown = set(record) - known
        if unknown:
            raise PresetError(f"{origin}: unknown preset fields {sorted(unknown)}")
        if "name" not in record or "calculator" not in record:
            raise PresetError(f"{origin}: a preset needs 'name' and 'calculator'")
        record = dict(record)
        if isinstance(record.get("spin"), bool):  # YAML reads a bare on/off as a boolean
            record["spin"] = "on" if record["spin"] else "off"
        ladder, relax, properties = record.get("scf_ladder") or [], record.get("relax"), record.get("properties", [])
        unknown = set(relax) - set(Relaxation.__dataclass_fields__) if isinstance(relax, dict) else set()
        if unknown:
            raise PresetError(f"{origin}: unknown relax fields {sorted(unknown)}")
        # A field of another shape or type would pass here and fail in the runner, naming no file.
        shapes = {
            "parameters": (isinstance(record.get("parameters", {}), dict), "a mapping"),
            "scf_ladder": (isinstance(ladder, list | tuple) and all(isinstance(rung, dict) for rung in ladder),
                           "a list of mappings"),
            "relax": (relax is None or isinstance(relax, dict), "a mapping or null"),
            "properties": (isinstance(properties, list | tuple) and all(isinstance(name, str) for name in properties),
                           "a list of names"),
        }
        wrong = [f"{name} must be {shape}" for name, (right, shape) in shapes.items() if not right]
        wrong += _wrong_types(cls, record) + (_wrong_types(Relaxation, relax, "relax.") if isinstance(relax, dict) else [])
        if wrong:
            raise PresetError(f"{origin}: {'; '.join(wrong)}")
        record["scf_ladder"] = tuple(ladder)
        if "properties" in record:
            record["properties"] = tuple(properties)
        try:
            if relax is not None:
                record["relax"] = Relaxation(**relax)
            return cls(**record)
        except PresetError as error:
            raise PresetError(f"{origin}: {error}") from None


def calculator_path(preset: Preset) -> tuple[str, str]:
    """``(module, class name)`` of the preset's calculator."""
    path = CALCULATOR_PATHS.get(preset.calculator, preset.calculator)
    module, _, class_name = path.partition(":")
    if not module or not class_name:
        raise PresetError(
            f"preset {preset.name!r}: calculator {preset.calculator!r} is neither one of "
            f"{sorted(CALCULATOR_PATHS)} nor an import path 'module:Class'"
        )
    return module, class_name


def check_offline(preset: Preset) -> None:
    """Refuse a universal model whose weights would be downloaded at run time."""
    module, _ = calculator_path(preset)
    if preset.calculator in DOWNLOADING_MODELS or module.partition(".")[0] in DOWNLOADING_MODELS.values():
        raise PresetError(f"preset {preset.name!r}: {_downloads(preset.calculator)}")
    try:
        check_offline_model(preset.calculator, preset.parameters.get("model"))
    except PresetError as error:
        raise PresetError(f"preset {preset.name!r}: {error}") from None


def check_offline_model(calculator: str, model: object) -> None:
    """Refuse a ``model`` of the universal ``calculator`` whose weights are not inside its
    installed package; any other calculator passes."""
    offline = OFFLINE_MODELS.get(calculator)
    if offline is not None and model not in offline:
        raise PresetError(f"{calculator} model {model!r} is not inside the installed package and would need a "
                          f"download; offline models: {_offline_listing()}")


def _downloads(model: str) -> str:
    return (f"{model} downloads its weights at run time, which the workbench never does; "
            f"offline models: {_offline_listing()}")


def _offline_listing() -> str:
    return "; ".join(f"{calculator} {', '.join(models)}" for calculator, models in OFFLINE_MODELS.items())


# A batch spreads the model's loading (10-40 s with torch's import) over 1,000 single
# points: 3-4 CPU minutes for 5-atom cells (benchmarks/universal.md).
UNIVERSAL_BATCH_SIZE = 1000
UNIVERSAL_BATCH_WALL_TIME_S = 3600.0


def universal_preset(name: str, calculator: str, model: str, description: str, *,
                     properties: tuple[str, ...] = ("energy", "forces", "stress")) -> Preset:
    """A preset of a universal potential: one model, single points, batches of structures."""
    return Preset(
        name=name, calculator=calculator, parameters={"model": model, "device": "auto"},
        spin="off", dos=False, properties=properties, batch_size=UNIVERSAL_BATCH_SIZE,
        # A model's failure on a structure is deterministic: trying it again changes nothing.
        max_attempts=1, crash_retries=0, wall_time_s=UNIVERSAL_BATCH_WALL_TIME_S, description=description,
    )


# A relaxation is some 50-300 single points: smaller batches keep a batch within its wall time.
RELAX_BATCH_SIZE = 50


def relax_preset(preset: Preset, relaxation: Relaxation | None = None) -> Preset:
    """``preset`` as a relaxation (default settings unless ``relaxation``): named
    ``<preset>-relax`` plus the non-default settings (``emt-relax-fmax0.01-fixed-cell``),
    no DOS (a static stage computes it)."""
    relaxation = relaxation or Relaxation()
    if preset.relax is not None:
        raise PresetError(f"preset {preset.name!r} is a relaxation already")
    label = relaxation.label()
    return replace(
        preset, name=f"{preset.name}{RELAX_SUFFIX}{'-' + label if label else ''}", relax=relaxation, dos=False,
        batch_size=min(preset.batch_size, RELAX_BATCH_SIZE),
        description=f"{preset.name} relaxation (fmax {relaxation.fmax:g} eV/Å, at most {relaxation.steps} steps, "
                    f"{'cell relaxed' if relaxation.cell else 'fixed cell'}, {relaxation.optimizer})",
    )


# Smearing and SCF ladders shared by the GPAW presets. GPAW takes dicts for mode and
# occupations, so the parameters stay JSON.
_GPAW_LADDER = (
    {"maxiter": 1000},
    {"maxiter": 1000, "mixer": {"beta": 0.02, "nmaxold": 5, "weight": 100.0}},
    {"maxiter": 1000, "mixer": {"beta": 0.02, "nmaxold": 5, "weight": 100.0},
     "occupations": {"name": "fermi-dirac", "width": 0.2}},
)

BUILTIN_PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="gpaw",
            calculator="gpaw",
            parameters={
                "mode": {"name": "pw", "ecut": 520.0},
                "xc": "PBE",
                "occupations": {"name": "fermi-dirac", "width": 0.05},
                "convergence": {"energy": 1e-5},
                "maxiter": 333,
            },
            kpoint_density=5.0,
            scf_ladder=_GPAW_LADDER,
            wall_time_s=6 * 3600.0,
            description="GPAW plane waves 520 eV, PBE, k-points 5/Å⁻¹, Fermi-Dirac 0.05 eV",
        ),
        Preset(
            name="gpaw-fast",
            calculator="gpaw",
            parameters={
                "mode": {"name": "pw", "ecut": 300.0},
                "xc": "PBE",
                "occupations": {"name": "fermi-dirac", "width": 0.1},
                "convergence": {"energy": 1e-4, "density": 1e-3},
                "maxiter": 333,
            },
            kpoint_density=2.5,
            scf_ladder=_GPAW_LADDER,
            wall_time_s=1800.0,
            description="GPAW plane waves 300 eV, PBE, k-points 2.5/Å⁻¹: demos and tests",
        ),
        Preset(
            name="emt",
            calculator="emt",
            spin="off",
            dos=False,
            wall_time_s=300.0,
            description="ASE's EMT (Al, Cu, Ag, Au, Ni, Pd, Pt, H, C, N, O): tests of the machinery",
        ),
        Preset(
            name="espresso",
            calculator="espresso",
            parameters={
                "input_data": {
                    # verbosity high: pw.x prints no eigenvalues beyond 100 k-points otherwise.
                    "control": {"calculation": "scf", "tprnfor": True, "verbosity": "high"},
                    "system": {"ecutwfc": 45.0, "ecutrho": 360.0, "occupations": "smearing",
                               "smearing": "gaussian", "degauss": 0.01},
                    "electrons": {"conv_thr": 1e-8, "electron_maxstep": 200},
                },
            },
            kpoint_density=5.0,
            spin="off",
            scf_ladder=(
                {"input_data": {"electrons": {"electron_maxstep": 500, "mixing_beta": 0.3,
                                              "diagonalization": "cg"}}},
                {"input_data": {"electrons": {"electron_maxstep": 500, "mixing_beta": 0.1,
                                              "diagonalization": "cg"},
                                "system": {"degauss": 0.03}}},
            ),
            wall_time_s=6 * 3600.0,
            description="Quantum ESPRESSO pw.x, 45/360 Ry, k-points 5/Å⁻¹; WORKBENCH_ESPRESSO_PSEUDO_DIR",
        ),
        Preset(
            name="vasp",
            calculator="vasp",
            parameters={"xc": "PBE", "encut": 520, "ismear": 0, "sigma": 0.05, "ediff": 1e-6,
                        "lorbit": 11, "nelm": 200},
            kpoint_density=5.0,
            scf_ladder=({"nelm": 500, "algo": "All"}, {"nelm": 500, "algo": "All", "sigma": 0.1}),
            wall_time_s=6 * 3600.0,
            description="VASP through ASE (needs VASP_PP_PATH and ASE_VASP_COMMAND); not run here",
        ),
        universal_preset("sevennet", "sevennet", "7net-0",
                         "SevenNet-0 universal potential (MPtrj, raw PBE/PBE+U energies), batches"),
        universal_preset("sevennet-l3i5", "sevennet", "7net-l3i5",
                         "SevenNet-l3i5 universal potential (MPtrj, raw PBE/PBE+U energies), batches"),
        universal_preset("chgnet", "chgnet", "0.3.0",
                         "CHGNet 0.3.0 universal potential (MP2020-corrected energies, site moments), batches",
                         properties=("energy", "forces", "stress", "magmoms")),
    )
}


def load_preset(name_or_file: str) -> Preset:
    """A built-in preset by name, or the preset in a YAML/JSON file."""
    if name_or_file in BUILTIN_PRESETS:
        return BUILTIN_PRESETS[name_or_file]
    if name_or_file.endswith(RELAX_SUFFIX) and name_or_file.removesuffix(RELAX_SUFFIX) in BUILTIN_PRESETS:
        return relax_preset(BUILTIN_PRESETS[name_or_file.removesuffix(RELAX_SUFFIX)])
    if name_or_file.lower() in DOWNLOADING_MODELS:
        raise PresetError(f"no preset {name_or_file!r}: {_downloads(name_or_file)}")
    path = Path(name_or_file)
    if path.suffix.lower() in {".yaml", ".yml", ".json"}:
        if not path.is_file():
            raise PresetError(f"preset file {path} does not exist")
        try:
            record = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise PresetError(f"{path}: not valid YAML/JSON: {error}") from error
        if not isinstance(record, dict):
            raise PresetError(f"{path}: a preset file holds one mapping")
        return Preset.from_dict(record, origin=str(path))
    raise PresetError(
        f"unknown preset {name_or_file!r}: use one of {sorted(BUILTIN_PRESETS)} "
        "or a .yaml/.json preset file"
    )


@cache
def magnetic_moments() -> dict[str, float]:
    """Materials Project's initial moments (pymatgen's MPRelaxSet), bare elements only."""
    from pymatgen.io.vasp.sets import MPRelaxSet

    table = MPRelaxSet.CONFIG["INCAR"]["MAGMOM"]
    return {key: float(value) for key, value in table.items() if key.isalpha()}


# Moment given to the other atoms of a spin-polarised structure (as in MPRelaxSet).
DEFAULT_INITIAL_MOMENT = 0.6


def initial_moments(atoms: Atoms, spin: str) -> np.ndarray | None:
    """Initial magnetic moments for a spin-polarised run, or ``None`` for a closed shell."""
    symbols = atoms.get_chemical_symbols()
    table = magnetic_moments()
    if spin == "off" or (spin == "auto" and not any(s in table for s in symbols)):
        return None
    return np.array([table.get(s, DEFAULT_INITIAL_MOMENT) for s in symbols])


def merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in, nested dicts merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_parameters(preset: Preset, atoms: Atoms, rung: int = 0) -> dict:
    """The calculator's keyword arguments for this structure at ladder rung ``rung``.

    Rung 0 is the preset itself; rung ``r`` merges ``scf_ladder[r - 1]``.
    """
    spec = calculator_spec(":".join(calculator_path(preset)))
    parameters = dict(preset.parameters)
    if rung:
        parameters = merge(parameters, preset.scf_ladder[rung - 1])
    if preset.kpoint_density is not None and "kpts" not in parameters:
        mesh = kptdensity2monkhorstpack(atoms, preset.kpoint_density, even=False)
        mesh = [int(n) if periodic else 1 for n, periodic in zip(mesh, atoms.pbc)]
        parameters["kpts"] = {"size": mesh, "gamma": True} if spec.gamma_kpts else mesh
    if spec.spin_flag is not None and initial_moments(atoms, preset.spin) is not None:
        parameters[spec.spin_flag] = True
    return parameters

