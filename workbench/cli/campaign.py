"""Campaign commands: ``workbench campaign run | status | report``, and ``workbench replay``."""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from workbench.cli.shared import (
    DEFAULT_JOBS,
    Invocation,
    app,
    console,
    invocation,
    print_table,
    progress_bar,
)
from workbench.errors import InputError
from workbench.train.config import CAMPAIGN_TRAINING

campaign_app = typer.Typer(help="Active-learning campaigns: run or resume, status, report.", no_args_is_help=True)
app.add_typer(campaign_app, name="campaign")


def _report_folder(run: Invocation, name: str, out: Path | None) -> Path:
    return out or run.settings.ensure_home() / "reports" / name


@campaign_app.command("run")
def run(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="Campaign YAML file.")],
    report: Annotated[Path | None, typer.Option(help="Write the report here at the end "
                                                     "(default WORKBENCH_HOME/reports/NAME).")] = None,
) -> None:
    """Run a campaign, or resume it where it stopped, until its budget or stopping rule."""
    from workbench.campaign.config import load_config
    from workbench.campaign.loop import run_campaign
    from workbench.campaign.report import write_report

    parsed = load_config(config)
    run = invocation(ctx)
    outcome = run_campaign(run.engine, run.settings, parsed, on_event=lambda message: console.print(message))
    path = write_report(run.engine, outcome.campaign_id, _report_folder(run, parsed.name, report))
    console.print(f"Campaign {parsed.name!r}: {outcome.spent} calculations, {outcome.hits} hits "
                  f"({outcome.stopped_because}). Report: {path}")


@campaign_app.command("status")
def status(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Campaign name.")]) -> None:
    """Rounds of a campaign with what each found."""
    from workbench.campaign.status import campaign_status
    from workbench.campaign.store import RoundCount

    state = campaign_status(invocation(ctx).engine, name)
    table = Table("round", "status", *(count.heading for count in RoundCount), title=f"campaign {name}")
    for line in state.rounds:
        table.add_row(str(line.number), line.status, *(str(line.summary.get(count, "")) for count in RoundCount))
    print_table(table)
    console.print(f"{state.spent} of {state.budget} calculations spent, {state.hits} hits; "
                  f"{state.stopped_because or 'more rounds to run'}")


@campaign_app.command("report")
def report(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Campaign name.")],
    out: Annotated[Path | None, typer.Option(help="Folder (default WORKBENCH_HOME/reports/NAME).")] = None,
) -> None:
    """Write the campaign's report: discovery curve, parity, spectra, ledger."""
    from workbench.campaign.report import write_report
    from workbench.campaign.store import campaign_id_of

    run = invocation(ctx)
    path = write_report(run.engine, campaign_id_of(run.engine, name), _report_folder(run, name, out))
    console.print(f"Report: {path}")


@app.command()
def replay(
    ctx: typer.Context,
    source: Annotated[str, typer.Option(help="Source label of the labeled pool.")],
    objective: Annotated[list[str] | None, typer.Option(
        help="Constraint, e.g. '1.5<=dir_gap<=3' (repeatable; default: the --config campaign's).")] = None,
    config: Annotated[Path | None, typer.Option(
        help="Campaign YAML: its objective, acquisition policy, model and DFT preset are the defaults of this "
             "replay (else a campaign's defaults).")] = None,
    initial: Annotated[int, typer.Option(help="Random structures revealed first.")] = 50,
    batch: Annotated[int | None, typer.Option(
        help="Structures revealed per round (default: the replay's, or the --config campaign's).")] = None,
    budget: Annotated[int, typer.Option(help="Structures revealed in all.")] = 400,
    seeds: Annotated[int, typer.Option(help="Independent replays.")] = 5,
    arch: Annotated[str | None, typer.Option(help="Backbone of the ensembles (default: the campaign's).")] = None,
    atom_features: Annotated[str | None, typer.Option(
        help="Atom features of the ensembles, e.g. sevennet (default: the campaign's).")] = None,
    prior: Annotated[str | None, typer.Option(
        help="Stored scalar target whose fit the first objective target learns the residual of, as a campaign's "
             "model.prior (default: the --config campaign's); every pool structure needs its value.")] = None,
    members: Annotated[int | None, typer.Option(
        help=f"Ensemble members per target and round (default: {CAMPAIGN_TRAINING.members}, as a campaign).")] = None,
    epochs: Annotated[int | None, typer.Option(
        help=f"Most epochs per member (default: {CAMPAIGN_TRAINING.epochs}).")] = None,
    patience: Annotated[int | None, typer.Option(
        help=f"Early stopping patience, epochs (default: {CAMPAIGN_TRAINING.patience}).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    jobs: Annotated[int, typer.Option(help="Worker processes, one seed each at a time.")] = DEFAULT_JOBS,
    plot: Annotated[Path | None, typer.Option(help="Discovery-curve PNG (default: in WORKBENCH_HOME).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout.")] = False,
) -> None:
    """Replay a campaign's policy on a labeled pool (labels revealed as if computed), beside random."""
    import numpy as np

    from workbench.acquire.objective import ObjectiveError
    from workbench.campaign.config import load_config
    from workbench.campaign.replay import checkpoints, discovery_plot, replay_config
    from workbench.campaign.replay import replay as run_replay

    run = invocation(ctx)
    settings = run.settings
    try:
        replay_settings = replay_config(
            source, objective=objective, campaign=load_config(config) if config is not None else None, batch=batch,
            architecture=arch, members=members, epochs=epochs, patience=patience, initial=initial, budget=budget,
            seeds=seeds, device=device, **({"atom_features": atom_features} if atom_features else {}),
            **({"prior": prior} if prior else {}))
    except (InputError, ObjectiveError) as error:
        raise typer.BadParameter(str(error)) from None
    with progress_bar() as (progress, _):
        task = progress.add_task("replay", total=seeds * (len(checkpoints(replay_settings)) - 1))
        result = run_replay(run.engine, replay_settings, jobs=jobs, on_round=lambda seed, revealed, hits: progress.update(
            task, advance=1, description=f"seed {seed}: {revealed} revealed, {hits} hits"))
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
