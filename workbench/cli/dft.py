"""DFT commands: ``workbench dft run | retry | status | show | presets``."""

from typing import Annotated

import typer
from rich.table import Table

from workbench.cli.shared import (
    Invocation,
    StructureIdsOption,
    WhereOption,
    app,
    check_structure_choice,
    console,
    id_list,
    invocation,
    print_table,
)

dft_app = typer.Typer(help="DFT calculations through ASE: run, inspect, retry.", no_args_is_help=True)
app.add_typer(dft_app, name="dft")


def _preset(name: str, batch_size: int | None = None):
    from dataclasses import replace

    from workbench.dft.presets import PresetError, load_preset

    try:
        preset = load_preset(name)
        # Checked as the preset's own field: a batch needs settings that fit every structure.
        return preset if batch_size is None else replace(preset, batch_size=batch_size)
    except PresetError as error:
        raise typer.BadParameter(str(error)) from None


def _run_options(run: Invocation, threads: int, jobs: int, wall_time: float | None,
                 max_attempts: int | None):
    from workbench.dft.runner import RunOptions

    return RunOptions.from_settings(run.settings, threads=threads, jobs=jobs, wall_time_s=wall_time,
                                    max_attempts=max_attempts)


def _print_event(calculation_id: int, message: str) -> None:
    """What the runner reports of a calculation, on the console."""
    console.print(f"calculation {calculation_id}: {message}")


def _run_and_report(engine, preset, options, calculation_ids) -> None:
    from workbench.dft.runner import run_queued

    report = run_queued(engine, preset, options, calculation_ids=calculation_ids, on_event=_print_event)
    if report.requeued:
        console.print(f"Re-queued {len(report.requeued)} calculations whose worker was gone: {report.requeued}")
    for element, why in report.references_missing.items():
        console.print(f"[yellow]No elemental reference for {element}: {why}")
    console.print(f"{len(report.done)} done, {len(report.failed)} failed, "
                  f"{report.formation_energies} formation energies added")
    if isinstance(report.hull, str):
        console.print(f"[yellow]The hull of {preset.name} was not rewritten: {report.hull}")
    elif report.hull is not None:
        console.print(f"Energies above the {preset.name} hull rewritten: {report.hull.new} new, "
                      f"{report.hull.updated} changed")
    for calculation_id, reason in report.failed.items():
        console.print(f"[red]calculation {calculation_id} failed: {reason}")
    if report.failed:
        raise typer.Exit(2)


ThreadsOption = Annotated[int, typer.Option(help="Threads per calculation.")]
JobsOption = Annotated[int, typer.Option(help="Calculations run at once.")]
WallTimeOption = Annotated[float | None, typer.Option(help="Wall-time limit per attempt, s (default: the preset's).")]
AttemptsOption = Annotated[int | None, typer.Option(help="Attempts per calculation (default: the preset's).")]
BatchSizeOption = Annotated[int | None, typer.Option(
    min=1, help="Structures per worker process, which builds the calculator once (default: the preset's, "
                "see `workbench dft presets`). --wall-time then limits a batch.")]


@dft_app.command("run")
def run(
    ctx: typer.Context,
    preset: Annotated[str, typer.Option(help="Preset name (see `workbench dft presets`) or a .yaml/.json file.")] = "gpaw",
    ids: StructureIdsOption = "",
    where: WhereOption = "",
    all_: Annotated[bool, typer.Option("--all", help="Every structure without a done calculation.")] = False,
    threads: ThreadsOption = 1,
    jobs: JobsOption = 1,
    wall_time: WallTimeOption = None,
    max_attempts: AttemptsOption = None,
    batch_size: BatchSizeOption = None,
) -> None:
    """Queue and run calculations of the chosen structures with a preset.

    Structures with a done calculation for the preset are never computed again; the
    elemental references of their elements are computed first (formation energies).
    """
    from workbench.dft.runner import queue_calculations, select_structures

    check_structure_choice(ids, where, all_)
    run = invocation(ctx)
    engine = run.engine
    calculation_preset = _preset(preset, batch_size)
    structure_ids = select_structures(engine, calculation_preset.name, ids=id_list(ids),
                                      where=where or None, every=all_)
    calculation_ids = queue_calculations(engine, structure_ids, calculation_preset)
    console.print(f"{len(calculation_ids)} structures chosen for preset {calculation_preset.name}")
    _run_and_report(engine, calculation_preset,
                    _run_options(run, threads, jobs, wall_time, max_attempts), calculation_ids)


