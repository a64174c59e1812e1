"""Store commands: init, import, export-ase, sql, status."""

import csv
import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from workbench.cli.shared import (
    DEFAULT_JOBS,
    app,
    console,
    invocation,
    pairs,
    print_table,
    progress_bar,
)
from workbench.errors import ImportFailed, InputError


@app.command()
def init(ctx: typer.Context) -> None:
    """Create the store, or upgrade it to the newest schema."""
    from workbench.store import migrate

    run = invocation(ctx)
    engine = run.new_engine()
    migrate.upgrade(engine)
    console.print(f"Store ready at {run.shown_url} (schema {migrate.current_revision(engine)})")


def _grid(spec: str):
    import numpy as np

    parts = spec.split(":")
    try:
        start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
    except (ValueError, IndexError):
        raise typer.BadParameter(f"--grid expects NAME=START:STOP:COUNT[:UNITS], got {spec!r}") from None
    if count < 1:  # NumPy would raise on a negative COUNT, and a spectrum has a point at least
        raise typer.BadParameter(f"--grid needs a COUNT of 1 or more, got {spec!r}")
    return np.linspace(start, stop, count, endpoint=False), parts[3] if len(parts) > 3 else ""


@app.command("import")
def import_(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Files or directories to import.")],
    source: Annotated[str, typer.Option(help="Label for this batch of structures.")] = "import",
    target: Annotated[list[str], typer.Option(
        help="NAME=COLUMN: read target NAME from COLUMN (CSV column, key, array or info name); "
        "repeatable. Default: every numeric column under its own name.")] = [],  # noqa: B006
    unit: Annotated[list[str], typer.Option(help="NAME=UNITS for targets this import creates.")] = [],  # noqa: B006
    grid: Annotated[list[str], typer.Option(
        help="NAME=START:STOP:COUNT[:UNITS]: the axis of a spectrum this import creates, COUNT points "
        "from START in steps of (STOP-START)/COUNT, e.g. dos=-5:10:300:eV")] = [],  # noqa: B006
    skip_bad: Annotated[bool, typer.Option(help="Import the good rows, report the bad ones.")] = False,
    jobs: Annotated[int, typer.Option(help="Worker processes for parsing.")] = DEFAULT_JOBS,
) -> None:
    """Import CIF, POSCAR, extxyz, pymatgen JSON, ASE db and CSV files (one transaction per file)."""
    from workbench.io.importer import import_file
    from workbench.io.readers import ReadOptions, expand_paths

    engine = invocation(ctx).engine
    targets = {column: name for name, column in pairs(target, "--target").items()}
    options = ReadOptions(targets=targets, units=pairs(unit, "--unit"),
                          grids={name: _grid(spec) for name, spec in pairs(grid, "--grid").items()})
    files = expand_paths(paths)
    failed = 0
    with progress_bar(jobs) as (progress, executor):
        for path in files:
            task = progress.add_task(path.name, total=None)
            try:
                report = import_file(
                    engine, path, source=source, options=options, skip_bad=skip_bad, executor=executor,
                    on_total=lambda n, task=task: progress.update(task, total=n),
                    on_progress=lambda n, task=task: progress.advance(task, n),
                )
            except (ImportFailed, InputError) as error:
                # One bad file does not stop the others: each is its own transaction.
                failed += 1
                progress.console.print(f"[red]{path}: not imported, nothing written.[/red]\n{error}")
                continue
            progress.console.print(
                f"{path}: {report.entries} entries, {report.new_structures} new structures, "
                f"{report.matched_structures} already stored, {report.new_labels} new labels, "
                f"{report.unchanged_labels} unchanged, {len(report.skipped)} skipped"
            )
            for error in report.skipped:
                progress.console.print(f"  [yellow]skipped[/yellow] {error}")
    if failed:
        raise typer.Exit(1)


@app.command("export-ase")
def export_ase(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="OUT.db or OUT.json")],
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Export structures and labels to an ASE database (``ase db OUT.db`` lists it)."""
    from workbench.io.export import export_ase

    count = export_ase(invocation(ctx).engine, out, overwrite=overwrite)
    console.print(f"Wrote {count} rows to {out}")


SQL_FORMATS = ("table", "csv", "json")


@app.command()
def sql(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="One SQL statement; the store is opened read-only.")],
    format: Annotated[str, typer.Option("--format", help=", ".join(SQL_FORMATS))] = SQL_FORMATS[0],
) -> None:
    """Run a read-only SQL query against the store."""
    from workbench.store.queries import run_read_only

    if format not in SQL_FORMATS:
        raise typer.BadParameter(f"--format must be one of {', '.join(SQL_FORMATS)}")
    result = run_read_only(invocation(ctx).read_only_engine(), query)
    rows = [[_plain(value) for value in row] for row in result.rows]
    if format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(result.columns)
        writer.writerows(rows)
    elif format == "json":
        print(json.dumps([dict(zip(result.columns, row, strict=True)) for row in rows], indent=1,
                         default=_json_value))
    else:
        table = Table(*result.columns)
        for row in rows:
            table.add_row(*("" if value is None else str(value) for value in row))
        print_table(table)


def _plain(value):
    if isinstance(value, bytes | memoryview):
        return f"<{len(bytes(value))} bytes>"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _json_value(value):
    """What JSON has no type for: PostgreSQL's ``numeric`` (``avg``, ``sum``, ``round``)
    arrives as a Decimal and is a number; anything else is its text, as in the table."""
    return float(value) if isinstance(value, Decimal) else str(value)


@app.command()
def status(ctx: typer.Context) -> None:
    """Counts of structures, labels, calculations, models and predictions."""
    from workbench.store.queries import store_status

    summary = store_status(invocation(ctx).engine)
    table = Table("what", "count", title="workbench store")
    table.add_row("structures", str(summary.structures))
    for name, count in summary.sources.items():
        table.add_row(f"  from source {name}", str(count))
    for name, count in summary.targets.items():
        table.add_row(f"labels: {name}", str(count))
    for name, count in summary.calculations.items():
        table.add_row(f"calculations {name}", str(count))
    table.add_row("model versions", str(summary.models))
    table.add_row("predictions", str(summary.predictions))
    print_table(table)
