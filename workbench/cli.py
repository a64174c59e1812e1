"""The ``workbench`` command line."""

import csv
import dataclasses
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from workbench.errors import ImportFailed, InputError, ReadOnlyViolation
from workbench.featurize.cache import featurize_structures
from workbench.featurize.featurizer import Featurizer
from workbench.featurize.graph import GraphConfig
from workbench.io.export import export_ase
from workbench.io.importer import import_file
from workbench.io.readers import ReadOptions, expand_paths
from workbench.settings import Settings
from workbench.store import migrate
from workbench.store.engine import make_engine
from workbench.store.queries import run_read_only, store_status
from workbench.train.config import TrainConfig

app = typer.Typer(help="Active-learning workbench for crystalline materials.", no_args_is_help=True)
dft_app = typer.Typer(help="DFT calculations through ASE: run, inspect, retry.", no_args_is_help=True)
app.add_typer(dft_app, name="dft")
campaign_app = typer.Typer(help="Active-learning campaigns: run or resume, status, report.", no_args_is_help=True)
app.add_typer(campaign_app, name="campaign")
console = Console(stderr=True, soft_wrap=True)


def _engine(settings: Settings, *, create: bool = False):
    if create:
        settings.ensure_home()
    engine = make_engine(settings.database_url)
    if not create and migrate.current_revision(engine) is None:
        console.print(f"[red]No workbench store at {_shown(settings.database_url)}: run `workbench init` first.")
        raise typer.Exit(1)
    return engine


def _grid(spec: str) -> tuple[np.ndarray, str]:
    parts = spec.split(":")
    try:
        start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
    except (ValueError, IndexError):
        raise typer.BadParameter(f"--grid expects NAME=START:STOP:COUNT[:UNITS], got {spec!r}") from None
    return np.linspace(start, stop, count, endpoint=False), parts[3] if len(parts) > 3 else ""


def _shown(database_url: str) -> str:
    return make_url(database_url).render_as_string(hide_password=True)


def _pairs(values: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, other = value.partition("=")
        if not sep or not name or not other:
            raise typer.BadParameter(f"{option} expects NAME=VALUE, got {value!r}")
        pairs[name] = other
    return pairs


@app.command()
def init() -> None:
    """Create the store, or upgrade it to the newest schema."""
    settings = Settings()
    engine = _engine(settings, create=True)
    migrate.upgrade(engine)
    console.print(f"Store ready at {_shown(settings.database_url)} (schema {migrate.current_revision(engine)})")


@app.command("import")
def import_(
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
    jobs: Annotated[int, typer.Option(help="Worker processes for parsing.")] = os.cpu_count() or 1,
) -> None:
    """Import CIF, POSCAR, extxyz, pymatgen JSON, ASE db and CSV files (one transaction per file)."""
    settings = Settings()
    engine = _engine(settings)
    targets = {column: name for name, column in _pairs(target, "--target").items()}
    options = ReadOptions(targets=targets, units=_pairs(unit, "--unit"),
                          grids={name: _grid(spec) for name, spec in _pairs(grid, "--grid").items()})
    try:
        files = expand_paths(paths)
    except InputError as error:
        console.print(f"[red]{error}")
        raise typer.Exit(2) from None
    failed = 0
    with _workers(jobs) as executor, _progress() as progress:
        for path in files:
            task = progress.add_task(path.name, total=None)
            try:
                report = import_file(
                    engine, path, source=source, options=options, skip_bad=skip_bad, executor=executor,
                    on_total=lambda n, task=task: progress.update(task, total=n),
                    on_progress=lambda n, task=task: progress.advance(task, n),
                )
            except (ImportFailed, InputError) as error:
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


def _workers(jobs: int):
    """A process pool for ``jobs`` > 1, else nothing (work runs in this process)."""
    return ProcessPoolExecutor(jobs) if jobs > 1 else nullcontext()


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console,
    )


AtomFeaturesOption = Annotated[str, typer.Option(
    help="Atom features: cgcnn (91-entry element vector) or ofm (orbital field matrix + cgcnn, OCrystalNet/OGCNN).")]


def _atom_features(name: str) -> str:
    from workbench.featurize.featurizer import ATOM_FEATURE_TABLES

    if name not in ATOM_FEATURE_TABLES:
        raise typer.BadParameter(f"--atom-features must be one of {sorted(ATOM_FEATURE_TABLES)}, not {name!r}")
    return name


