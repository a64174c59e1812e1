"""``workbench relax``: relaxations through the DFT runner, relaxed structures stored."""

from typing import Annotated

import typer
from rich.table import Table

from workbench.cli.dft import (
    AttemptsOption,
    BatchSizeOption,
    JobsOption,
    ThreadsOption,
    WallTimeOption,
    _preset,
    _print_event,
    _run_and_report,
    _run_options,
)
from workbench.cli.shared import (
    StructureIdsOption,
    WhereOption,
    app,
    check_structure_choice,
    console,
    id_list,
    invocation,
    print_table,
)


@app.command("relax")
def relax(
    ctx: typer.Context,
    preset: Annotated[str, typer.Option(
        help="Preset to relax with (sevennet, chgnet, emt, gpaw-fast, gpaw or a .yaml/.json file); "
             "the calculations are named <preset>-relax.")] = "sevennet",
    ids: StructureIdsOption = "",
    where: WhereOption = "",
    all_: Annotated[bool, typer.Option(
        "--all", help="Every structure without a done relaxation, relaxed structures of this preset left out.")] = False,
    fmax: Annotated[float, typer.Option(help="Converged below this largest force, eV/Å.")] = 0.05,
    steps: Annotated[int, typer.Option(help="Optimiser steps at most.")] = 300,
    cell: Annotated[bool, typer.Option("--cell/--fixed-cell", help="Relax the cell with the atoms.")] = True,
    optimizer: Annotated[str, typer.Option(help="ASE optimiser: FIRE, BFGS, LBFGS or BFGSLineSearch.")] = "FIRE",
    threads: ThreadsOption = 1,
    jobs: JobsOption = 1,
    wall_time: WallTimeOption = None,
    max_attempts: AttemptsOption = None,
    batch_size: BatchSizeOption = None,
) -> None:
    """Relax the chosen structures (atoms and cell, an ASE optimiser) and store each relaxed
    structure, linked to the one it came from, with the final energy as its targets.

    Each relaxation is a calculation of the preset <preset>-relax (other fmax, steps, cell or
    optimiser settings are named in it too, e.g. emt-relax-fmax0.01), run like `workbench dft run`:
    attempts, time limits, retries; a structure relaxed before is not relaxed again.
    """
    from dataclasses import replace

    from workbench.dft.presets import PresetError, Relaxation, relax_preset
    from workbench.dft.relaxation import relaxation_summaries
    from workbench.dft.runner import queue_calculations

    check_structure_choice(ids, where, all_)
    run = invocation(ctx)
    engine = run.engine
    try:
        relaxation_preset = relax_preset(_preset(preset), Relaxation(fmax, steps, cell, optimizer))
        if batch_size is not None:
            relaxation_preset = replace(relaxation_preset, batch_size=batch_size)
    except PresetError as error:
        raise typer.BadParameter(str(error)) from None
    structure_ids = _starting_structures(engine, relaxation_preset.name, ids, where, all_)
    calculation_ids = queue_calculations(engine, structure_ids, relaxation_preset)
    console.print(f"{len(calculation_ids)} structures chosen for {relaxation_preset.name}")
    try:
        _run_and_report(engine, relaxation_preset,
                        _run_options(run, threads, jobs, wall_time, max_attempts), calculation_ids)
    finally:
        _print_relaxations(relaxation_summaries(engine, calculation_ids))


def _print_relaxations(summaries) -> None:
    table = Table("calculation", "structure", "relaxed", "status", "steps", "converged", "fmax (eV/Å)",
                  "energy (eV)", title="relaxations")
    for summary in summaries:
        converged = {None: "", True: "yes", False: "no"}[summary.converged]
        table.add_row(
            str(summary.calculation_id), str(summary.structure_id),
            "" if summary.relaxed_structure_id is None else str(summary.relaxed_structure_id),
            summary.status, "" if summary.steps is None else str(summary.steps), converged,
            "" if summary.fmax is None else f"{summary.fmax:.3g}",
            "" if summary.energy is None else f"{summary.energy:.4f}")
    print_table(table)
    # Unwrapped, so that a stopped relaxation is never lost in a narrow table.
    for summary in summaries:
        if summary.converged is False:
            console.print(f"[yellow]calculation {summary.calculation_id}: stopped at the step limit of "
                          f"{summary.step_limit} with a largest force of {summary.fmax:.3g} eV/Å "
                          f"(limit {summary.fmax_limit:g}); its structure is stored as not converged")


@app.command("workflow")
def workflow(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Workflow name (see --list).")] = "",
    ids: StructureIdsOption = "",
    where: WhereOption = "",
    all_: Annotated[bool, typer.Option(
        "--all", help="Every structure without a done first stage, that stage's own products left out.")] = False,
    list_: Annotated[bool, typer.Option("--list", help="List the workflows and their stages.")] = False,
    threads: ThreadsOption = 1,
    jobs: JobsOption = 1,
    wall_time: WallTimeOption = None,
    max_attempts: AttemptsOption = None,
) -> None:
    """Run a workflow's stages in order (e.g. sevennet pre-relaxation, gpaw-fast relaxation,
    gpaw-fast single point), each stage a recorded calculation starting from the structure
    the previous stage ended in."""
    from workbench.dft.presets import PresetError
    from workbench.dft.workflow import WORKFLOWS, load_workflow, run_workflow

    if list_ or not name:
        table = Table("name", "stages", "description", title="workflows")
        for known in WORKFLOWS.values():
            table.add_row(known.name, " → ".join(stage.build().name for stage in known.stages), known.description)
        print_table(table)
        return
    check_structure_choice(ids, where, all_)
    try:
        chosen = load_workflow(name)
    except PresetError as error:
        raise typer.BadParameter(str(error)) from None
    run = invocation(ctx)
    engine = run.engine
    first = chosen.stages[0].build()
    structure_ids = _starting_structures(engine, first.name, ids, where, all_)
    report = run_workflow(engine, chosen, structure_ids, _run_options(run, threads, jobs, wall_time, max_attempts),
                          on_event=_print_event)
    table = Table("stage", "preset", "done", "failed", title=f"workflow {chosen.name}")
    for number, (preset_name, stage_report) in enumerate(report.stages, start=1):
        table.add_row(str(number), preset_name, str(len(stage_report.done)), str(len(stage_report.failed)))
    print_table(table)
    console.print(f"{len(report.ends)} of {len(structure_ids)} structures went through every stage")
    if len(report.ends) < len(structure_ids):
        raise typer.Exit(2)


def _starting_structures(engine, preset_name: str, ids: str, where: str, every: bool) -> list[int]:
    """The structures a relaxation (or a workflow's first stage) ``preset_name`` starts
    from; with ``every``, not those that are a relaxation's product already."""
    from workbench.dft.relaxation import relaxation_products
    from workbench.dft.runner import select_structures

    structure_ids = select_structures(engine, preset_name, ids=id_list(ids), where=where or None, every=every)
    if every:
        products = relaxation_products(engine, preset_name)
        structure_ids = [structure_id for structure_id in structure_ids if structure_id not in products]
    return structure_ids
