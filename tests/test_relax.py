"""Relaxations through the DFT runner: EMT on both backends, a universal model in a batch."""

import json
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.eos import EquationOfState
from sqlalchemy import event, select

from tests.dft_helpers import calculation_of, count_rows, cu3au, store_crystals, targets_of
from workbench.dft.ingest import add_formation_energies
from workbench.dft.presets import (
    BUILTIN_PRESETS,
    PresetError,
    Relaxation,
    load_preset,
    relax_preset,
)
from workbench.dft.relaxation import RELAXATION_SOURCE
from workbench.dft.runner import RunOptions, queue_calculations, run_queued
from workbench.store.engine import session_scope
from workbench.store.schema import Structure, StructureLineage, StructureSource
from workbench.store.types import arrays_from_bytes

EMT_RELAX = relax_preset(BUILTIN_PRESETS["emt"])
# Strained well past the store's identity tolerance (5 % on neighbour distances), so
# that the relaxed cell is a structure of its own.
STRAINED_A = 4.05


@pytest.fixture
def options(tmp_path) -> RunOptions:
    return RunOptions(workdir=tmp_path / "dft", heartbeat_s=0.5)


def emt_equilibrium_a() -> float:
    """Cu3Au's cubic lattice parameter at EMT's energy minimum, from an equation of state."""
    volumes, energies = [], []
    for scale in np.linspace(0.97, 1.03, 7):
        atoms = cu3au()
        atoms.set_cell(atoms.cell * scale, scale_atoms=True)
        atoms.calc = EMT()
        volumes.append(atoms.get_volume())
        energies.append(atoms.get_potential_energy())
    volume, _, _ = EquationOfState(volumes, energies).fit()
    return volume ** (1 / 3)


def strained_cu3au(a: float = STRAINED_A, rattle: float = 0.03):
    atoms = cu3au()
    atoms.set_cell(np.eye(3) * a, scale_atoms=True)
    if rattle:
        atoms.rattle(rattle, seed=1)
    return atoms


def lineage_of(engine, structure_id: int) -> list[StructureLineage]:
    with session_scope(engine) as session:
        return list(session.scalars(select(StructureLineage).where(StructureLineage.structure_id == structure_id)))


def lattice_of(engine, structure_id: int) -> np.ndarray:
    with session_scope(engine) as session:
        return np.asarray(session.get(Structure, structure_id).lattice)


def test_relax_presets_are_named_by_their_settings():
    assert EMT_RELAX.name == "emt-relax" and EMT_RELAX.relax == Relaxation()
    assert load_preset("emt-relax") == EMT_RELAX
    custom = relax_preset(BUILTIN_PRESETS["emt"], Relaxation(fmax=0.01, cell=False))
    assert custom.name == "emt-relax-fmax0.01-fixed-cell"
    assert relax_preset(BUILTIN_PRESETS["chgnet"]).batch_size <= 50
    # The relaxation settings travel with the preset stored on each calculation.
    assert type(EMT_RELAX).from_dict(EMT_RELAX.to_dict()) == EMT_RELAX
    with pytest.raises(PresetError, match="optimizer 'CG' is not one of"):
        Relaxation(optimizer="CG")
    with pytest.raises(PresetError, match="is a relaxation already"):
        relax_preset(EMT_RELAX)