def _backbone_options(values: list[str]) -> dict:
    # Values are read as YAML scalars: "hidden=128" gives an int, "normalization=layer" a string.
    return {name: yaml.safe_load(value) for name, value in _pairs(values, "--backbone").items()}


@app.command()
def featurize(
    cutoff: Annotated[float, typer.Option(help="Neighbour search radius, Å.")] = GraphConfig.cutoff,
    max_neighbors: Annotated[int, typer.Option(help="Neighbours kept per atom.")] = GraphConfig.max_neighbors,
    keep_ties: Annotated[bool, typer.Option(help="Keep the whole shell of the k-th neighbour.")] = False,
    max_cutoff: Annotated[float, typer.Option(help="Radius tried once for sites short of neighbours.")]
    = GraphConfig.max_cutoff,
    atom_features: AtomFeaturesOption = "cgcnn",
    jobs: Annotated[int, typer.Option(help="Worker processes.")] = os.cpu_count() or 1,
) -> None:
    """Build and cache the crystal graphs the store does not have yet for this featurizer."""
    featurizer = Featurizer(GraphConfig(cutoff=cutoff, max_neighbors=max_neighbors,
                                        keep_ties=keep_ties, max_cutoff=max_cutoff),
                            atom_features=_atom_features(atom_features))
    engine = _engine(Settings())
    with _workers(jobs) as executor, _progress() as progress:
        task = progress.add_task(f"featurizer {featurizer.key}", total=None)
        report = featurize_structures(
            engine, featurizer, executor=executor,
            on_total=lambda n: progress.update(task, total=n),
            on_progress=lambda n: progress.advance(task, n),
        )
    console.print(f"featurizer {report.key}: {report.featurized} graphs built, "
                  f"{report.already_cached} already cached, {len(report.failed)} failed")
    for structure_id, reason in report.failed:
        console.print(f"  [yellow]structure {structure_id}[/yellow]: {reason}")


