"""Workflows: stages of calculations, each stage starting where the previous one ended.

A stage is a preset and whether it relaxes (:class:`workbench.dft.presets.Relaxation`) or
computes a single point. Each stage is its own recorded calculation per structure, run by
:func:`workbench.dft.runner.run_queued`; a relaxation stage hands the next stage the
structure it ended in (the relaxed one, see :mod:`workbench.dft.relaxation`), a single
point hands on the structure itself. A structure whose stage failed goes no further.

The next stage starts from the relaxed geometry itself, not from the stored geometry of
the structure it was matched to (a relaxation that moved the cell less than the store's
identity tolerance ends on the structure it started from, whose stored cell is the
unrelaxed one): the geometry travels as the calculation's ``start``.
Running a workflow again computes only what is missing: every stage's calculation is
unique per (structure, preset).
"""

from dataclasses import dataclass, field

from sqlalchemy import Engine, select

from workbench.dft.ingest import target_structure_id
from workbench.dft.presets import Preset, PresetError, Relaxation, load_preset, relax_preset
from workbench.dft.runner import Events, RunOptions, RunReport, queue_calculations, run_queued
from workbench.store.engine import session_scope
from workbench.store.schema import Calculation, CalculationStatus
from workbench.store.types import arrays_from_bytes


@dataclass(frozen=True)
class Stage:
    """One step of a workflow: ``preset`` relaxed by ``relax``, or a single point."""

    preset: str
    relax: Relaxation | None = None

    def build(self) -> Preset:
        preset = load_preset(self.preset)
        return preset if self.relax is None else relax_preset(preset, self.relax)


@dataclass(frozen=True)
class Workflow:
    name: str
    stages: tuple[Stage, ...]
    description: str = ""


def _prerelaxed(universal: str, dft: str) -> Workflow:
    return Workflow(
        f"{universal}-{dft}", (Stage(universal, Relaxation()), Stage(dft, Relaxation()), Stage(dft)),
        f"{universal} pre-relaxation, then {dft} relaxation, then a {dft} single point with DOS")


WORKFLOWS: dict[str, Workflow] = {workflow.name: workflow for workflow in (
    _prerelaxed("sevennet", "gpaw-fast"),
    _prerelaxed("chgnet", "gpaw-fast"),
    _prerelaxed("sevennet", "gpaw"),
    Workflow("gpaw-fast-relaxed", (Stage("gpaw-fast", Relaxation()), Stage("gpaw-fast")),
             "gpaw-fast relaxation, then a gpaw-fast single point with DOS (no pre-relaxation)"),
)}


def load_workflow(name: str) -> Workflow:
    if name not in WORKFLOWS:
        raise PresetError(f"unknown workflow {name!r}: use one of {sorted(WORKFLOWS)}")
    return WORKFLOWS[name]


@dataclass
class WorkflowReport:
    """Each stage's preset and run report, and where each starting structure ended
    (``{start id: structure id after the last stage}``, finished ones only)."""

    stages: list[tuple[str, RunReport]] = field(default_factory=list)
    ends: dict[int, int] = field(default_factory=dict)


def stage_ends(engine: Engine, preset: str, structure_ids: list[int]) -> dict[int, tuple[int, dict | None]]:
    """``{structure id: (structure its done calculation of preset ended in, the geometry
    it ended at)}``: the relaxed geometry of a relaxation, the start of a single point."""
    ends = {}
    with session_scope(engine) as session:
        calculations = session.scalars(select(Calculation).where(
            Calculation.preset == preset, Calculation.structure_id.in_(structure_ids),
            Calculation.status == CalculationStatus.DONE)).all()
        for calculation in calculations:
            geometry = (calculation.parameters or {}).get("start")
            if "relaxation" in (calculation.results or {}):
                arrays = arrays_from_bytes(calculation.arrays)
                geometry = {"lattice": arrays["relaxed_cell"].tolist(),
                            "frac_coords": arrays["relaxed_frac_coords"].tolist(), "calculation_id": calculation.id}
            ends[calculation.structure_id] = (target_structure_id(calculation), geometry)
    return ends


def run_workflow(engine: Engine, workflow: Workflow, structure_ids: list[int], options: RunOptions, *,
                 on_event: Events | None = None) -> WorkflowReport:
    """Run ``workflow``'s stages in order from ``structure_ids``."""
    report = WorkflowReport()
    current = {structure_id: structure_id for structure_id in structure_ids}
    starts: dict[int, dict] = {}
    for stage in workflow.stages:
        preset = stage.build()
        chosen = sorted(set(current.values()))
        calculation_ids = queue_calculations(engine, chosen, preset, starts=starts)
        report.stages.append((preset.name, run_queued(engine, preset, options, calculation_ids=calculation_ids,
                                                      on_event=on_event)))
        ends = stage_ends(engine, preset.name, chosen)
        current = {start: ends[now][0] for start, now in current.items() if now in ends}
        starts = {end: geometry for end, geometry in ends.values() if geometry is not None}
    report.ends = current
    return report