def test_emt_relaxation_stores_the_relaxed_structure(engine, options):
    ids = store_crystals(engine, {"strained": strained_cu3au()})
    parent = ids["strained"]
    [calculation_id] = queue_calculations(engine, [parent], EMT_RELAX)
    report = run_queued(engine, EMT_RELAX, options)
    assert calculation_id in report.done and not report.failed

    calculation, attempts = calculation_of(engine, parent, "emt-relax")
    relaxation = calculation.results["relaxation"]
    assert relaxation["converged"] and 0 < relaxation["steps"] < EMT_RELAX.relax.steps
    assert relaxation["fmax"] < EMT_RELAX.relax.fmax
    relaxed = relaxation["structure_id"]
    assert relaxed != parent

    # The cell moved from 4.05 Å to EMT's equilibrium.
    volume = abs(np.linalg.det(lattice_of(engine, relaxed)))
    assert volume ** (1 / 3) == pytest.approx(emt_equilibrium_a(), abs=0.01)

    # Linked to the structure it came from, stored under the relaxation source.
    [link] = lineage_of(engine, relaxed)
    assert link.parent_id == parent and link.kind.value == "relaxation"
    assert link.detail == {"preset": "emt-relax", "calculation_id": calculation.id,
                           "steps": relaxation["steps"], "converged": True}
    with session_scope(engine) as session:
        sources = session.execute(select(StructureSource.source, StructureSource.external_id)
                                  .where(StructureSource.structure_id == relaxed)).all()
    assert sources == [(RELAXATION_SOURCE, f"emt-relax:{parent}")]

    # Targets at the relaxation's level on the relaxed structure, none on the parent.
    targets = targets_of(engine, relaxed)
    assert targets["emt-relax.energy"].value == pytest.approx(calculation.results["energy"])
    assert targets["emt-relax.energy"].calculation_id == calculation.id
    assert targets["emt-relax.energy_per_atom"].value == pytest.approx(calculation.results["energy"] / 4)
    assert np.abs(targets["emt-relax.forces"].value_array).max() < EMT_RELAX.relax.fmax
    assert not [name for name in targets_of(engine, parent) if name.startswith("emt")]
    # The references (Cu, Au) were relaxed too: a formation energy at the same level.
    assert "emt-relax.formation_energy_per_atom" in targets

    # The trajectory: a file beside the attempt's output and arrays on the calculation.
    trajectory = json.loads((Path(attempts[-1].workdir) / relaxation["trajectory"]).read_text())
    energies = trajectory["per_step"]["energy"]
    assert len(energies) == relaxation["steps"] + 1
    assert energies[-1] == pytest.approx(calculation.results["energy"]) and energies[-1] < energies[0]
    assert trajectory["per_step"]["fmax"][0] > EMT_RELAX.relax.fmax > trajectory["per_step"]["fmax"][-1]
    assert len(trajectory["per_step"]["max_force"]) == len(energies)
    arrays = arrays_from_bytes(calculation.arrays)
    assert np.allclose(arrays["trajectory_energy"], energies)

    # Running again computes nothing and stores nothing.
    structures, links = count_rows(engine, Structure), count_rows(engine, StructureLineage)
    assert queue_calculations(engine, [parent], EMT_RELAX) == [calculation_id]
    again = run_queued(engine, EMT_RELAX, options)
    assert not again.done and not again.failed
    assert (count_rows(engine, Structure), count_rows(engine, StructureLineage)) == (structures, links)


def test_formation_energies_of_relaxations_are_not_looked_for_again(engine, options):
    ids = store_crystals(engine, {"strained": strained_cu3au()})
    queue_calculations(engine, [ids["strained"]], EMT_RELAX)
    run_queued(engine, EMT_RELAX, options)  # adds the formation energies at its end
    calculation, _ = calculation_of(engine, ids["strained"], "emt-relax")
    assert calculation.results["relaxation"]["structure_id"] != ids["strained"]
    # Each relaxation has its formation energy, on the structure it ended in: a later call
    # has nothing to select, so it writes (or defines) nothing.
    statements = []

    def listener(_connection, _cursor, statement, *_) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", listener)
    try:
        assert add_formation_energies(engine, "emt-relax") == 0
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert not [statement for statement in statements if statement.lstrip().upper().startswith(("INSERT", "UPDATE"))]


