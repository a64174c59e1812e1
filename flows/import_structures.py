"""Prefect flow ``import``: ``workbench import`` as a flow, one task per file.

Each task is :func:`workbench.io.importer.import_file`, one transaction per file, so a
retried task never writes a file twice. Bad input is not retried; a dropped database
connection is.
"""

from pathlib import Path

from prefect import flow, get_run_logger

from flows.tasks import store_task
from workbench.io.importer import import_file
from workbench.io.readers import ReadOptions, expand_paths
from workbench.settings import Settings
from workbench.store.engine import open_engine


@store_task
def import_one_file(path: str, source: str, targets: dict[str, str], units: dict[str, str],
                    skip_bad: bool, database_url: str) -> dict:
    with open_engine(database_url) as engine:
        report = import_file(engine, Path(path), source=source, skip_bad=skip_bad,
                             options=ReadOptions(targets=targets, units=units))
    for error in report.skipped:
        get_run_logger().warning("skipped %s", error)
    return {"file": path, "entries": report.entries, "new_structures": report.new_structures,
            "new_labels": report.new_labels, "skipped": len(report.skipped)}


@flow(name="import")
def import_structures(paths: list[str], source: str = "import", targets: dict[str, str] | None = None,
                      units: dict[str, str] | None = None, skip_bad: bool = False) -> list[dict]:
    """Import files or directories; ``targets`` maps a column to a target name."""
    settings = Settings()
    files = expand_paths([Path(path) for path in paths])
    return [
        import_one_file(str(path), source, targets or {}, units or {}, skip_bad, settings.database_url)
        for path in files
    ]
