"""``workbench hull``: energies above the convex hull of one level of theory."""

from typing import Annotated

import typer
from rich.table import Table

from workbench.cli.shared import app, console, invocation, print_table

SHOWN_PHASES = 8  # competing phase ids listed per system; the rest are counted


@app.command()
def hull(
    ctx: typer.Context,
    level: Annotated[str, typer.Option(
        help="Level of theory: a DFT preset (gpaw-fast, emt, ...) or the prefix of imported energy targets.")],
    queue: Annotated[bool, typer.Option(
        help="Queue calculations (with the level's preset) of the missing elemental references "
        "and competing phases; run them with `workbench dft run`.")] = False,
    phases_where: Annotated[str, typer.Option(
        help="SQL condition on the structures table: only these count as competing phases.")] = "",
) -> None:
    """Write <level>.e_above_hull (and its decomposition) for every structure with an energy
    at the level, from pymatgen's phase diagram of that level's energies alone; list what
    each chemical system lacks at the level."""
    from workbench.stability.store import level_gaps, queue_gaps, update_hull

    engine = invocation(ctx).engine
    gaps = level_gaps(engine, level, phases_where=phases_where or None)
    if gaps:
        table = Table("chemical system", "structures", "missing elements", "competing phases without energy")
        for gap in gaps:
            shown = ", ".join(map(str, gap.missing_phases[:SHOWN_PHASES]))
            more = len(gap.missing_phases) - SHOWN_PHASES
            table.add_row(gap.chemical_system, str(gap.structures), ", ".join(gap.missing_elements),
                          shown + (f" and {more} more" if more > 0 else ""))
        print_table(table)
    if queue and gaps:
        queued = queue_gaps(engine, level, gaps)
        console.print(f"Queued {len(queued.calculation_ids)} calculations with preset {level}")
        for element, why in queued.references_unavailable.items():
            console.print(f"[yellow]No elemental reference for {element}: {why}")
    report = update_hull(engine, level)
    console.print(
        f"{level}.e_above_hull from {report.entries} {report.basis} energies: {report.values} structures "
        f"({report.new} new, {report.updated} updated, {report.unchanged} unchanged)")
    if report.systems_without_hull:
        console.print(f"[yellow]{len(report.systems_without_hull)} chemical systems have no hull "
                      "yet (elements without an energy above)")