def test_relaxed_structure_equal_to_a_stored_crystal_is_linked_to_it(engine, options):
    # Stored with its sites in another order (Au last) than the relaxation's (Au first).
    equilibrium = strained_cu3au(emt_equilibrium_a(), rattle=0)[[1, 2, 3, 0]]
    ids = store_crystals(engine, {"strained": strained_cu3au(rattle=0), "equilibrium": equilibrium})
    structures = count_rows(engine, Structure)
    queue_calculations(engine, [ids["strained"]], EMT_RELAX)
    run_queued(engine, EMT_RELAX, options, references=False)
    calculation, _ = calculation_of(engine, ids["strained"], "emt-relax")
    assert calculation.results["relaxation"]["structure_id"] == ids["equilibrium"]
    assert count_rows(engine, Structure) == structures
    [link] = lineage_of(engine, ids["equilibrium"])
    assert link.parent_id == ids["strained"]
    assert "emt-relax.energy" in targets_of(engine, ids["equilibrium"])
    # The calculation's per-site arrays follow the stored structure's site order.
    with session_scope(engine) as session:
        stored = np.asarray(session.get(Structure, ids["equilibrium"]).frac_coords)
    offsets = arrays_from_bytes(calculation.arrays)["relaxed_frac_coords"] - stored
    assert np.abs(offsets - np.round(offsets)).max() < 1e-3


def test_a_relaxation_stopped_at_its_step_limit_says_so(engine, options):
    ids = store_crystals(engine, {"strained": strained_cu3au()})
    limited = relax_preset(BUILTIN_PRESETS["emt"], Relaxation(steps=2))
    assert limited.name == "emt-relax-steps2"
    queue_calculations(engine, [ids["strained"]], limited)
    report = run_queued(engine, limited, options, references=False)
    assert len(report.done) == 1
    calculation, _ = calculation_of(engine, ids["strained"], limited.name)
    relaxation = calculation.results["relaxation"]
    assert relaxation["converged"] is False and relaxation["steps"] == 2 and relaxation["step_limit"] == 2
    assert relaxation["fmax"] > relaxation["fmax_limit"]
    assert len(arrays_from_bytes(calculation.arrays)["trajectory_energy"]) == 3
    # Two steps hardly move the cell: by the store's identity it is the same crystal, so
    # the targets go on the structure itself, with no lineage to itself.
    assert relaxation["structure_id"] == ids["strained"]
    assert not lineage_of(engine, ids["strained"])
    assert f"{limited.name}.energy" in targets_of(engine, ids["strained"])


def test_relax_command(run_cli, engine):
    ids = store_crystals(engine, {"strained": strained_cu3au()})
    result = run_cli("relax", "--preset", "emt", "--ids", str(ids["strained"]), "--steps", "3")
    assert "emt-relax-steps3" in result.output and "stopped at the step limit of 3" in result.output
    result = run_cli("relax", "--preset", "emt", "--all")
    assert "yes" in result.output
    # Every structure had its emt-relax relaxation; the structures it made are not relaxed again.
    assert "0 structures chosen for emt-relax" in run_cli("relax", "--preset", "emt", "--all").output
    run_cli("relax", "--preset", "emt", "--ids", "1", "--optimizer", "CG", expect=2)