@app.command()
def train(
    target: Annotated[str, typer.Option(help="Target to learn.")],
    name: Annotated[str, typer.Option(help="Registered model name in MLflow.")],
    arch: Annotated[str, typer.Option(
        help="Backbone: cgcnn, alignn, schnet, megnet, ocrystalnet or neighbour-mlp.")] = "cgcnn",
    backbone: Annotated[list[str] | None, typer.Option(
        help="Backbone setting NAME=VALUE, e.g. hidden=128 (repeatable).")] = None,
    atom_features: AtomFeaturesOption = "cgcnn",
    spectrum_latent: Annotated[int | None, typer.Option(
        help="Spectrum targets: predict an autoencoder code of this size (AE-DOS; 12 as published).")] = None,
    members: Annotated[int, typer.Option(help="Ensemble members.")] = TrainConfig.members,
    epochs: Annotated[int, typer.Option(help="Most epochs per member.")] = TrainConfig.epochs,
    patience: Annotated[int, typer.Option(help="Early stopping patience, epochs.")] = TrainConfig.patience,
    batch_size: Annotated[int, typer.Option()] = TrainConfig.batch_size,
    learning_rate: Annotated[float, typer.Option()] = TrainConfig.learning_rate,
    bootstrap: Annotated[bool, typer.Option(help="Train each member on a bootstrap sample.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of member 0 (member i uses seed + i).")] = 0,
    pooling: Annotated[str, typer.Option(help="Scalar targets: mean (intensive) or sum (extensive).")] = "mean",
    conserve_total: Annotated[bool, typer.Option(help="Per-site targets: values sum to 0 per structure.")]
    = False,
    champion: Annotated[bool, typer.Option(help="Make this version the champion.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    jobs: Annotated[int, typer.Option(help="Worker processes for featurizing.")] = os.cpu_count() or 1,
) -> None:
    """Train an ensemble on the store's labels, evaluate it, register it in MLflow."""
    from workbench.train.pipeline import (  # torch and MLflow: slow imports
        TrainRequest,
        train_and_register,
    )

    settings = Settings()
    settings.ensure_home()
    request = TrainRequest(
        target=target, name=name, architecture=arch, pooling=pooling, conserve_total=conserve_total,
        champion=champion, device=device, backbone=_backbone_options(backbone or []),
        featurizer=Featurizer(atom_features=_atom_features(atom_features)), spectrum_latent=spectrum_latent,
        train=TrainConfig(members=members, epochs=epochs, patience=patience, batch_size=batch_size,
                          learning_rate=learning_rate, bootstrap=bootstrap, seed=seed),
    )
    with _workers(jobs) as executor, _progress() as progress:
        task = progress.add_task(f"training {members} members", total=members * epochs)
        result = train_and_register(
            _engine(settings), settings, request, executor=executor,
            on_epoch=lambda member, epoch, loss, val: progress.update(
                task, completed=member * epochs + epoch + 1,
                description=f"member {member}: epoch {epoch} train {loss:.4f} validation {val:.4f}"),
        )
    console.print(f"Registered {result.name} version {result.registry_version} "
                  f"({', '.join(result.aliases)}), run {result.run_id}")
    table = Table("metric (test split)", "value")
    for key, value in sorted(result.metrics.items()):
        table.add_row(key, f"{value:.4g}")
    Console().print(table)


@app.command()
def predict(
    model: Annotated[str, typer.Option(help="NAME@alias or NAME/version.")],
    ids: Annotated[str, typer.Option(help="Comma-separated structure ids.")] = "",
    where: Annotated[str, typer.Option(help="SQL condition on structures.")] = "",
    jobs: Annotated[int, typer.Option(help="Worker processes for featurizing.")] = os.cpu_count() or 1,
) -> None:
    """Write a registered model's predictions (mean and std) into the store."""
    from workbench.train.pipeline import predict_into_store  # torch and MLflow: slow imports

    settings = Settings()
    structure_ids = [int(value) for value in ids.split(",") if value.strip()] if ids else None
    with _workers(jobs) as executor, _progress() as progress:
        task = progress.add_task(f"predicting with {model}", total=None)
        written = predict_into_store(
            _engine(settings), settings, model, structure_ids=structure_ids, where=where or None,
            executor=executor, on_total=lambda n: progress.update(task, total=n),
            on_progress=lambda n: progress.advance(task, n),
        )
    console.print(f"Wrote {written} predictions of {model}")


@app.command()
def replay(
    source: Annotated[str, typer.Option(help="Source label of the labeled pool.")],
    objective: Annotated[list[str] | None, typer.Option(
        help="Constraint, e.g. '1.5<=dir_gap<=3' (repeatable; default: the --config campaign's).")] = None,
    config: Annotated[Path | None, typer.Option(
        help="Campaign YAML: its objective, model and batch size are the defaults of this replay.")] = None,
    initial: Annotated[int, typer.Option(help="Random structures revealed first.")] = 50,
    batch: Annotated[int | None, typer.Option(help="Structures revealed per round [default: 25].")] = None,
    budget: Annotated[int, typer.Option(help="Structures revealed in all.")] = 400,
    seeds: Annotated[int, typer.Option(help="Independent replays.")] = 5,
    arch: Annotated[str | None, typer.Option(help="Backbone of the ensembles [default: cgcnn].")] = None,
    members: Annotated[int | None, typer.Option(help="Ensemble members per target and round [default: 3].")] = None,
    epochs: Annotated[int | None, typer.Option(help="Most epochs per member [default: 60].")] = None,
    patience: Annotated[int | None, typer.Option(help="Early stopping patience, epochs [default: 15].")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    plot: Annotated[Path | None, typer.Option(help="Discovery-curve PNG (default: in WORKBENCH_HOME).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout.")] = False,
) -> None:
    """Replay a campaign on a labeled pool (labels revealed as if computed), beside random."""
    from workbench.acquire.objective import ObjectiveError, parse_objective
    from workbench.campaign.config import load_config
    from workbench.campaign.replay import REPLAY_TRAINING, ReplayConfig, discovery_plot
    from workbench.campaign.replay import replay as run_replay

    settings = Settings()
    defaults = {"objective": None, "batch": 25, "arch": "cgcnn", "train": REPLAY_TRAINING}
    if config is not None:
        try:
            campaign = load_config(config)
        except InputError as error:
            raise typer.BadParameter(str(error)) from None
        defaults = {"objective": campaign.objective, "batch": campaign.acquisition.batch,
                    "arch": campaign.model.architecture, "train": campaign.model.train_config(seed=0)}
    objective = objective or defaults["objective"]
    if not objective:
        raise typer.BadParameter("give --objective or a --config campaign")
    try:
        parsed = parse_objective(objective)
    except ObjectiveError as error:
        raise typer.BadParameter(str(error)) from None
    batch = batch or defaults["batch"]
    overrides = {name: value for name, value in (("members", members), ("epochs", epochs), ("patience", patience))
                 if value}
    replay_config = ReplayConfig(source=source, objective=parsed, initial=initial, batch=batch, budget=budget,
                                 seeds=seeds, architecture=arch or defaults["arch"], device=device,
                                 train=dataclasses.replace(defaults["train"], **overrides))
    rounds = seeds * -(-(budget - initial) // batch)
    with _progress() as progress:
        task = progress.add_task("replay", total=rounds)
        try:
            result = run_replay(_engine(settings), replay_config, on_round=lambda seed, revealed, hits: progress.update(
                task, advance=1, description=f"seed {seed}: {revealed} revealed, {hits} hits"))
        except ValueError as error:
            console.print(f"[red]{error}")
            raise typer.Exit(1) from None
    path = discovery_plot(result, plot or settings.ensure_home() / "replay.png")
    table = Table("seed", f"hits at {budget}", "random", title=f"{result.objective}: "
                  f"{result.hits_in_pool} hits in a pool of {result.pool}")
    for seed, (hits, random_hits) in enumerate(zip(result.hits_at_budget, result.random_hits_at_budget, strict=True)):
        table.add_row(str(seed), str(hits), str(random_hits))
    table.add_row("median", f"{np.median(result.hits_at_budget):g}", f"{np.median(result.random_hits_at_budget):g}")
    Console(stderr=as_json).print(table)
    console.print(f"Discovery curve: {path}")
    if as_json:
        print(json.dumps(result.to_dict(), indent=1))


@app.command("export-ase")
def export_ase_command(
    out: Annotated[Path, typer.Argument(help="OUT.db or OUT.json")],
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Export structures and labels to an ASE database (``ase db OUT.db`` lists it)."""
    settings = Settings()
    try:
        count = export_ase(_engine(settings), out, overwrite=overwrite)
    except FileExistsError as error:
        console.print(f"[red]{error}")
        raise typer.Exit(1) from None
    console.print(f"Wrote {count} rows to {out}")


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="One SQL statement; the store is opened read-only.")],
    format: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
) -> None:
    """Run a read-only SQL query against the store."""
    if format not in ("table", "csv", "json"):
        raise typer.BadParameter("--format must be table, csv or json")
    settings = Settings()
    # A role that may only SELECT, where one is configured: then the server refuses writes too.
    readonly_url = settings.readonly_database_url
    engine = make_engine(readonly_url) if readonly_url else _engine(settings)
    try:
        result = run_read_only(engine, query)
    except ReadOnlyViolation as error:
        console.print(f"[red]Refused: {error}")
        raise typer.Exit(1) from None
    except DBAPIError as error:
        console.print(f"[red]SQL error: {str(error.orig).strip()}")
        raise typer.Exit(1) from None
    rows = [[_plain(value) for value in row] for row in result.rows]
    if format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(result.columns)
        writer.writerows(rows)
    elif format == "json":
        print(json.dumps([dict(zip(result.columns, row, strict=True)) for row in rows], indent=1))
    else:
        table = Table(*result.columns)
        for row in rows:
            table.add_row(*("" if value is None else str(value) for value in row))
        Console().print(table)


def _plain(value):
    if isinstance(value, bytes | memoryview):
        return f"<{len(bytes(value))} bytes>"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


@app.command()
def status() -> None:
    """Counts of structures, labels, calculations, models and predictions."""
    summary = store_status(_engine(Settings()))
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
    Console().print(table)


def _ids(text: str) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise typer.BadParameter(f"--ids expects comma-separated integers, got {text!r}") from None


def _preset(name: str):
    from workbench.dft.presets import PresetError, load_preset

    try:
        return load_preset(name)
    except PresetError as error:
        raise typer.BadParameter(str(error)) from None


def _run_options(settings: Settings, threads: int, jobs: int, wall_time: float | None,
                 max_attempts: int | None):
    from workbench.dft.runner import RunOptions

    return RunOptions(
        workdir=settings.dft_dir, threads=threads, jobs=jobs, wall_time_s=wall_time,
        max_attempts=max_attempts, espresso_pseudo_dir=settings.espresso_pseudo_dir,
        espresso_command=settings.espresso_command,
    )


def _run_and_report(engine, preset, options, calculation_ids) -> None:
    from workbench.dft.runner import run_queued

    def event(calculation_id: int, message: str) -> None:
        console.print(f"calculation {calculation_id}: {message}")

    report = run_queued(engine, preset, options, calculation_ids=calculation_ids, on_event=event)
    if report.requeued:
        console.print(f"Re-queued {len(report.requeued)} calculations whose worker was gone: {report.requeued}")
    for element, why in report.references_missing.items():
        console.print(f"[yellow]No elemental reference for {element}: {why}")
    console.print(f"{len(report.done)} done, {len(report.failed)} failed, "
                  f"{report.formation_energies} formation energies added")
    for calculation_id, reason in report.failed.items():
        console.print(f"[red]calculation {calculation_id} failed: {reason}")
    if report.failed:
        raise typer.Exit(2)


ThreadsOption = Annotated[int, typer.Option(help="Threads per calculation.")]
JobsOption = Annotated[int, typer.Option(help="Calculations run at once.")]
WallTimeOption = Annotated[float | None, typer.Option(help="Wall-time limit per attempt, s (default: the preset's).")]
AttemptsOption = Annotated[int | None, typer.Option(help="Attempts per calculation (default: the preset's).")]


@dft_app.command("run")
def dft_run(
    preset: Annotated[str, typer.Option(help="Preset name (see `workbench dft presets`) or a .yaml/.json file.")] = "gpaw",
    ids: Annotated[str, typer.Option(help="Comma-separated structure ids.")] = "",
    where: Annotated[str, typer.Option(help="SQL condition on structures.")] = "",
    all_: Annotated[bool, typer.Option("--all", help="Every structure without a done calculation.")] = False,
    threads: ThreadsOption = 1,
    jobs: JobsOption = 1,
    wall_time: WallTimeOption = None,
    max_attempts: AttemptsOption = None,
) -> None:
    """Queue and run calculations of the chosen structures with a preset.

    Structures with a done calculation for the preset are never computed again; the
    elemental references of their elements are computed first (formation energies).
    """
    from workbench.dft.runner import queue_calculations, select_structures

    chosen = [bool(ids), bool(where), all_]
    if sum(chosen) != 1:
        raise typer.BadParameter("choose structures with exactly one of --ids, --where, --all")
    settings = Settings()
    engine = _engine(settings)
    calculation_preset = _preset(preset)
    try:
        structure_ids = select_structures(engine, calculation_preset.name, ids=_ids(ids),
                                          where=where or None, every=all_)
    except (ValueError, ReadOnlyViolation) as error:
        console.print(f"[red]{error}")
        raise typer.Exit(1) from None
    calculation_ids = queue_calculations(engine, structure_ids, calculation_preset)
    console.print(f"{len(calculation_ids)} structures chosen for preset {calculation_preset.name}")
    _run_and_report(engine, calculation_preset,
                    _run_options(settings, threads, jobs, wall_time, max_attempts), calculation_ids)


@dft_app.command("retry")
def dft_retry(
    preset: Annotated[str, typer.Option(help="Preset name or file.")] = "gpaw",
    ids: Annotated[str, typer.Option(help="Comma-separated calculation ids (default: every failed one).")] = "",
    reason: Annotated[list[str] | None, typer.Option(help="Only failures of this reason (repeatable).")] = None,
    threads: ThreadsOption = 1,
    jobs: JobsOption = 1,
    wall_time: WallTimeOption = None,
    max_attempts: AttemptsOption = None,
) -> None:
    """Put failed calculations back in the queue and run them."""
    from workbench.dft.runner import retry_failed

    settings = Settings()
    engine = _engine(settings)
    calculation_preset = _preset(preset)
    queued = retry_failed(engine, calculation_preset.name, ids=_ids(ids), reasons=reason or None)
    console.print(f"Re-queued {len(queued)} failed calculations of {calculation_preset.name}")
    _run_and_report(engine, calculation_preset,
                    _run_options(settings, threads, jobs, wall_time, max_attempts), queued)


@dft_app.command("status")
def dft_status(
    preset: Annotated[str, typer.Option(help="Only this preset.")] = "",
) -> None:
    """Calculations by preset, status and reason of failure."""
    from workbench.dft.runner import status_counts

    table = Table("preset", "status", "reason", "count", title="calculations")
    for name, state, reason, count in status_counts(_engine(Settings()), preset or None):
        table.add_row(name, state, reason or "", str(count))
    Console().print(table)


@dft_app.command("show")
def dft_show(calculation_id: Annotated[int, typer.Argument(help="Calculation id.")]) -> None:
    """A calculation's attempts: settings rung, outcome, reason, message and folder."""
    from workbench.dft.runner import attempts_of

    try:
        calculation, attempts = attempts_of(_engine(Settings()), calculation_id)
    except ValueError as error:
        console.print(f"[red]{error}")
        raise typer.Exit(1) from None
    console.print(f"calculation {calculation.id}: structure {calculation.structure_id}, preset "
                  f"{calculation.preset}, {calculation.status.value}"
                  f"{f' ({calculation.reason})' if calculation.reason else ''}, folder {calculation.workdir}")
    table = Table("attempt", "rung", "status", "reason", "exit", "wall (s)", title="attempts")
    for attempt in attempts:
        table.add_row(str(attempt.number), str(attempt.parameters.get("rung", "")), attempt.status.value,
                      attempt.reason or "", "" if attempt.exit_code is None else str(attempt.exit_code),
                      "" if attempt.wall_time_s is None else f"{attempt.wall_time_s:.1f}")
    Console().print(table)
    # Messages and folders unwrapped, so that they can be copied.
    for attempt in attempts:
        console.print(f"attempt {attempt.number}: {attempt.workdir}")
        if attempt.message:
            console.print(f"  {attempt.message}")


@dft_app.command("presets")
def dft_presets() -> None:
    """The built-in calculator presets."""
    from workbench.dft.presets import BUILTIN_PRESETS

    table = Table("name", "calculator", "description", title="presets")
    for preset in BUILTIN_PRESETS.values():
        table.add_row(preset.name, preset.calculator, preset.description)
    Console().print(table)


def _campaign_id(engine, name: str) -> int:
    from workbench.campaign.loop import campaign_id_of

    try:
        return campaign_id_of(engine, name)
    except LookupError as error:
        console.print(f"[red]{error}")
        raise typer.Exit(1) from None


@campaign_app.command("run")
def campaign_run(
    config: Annotated[Path, typer.Argument(help="Campaign YAML file.")],
    report: Annotated[Path | None, typer.Option(help="Write the report here at the end "
                                                     "(default WORKBENCH_HOME/reports/NAME).")] = None,
) -> None:
    """Run a campaign, or resume it where it stopped, until its budget or stopping rule."""
    from workbench.campaign.config import load_config
    from workbench.campaign.loop import run_campaign
    from workbench.campaign.report import write_report

    settings = Settings()
    try:
        parsed = load_config(config)
    except InputError as error:
        console.print(f"[red]{error}")
        raise typer.Exit(1) from None
    engine = _engine(settings)
    try:
        outcome = run_campaign(engine, settings, parsed, on_event=lambda message: console.print(message))
    except (InputError, LookupError) as error:
        console.print(f"[red]{error}")
        raise typer.Exit(1) from None
    path = write_report(engine, outcome.campaign_id, report or settings.ensure_home() / "reports" / parsed.name)
    console.print(f"Campaign {parsed.name!r}: {outcome.spent} calculations, {outcome.hits} hits "
                  f"({outcome.stopped_because}). Report: {path}")


@campaign_app.command("status")
def campaign_status(name: Annotated[str, typer.Argument(help="Campaign name.")]) -> None:
    """Rounds of a campaign with what each found."""
    from workbench.campaign.loop import campaign_config, progress, stop_reason
    from workbench.store.engine import session_scope
    from workbench.store.schema import Round

    settings = Settings()
    engine = _engine(settings)
    campaign_id = _campaign_id(engine, name)
    config = campaign_config(engine, campaign_id)
    table = Table("round", "status", "acquired", "hits", "failed", "DFT s", title=f"campaign {name}")
    with session_scope(engine) as session:
        for round_row in session.query(Round).filter(Round.campaign_id == campaign_id).order_by(Round.number):
            summary = round_row.summary or {}
            table.add_row(str(round_row.number), round_row.status, *(str(summary.get(key, ""))
                          for key in ("acquired", "hits", "failed", "dft_seconds")))
    Console().print(table)
    state = progress(engine, campaign_id)
    console.print(f"{state.spent} of {config.budget} calculations spent, {state.hits} hits; "
                  f"{stop_reason(engine, campaign_id, config) or 'more rounds to run'}")


@campaign_app.command("report")
def campaign_report(
    name: Annotated[str, typer.Argument(help="Campaign name.")],
    out: Annotated[Path | None, typer.Option(help="Folder (default WORKBENCH_HOME/reports/NAME).")] = None,
) -> None:
    """Write the campaign's report: discovery curve, parity, spectra, ledger."""
    from workbench.campaign.report import write_report

    settings = Settings()
    engine = _engine(settings)
    path = write_report(engine, _campaign_id(engine, name), out or settings.ensure_home() / "reports" / name)
    console.print(f"Report: {path}")