@dft_app.command("retry")
def retry(
    ctx: typer.Context,
    preset: Annotated[str, typer.Option(help="Preset name or file.")] = "gpaw",
    ids: Annotated[str, typer.Option(help="Comma-separated calculation ids (default: every failed one).")] = "",
    reason: Annotated[list[str] | None, typer.Option(help="Only failures of this reason (repeatable).")] = None,
    threads: ThreadsOption = 1,
    jobs: JobsOption = 1,
    wall_time: WallTimeOption = None,
    max_attempts: AttemptsOption = None,
    batch_size: BatchSizeOption = None,
) -> None:
    """Put failed calculations back in the queue and run them."""
    from workbench.dft.runner import retry_failed

    run = invocation(ctx)
    engine = run.engine
    calculation_preset = _preset(preset, batch_size)
    queued = retry_failed(engine, calculation_preset.name, ids=id_list(ids), reasons=reason or None)
    console.print(f"Re-queued {len(queued)} failed calculations of {calculation_preset.name}")
    _run_and_report(engine, calculation_preset,
                    _run_options(run, threads, jobs, wall_time, max_attempts), queued)


@dft_app.command("status")
def status(
    ctx: typer.Context,
    preset: Annotated[str, typer.Option(help="Only this preset.")] = "",
) -> None:
    """Calculations by preset, status and reason of failure."""
    from workbench.dft.runner import status_counts

    table = Table("preset", "status", "reason", "count", title="calculations")
    for name, state, reason, count in status_counts(invocation(ctx).engine, preset or None):
        table.add_row(name, state, reason or "", str(count))
    print_table(table)


@dft_app.command("show")
def show(ctx: typer.Context, calculation_id: Annotated[int, typer.Argument(help="Calculation id.")]) -> None:
    """A calculation's attempts: settings rung, outcome, reason, message and folder."""
    from workbench.dft.runner import attempts_of

    calculation, attempts = attempts_of(invocation(ctx).engine, calculation_id)
    console.print(f"calculation {calculation.id}: structure {calculation.structure_id}, preset "
                  f"{calculation.preset}, {calculation.status.value}"
                  f"{f' ({calculation.reason})' if calculation.reason else ''}, folder {calculation.workdir}")
    table = Table("attempt", "rung", "status", "reason", "exit", "wall (s)", title="attempts")
    for attempt in attempts:
        table.add_row(str(attempt.number), str(attempt.parameters.get("rung", "")), attempt.status.value,
                      attempt.reason or "", "" if attempt.exit_code is None else str(attempt.exit_code),
                      "" if attempt.wall_time_s is None else f"{attempt.wall_time_s:.1f}")
    print_table(table)
    # Messages and folders unwrapped, so that they can be copied.
    for attempt in attempts:
        console.print(f"attempt {attempt.number}: {attempt.workdir}")
        if attempt.message:
            console.print(f"  {attempt.message}")


@dft_app.command("presets")
def presets() -> None:
    """The built-in calculator presets."""
    from workbench.dft.presets import BUILTIN_PRESETS

    table = Table("name", "calculator", "batch", "description", title="presets")
    for preset in BUILTIN_PRESETS.values():
        table.add_row(preset.name, preset.calculator, str(preset.batch_size), preset.description)
    print_table(table)