@pytest.mark.slow
def test_universal_relaxation_in_a_batch(engine, options):
    """CHGNet relaxes two small strained cells in one worker process."""
    ids = store_crystals(engine, {"Si": bulk("Si", a=5.9), "Cu": bulk("Cu", a=3.9)})
    preset = relax_preset(BUILTIN_PRESETS["chgnet"], Relaxation(fmax=0.1, steps=100))
    queue_calculations(engine, list(ids.values()), preset)
    report = run_queued(engine, preset, options, references=False)
    assert len(report.done) == 2 and not report.failed
    assert len(list((options.workdir / preset.name / "batches").iterdir())) == 1
    for name, a_pbe in (("Si", 5.47), ("Cu", 3.63)):
        calculation, _ = calculation_of(engine, ids[name], preset.name)
        relaxation = calculation.results["relaxation"]
        assert relaxation["converged"]
        relaxed = relaxation["structure_id"]
        # The primitive fcc/diamond cell's volume is a^3 / 4.
        a = (4 * abs(np.linalg.det(lattice_of(engine, relaxed)))) ** (1 / 3)
        assert a == pytest.approx(a_pbe, rel=0.03)
        assert f"{preset.name}.energy" in targets_of(engine, relaxed)
        assert f"{preset.name}.magmoms" in targets_of(engine, relaxed)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_gpaw_relaxation_of_a_tiny_cell(engine, options):
    """gpaw-fast relaxes a 1-atom Al cell strained by 6 % back near PBE's lattice parameter."""
    ids = store_crystals(engine, {"Al": bulk("Al", a=4.3)})
    preset = relax_preset(BUILTIN_PRESETS["gpaw-fast"], Relaxation(fmax=0.05, steps=40))
    queue_calculations(engine, [ids["Al"]], preset)
    report = run_queued(engine, preset, options, references=False)
    assert len(report.done) == 1, report
    calculation, attempts = calculation_of(engine, ids["Al"], preset.name)
    relaxation = calculation.results["relaxation"]
    assert relaxation["converged"] and relaxation["structure_id"] != ids["Al"]
    a = (4 * abs(np.linalg.det(lattice_of(engine, relaxation["structure_id"])))) ** (1 / 3)
    assert a == pytest.approx(4.04, abs=0.06)  # PBE: 4.04 Å; 300 eV and few k-points move it a little
    assert (Path(attempts[-1].workdir) / "calculator.txt").is_file()
    assert f"{preset.name}.energy" in targets_of(engine, relaxation["structure_id"])


def test_a_workflow_hands_each_stage_the_structure_the_last_one_ended_in(engine, options):
    from workbench.dft.workflow import Stage, Workflow, run_workflow

    ids = store_crystals(engine, {"strained": strained_cu3au()})
    relaxed_then_static = Workflow("emt-relaxed", (Stage("emt", Relaxation()), Stage("emt")))
    report = run_workflow(engine, relaxed_then_static, [ids["strained"]], options)
    assert [name for name, _ in report.stages] == ["emt-relax", "emt"]
    relaxed = report.ends[ids["strained"]]
    assert relaxed != ids["strained"]
    # The single point of the second stage is on the relaxed structure, at the same geometry.
    targets = targets_of(engine, relaxed)
    assert targets["emt.energy"].value == pytest.approx(targets["emt-relax.energy"].value)
    assert "emt.energy" not in targets_of(engine, ids["strained"])
    again = run_workflow(engine, relaxed_then_static, [ids["strained"]], options)
    assert not any(stage.done for _, stage in again.stages) and again.ends == report.ends


def test_a_workflow_starts_each_stage_from_the_relaxed_geometry(engine, options):
    """Strained by 2 %, the relaxed cell is the same crystal by the store's identity: the
    next stage must still start from the relaxed geometry, not the stored strained one."""
    from workbench.dft.workflow import Stage, Workflow, run_workflow

    ids = store_crystals(engine, {"near": strained_cu3au(emt_equilibrium_a() * 1.02, rattle=0)})
    report = run_workflow(engine, Workflow("emt-relaxed", (Stage("emt", Relaxation()), Stage("emt"))),
                          [ids["near"]], options)
    assert report.ends == {ids["near"]: ids["near"]}
    targets = targets_of(engine, ids["near"])
    assert targets["emt.energy"].value == pytest.approx(targets["emt-relax.energy"].value, abs=1e-6)
    static, _ = calculation_of(engine, ids["near"], "emt")
    relaxation, _ = calculation_of(engine, ids["near"], "emt-relax")
    assert static.parameters["start"]["calculation_id"] == relaxation.id


def test_workflow_command_lists_and_runs(run_cli, engine):
    listing = run_cli("workflow", "--list").output
    assert "sevennet-gpaw-fast" in listing and "gpaw-fast-relax" in listing
    run_cli("workflow", "no-such-flow", "--all", expect=2)
