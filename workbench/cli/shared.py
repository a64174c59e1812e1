"""What every command shares: the root command with its one error handler, the settings
and store of one invocation, the consoles, progress bars, worker pools and option parsers.

Kept light to import: library modules (pymatgen, torch, MLflow, Prefect) are imported
inside the command bodies, so that ``workbench --help`` or ``workbench sql`` start fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup

from workbench.errors import InputError, WorkbenchError
from workbench.train.config import available_cores

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from workbench.settings import Settings

# Messages, tables meant for people and progress go to stderr; stdout carries only data
# (``sql --format csv``, ``replay --json``).
console = Console(stderr=True, soft_wrap=True)

# The cores this process may use (a SLURM or taskset allocation), not the machine's.
DEFAULT_JOBS = available_cores()
# How commands that work on stored structures are told which ones.
StructureIdsOption = Annotated[str, typer.Option("--ids", help="Comma-separated structure ids.")]
WhereOption = Annotated[str, typer.Option(
    "--where", help="SQL condition on the structures table, run read-only (see docs/sql.md).")]


class WorkbenchGroup(TyperGroup):
    """The root command: a :class:`WorkbenchError` raised by any command is printed as its
    message, without a traceback, and ends the command with the error's exit code."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except WorkbenchError as error:
            console.print(f"[red]{escape(str(error))}")
            raise typer.Exit(error.exit_code) from None


app = typer.Typer(cls=WorkbenchGroup, help="Active-learning workbench for crystalline materials.",
                  no_args_is_help=True)


@dataclass
class Invocation:
    """The settings of one command and the engines it opened (disposed when it ends)."""

    settings: Settings
    _engines: dict[tuple[str, bool], Engine] = field(default_factory=dict)  # by (URL, read-only)

    def _open(self, url: str, *, read_only: bool = False) -> Engine:
        from workbench.store.engine import make_engine, read_only_engine

        key = (url, read_only)
        if key not in self._engines:
            self._engines[key] = read_only_engine(url) if read_only else make_engine(url)
        return self._engines[key]

    @cached_property
    def engine(self) -> Engine:
        """The store; one that was never initialised, or whose schema is not this code's,
        is an error (checked once)."""
        from workbench.store import migrate

        engine = self._open(self.settings.database_url)
        migrate.require_current(engine, self.shown_url)
        return engine

    def new_engine(self) -> Engine:
        """The store, which may not exist yet (its home folder is created)."""
        self.settings.ensure_home()
        return self._open(self.settings.database_url)

    @property
    def read_only_url(self) -> str:
        """What ``sql`` and ``serve`` read: the read-only role's URL where one is configured
        (the server then refuses writes by role too), else the store's."""
        return self.settings.readonly_database_url or self.settings.database_url

    def read_only_engine(self) -> Engine:
        """The store at :attr:`read_only_url` through an engine the database refuses writes
        through; checked like :attr:`engine` (once)."""
        from sqlalchemy.engine import make_url

        from workbench.store import migrate

        url = self.read_only_url
        if (url, True) in self._engines:
            return self._engines[(url, True)]
        parsed = make_url(url)
        # A reader creates nothing: a missing SQLite file is refused before it is opened.
        if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
            raise migrate.missing_store(shown(url))
        engine = self._open(url, read_only=True)
        migrate.require_current(engine, shown(url))
        return engine

    @property
    def shown_url(self) -> str:
        return shown(self.settings.database_url)

    def close(self) -> None:
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()


@app.callback()
def _start(ctx: typer.Context) -> None:
    from pydantic import ValidationError

    from workbench.settings import Settings

    try:
        settings = Settings()
    except ValidationError as error:
        raise InputError("; ".join(f"WORKBENCH_{'.'.join(map(str, item['loc'])).upper()}: {item['msg']}"
                                   for item in error.errors())) from None
    ctx.obj = Invocation(settings)
    ctx.call_on_close(ctx.obj.close)


def shown(url: str) -> str:
    """A database URL as printed: its password hidden."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def invocation(ctx: typer.Context) -> Invocation:
    """The settings and store of the running command."""
    return ctx.find_object(Invocation)


def workers(jobs: int):
    """A process pool for ``jobs`` > 1, else nothing (work runs in this process)."""
    from concurrent.futures import ProcessPoolExecutor
    from contextlib import nullcontext

    return ProcessPoolExecutor(jobs) if jobs > 1 else nullcontext()


@contextmanager
def progress_bar(jobs: int = 1) -> Iterator[tuple[Progress, Executor | None]]:
    """A progress display, with a worker pool of ``jobs`` processes when ``jobs`` > 1."""
    with workers(jobs) as executor, Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console,
    ) as progress:
        yield progress, executor


def pairs(values: list[str], option: str) -> dict[str, str]:
    """``NAME=VALUE`` options as a dict."""
    parsed = {}
    for value in values:
        name, sep, other = value.partition("=")
        if not sep or not name or not other:
            raise typer.BadParameter(f"{option} expects NAME=VALUE, got {value!r}")
        parsed[name] = other
    return parsed


def id_list(text: str, option: str = "--ids") -> list[int] | None:
    """Comma-separated integers; None for an empty option."""
    if not text:
        return None
    try:
        return [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise typer.BadParameter(f"{option} expects comma-separated integers, got {text!r}") from None


def check_structure_choice(ids: str, where: str, every: bool) -> None:
    """Refuse a command told which stored structures to work on in no way, or in more than
    one: exactly one of ``--ids``, ``--where`` and ``--all``."""
    if sum([bool(ids), bool(where), every]) != 1:
        raise typer.BadParameter("choose structures with exactly one of --ids, --where, --all")


def print_table(table) -> None:
    """A table for people, on stdout."""
    Console().print(table)
