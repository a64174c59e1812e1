"""A campaign's report: markdown with PNG figures, written from the store alone.

- the discovery curve: hits against calculations spent, round by round, beside the hit
  rate of the campaign's random rounds (the pool's base rate, as far as it has been seen);
- parity of every objective target: the prediction the candidate was chosen on (mean ±
  std, from the ledger) against what DFT then computed;
- computed against predicted DOS of the newest candidates, when a spectrum target is
  modelled;
- for an objective on ``<level>.e_above_hull``, the level's convex hull in the binary
  systems the campaign chose most in, its computed candidates marked;
- the ledger: what was chosen, in which round, by which function and score, and what
  came of it;
- where and when it was written: machine, cores, commit, and the campaign's wall time
  (first round started to last round finished).
"""

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sqlalchemy import Engine, select

from workbench.acquire.scores import RANDOM
from workbench.campaign.loop import progress, stop_reason
from workbench.campaign.store import LedgerRow, RoundCount, calculations_spent, campaign_config
from workbench.provenance import current
from workbench.stability.store import binary_hulls, hull_level
from workbench.store.engine import session_scope
from workbench.store.schema import (
    Acquisition,
    Calculation,
    Campaign,
    ModelVersion,
    Prediction,
    Round,
    RoundKind,
    Structure,
    TargetDefinition,
    TargetKind,
    TargetValue,
)
from workbench.train.plots import parity_plot, spectrum_overlays

# Spectra shown in the DOS figure (its 2 x 3 panels).
DOS_PANELS = 6
# Binary systems shown in the hull figure (its 2 x 2 panels).
HULL_PANELS = 4
# A phase this close to the hull (eV/atom) is drawn on it.
ON_HULL = 1e-6


def ledger(engine: Engine, campaign_id: int) -> list[LedgerRow]:
    """The campaign's acquisitions in the order they were chosen."""
    with session_scope(engine) as session:
        rows = session.execute(
            select(Round.number, Acquisition, Structure.formula, Calculation.wall_time_s,
                   ModelVersion.name, ModelVersion.registry_version)
            .join(Round, Round.id == Acquisition.round_id)
            .join(Structure, Structure.id == Acquisition.structure_id)
            .outerjoin(Calculation, Calculation.id == Acquisition.calculation_id)
            .outerjoin(ModelVersion, ModelVersion.id == Acquisition.model_version_id)
            .where(Round.campaign_id == campaign_id).order_by(Round.number, Acquisition.batch)
        ).all()
        return [LedgerRow(number, a.batch, a.structure_id, formula, a.acquisition_function, a.score, a.rank,
                          a.status.value, a.predicted or {}, a.outcome or {}, a.calculation_id, seconds,
                          f"{name}/{version}" if name else None)
                for number, a, formula, seconds, name, version in rows]


def discovery_curve(rows: list[LedgerRow], path: Path, *, title: str) -> Path:
    spent = np.array(calculations_spent([row.calculation_id for row in rows]))
    hits = np.cumsum([bool(row.outcome.get("hit")) for row in rows])
    random_rows = [row for row in rows if row.function == RANDOM]
    figure = Figure(figsize=(6, 4))
    axis = figure.subplots()
    axis.step(spent, hits, where="post", color="tab:blue", linewidth=2, label="campaign")
    if random_rows:
        rate = sum(bool(row.outcome.get("hit")) for row in random_rows) / len(random_rows)
        axis.plot(spent, rate * spent, "--", color="tab:grey",
                  label=f"random at the rate of the random rounds ({rate:.0%})")
    for boundary in np.flatnonzero(np.diff([row.round for row in rows])):
        axis.axvline(spent[boundary] + 0.5, color="0.85", linewidth=0.8)
    axis.set(xlabel="DFT calculations", ylabel="hits found", title=title)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


def hit_rates(rows: list[LedgerRow]) -> str | None:
    """The model-guided rounds' hit rate beside the random rounds' (the pool's base rate as
    far as it has been seen), per candidate chosen (a failed calculation counts as no
    hit); None until both kinds of round have chosen some."""
    chosen = {"random": [row for row in rows if row.function == RANDOM],
              "guided": [row for row in rows if row.function != RANDOM]}
    if not all(chosen.values()):
        return None
    hits = {kind: sum(bool(row.outcome.get("hit")) for row in group) for kind, group in chosen.items()}
    rates = {kind: hits[kind] / len(group) for kind, group in chosen.items()}
    failed = sum(row.status == "failed" for row in chosen["guided"])
    ratio = (f"{rates['guided'] / rates['random']:.1f} times the random rounds' rate" if rates["random"]
             else "the random rounds found none")
    return (f"Hit rate: model-guided rounds {hits['guided']} of {len(chosen['guided'])} chosen "
            f"({rates['guided']:.0%}{f', {failed} failed' if failed else ''}), random rounds {hits['random']} of "
            f"{len(chosen['random'])} ({rates['random']:.0%}): {ratio}.")


def _parity(rows: list[LedgerRow], target: str, path: Path) -> Path | None:
    chosen = [row for row in rows if target in row.predicted and target in row.outcome.get("computed", {})]
    if not chosen:
        return None
    computed = np.array([row.outcome["computed"][target] for row in chosen])
    mean = np.array([row.predicted[target]["mean"] for row in chosen])
    std = np.array([row.predicted[target]["std"] for row in chosen])
    return parity_plot(computed, mean, std, path, title=f"{target}: predicted when chosen vs computed")


def _dos_figure(engine: Engine, campaign_id: int, target: str, path: Path) -> Path | None:
    """Computed vs predicted spectra of the newest candidates that have both: computed on
    the structure the candidate was labeled on (where its relaxation ended, if it was
    relaxed), predicted for the candidate as chosen."""
    with session_scope(engine) as session:
        definition = session.scalar(select(TargetDefinition).where(TargetDefinition.name == target))
        if definition is None or definition.kind is not TargetKind.SPECTRUM:
            return None
        rounds = session.scalars(select(Round).where(Round.campaign_id == campaign_id, Round.models.is_not(None))
                                 .order_by(Round.number.desc())).all()
        panels = []
        for round_row in rounds:
            model_version_id = (round_row.models or {}).get(target)
            if model_version_id is None:
                continue
            rows = session.execute(
                select(Structure.formula, TargetValue.value_array, Prediction.mean_array, Prediction.std_array)
                .join(Acquisition, Acquisition.structure_id == Structure.id)
                .join(Calculation, Calculation.id == Acquisition.calculation_id)
                .join(TargetValue, (TargetValue.structure_id == Calculation.structure_id)
                      & (TargetValue.target_id == definition.id))
                .join(Prediction, (Prediction.structure_id == Structure.id)
                      & (Prediction.model_version_id == model_version_id))
                .where(Acquisition.round_id == round_row.id).order_by(Acquisition.batch)
            ).all()
            panels.extend(rows)
            if len(panels) >= DOS_PANELS:
                break
        grid = definition.grid
    if not panels:
        return None
    panels = panels[:DOS_PANELS]
    return spectrum_overlays(np.array([p.value_array for p in panels]), np.array([p.mean_array for p in panels]),
                             np.array([p.std_array for p in panels]), path, energies=grid,
                             labels=[p.formula for p in panels],
                             title=f"{target}: computed (black) vs predicted before computing")


def _hull_figure(engine: Engine, level: str, rows: list[LedgerRow], path: Path) -> Path | None:
    """Formation energy against composition in the binary systems the campaign computed
    most candidates in: the hull through the stable phases, every phase at the level, the
    campaign's candidates (the structures they were labeled on) marked, hits filled."""
    labeled = {row.outcome.get("structure_id", row.structure_id): bool(row.outcome.get("hit"))
               for row in rows if row.outcome.get("computed")}
    with session_scope(engine) as session:
        hulls = binary_hulls(session, level, labeled, limit=HULL_PANELS)
    if not hulls:
        return None
    columns = min(2, len(hulls))
    figure = Figure(figsize=(5 * columns, 4 * ((len(hulls) + 1) // 2)))
    axes = np.atleast_1d(figure.subplots((len(hulls) + 1) // 2, columns, squeeze=False)).ravel()
    for axis, hull in zip(axes, hulls, strict=False):
        x, y = np.array(hull.fraction), np.array(hull.formation_energy)
        on = np.array(hull.e_above_hull) <= ON_HULL
        order = np.argsort(x[on])
        axis.plot(x[on][order], y[on][order], "-", color="black", linewidth=1, label="hull")
        axis.scatter(x, y, s=18, color="0.6", label=f"phases at {level}")
        ours = np.array([key in labeled for key in hull.keys])
        hits = np.array([labeled.get(key, False) for key in hull.keys])
        axis.scatter(x[ours & ~hits], y[ours & ~hits], s=50, facecolors="none", edgecolors="tab:red",
                     label="campaign's candidates")
        axis.scatter(x[hits], y[hits], s=60, color="tab:red", marker="*", label="hits")
        first, second = hull.system.split("-")
        axis.set(xlabel=f"fraction of {second} (0 = {first})", ylabel="formation energy (eV/atom)",
                 title=f"{hull.system} at {level}")
    for axis in axes[len(hulls):]:
        axis.set_visible(False)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def _chosen_by(round_row: Round, function: str) -> str:
    """What ranked a round: random, or the function over the model's or the prior's predictions."""
    if round_row.kind is RoundKind.RANDOM:
        return RANDOM
    basis = ((round_row.summary or {}).get("acquisition") or {}).get("basis")
    return f"{function} ({basis})" if basis else function


def write_report(engine: Engine, campaign_id: int, out: Path) -> Path:
    """Write ``out/report.md`` and its figures; returns the markdown's path."""
    out.mkdir(parents=True, exist_ok=True)
    config = campaign_config(engine, campaign_id)
    objective = config.parsed_objective
    rows = ledger(engine, campaign_id)
    state = progress(engine, campaign_id)
    with session_scope(engine) as session:
        campaign = session.get(Campaign, campaign_id)
        status = campaign.status
        rounds = session.scalars(select(Round).where(Round.campaign_id == campaign_id).order_by(Round.number)).all()
        round_lines = [
            f"| {r.number} | {r.status} | {_chosen_by(r, config.acquisition.function)} "
            f"| {', '.join(f'{t}: {v}' for t, v in (r.models or {}).items())} "
            f"| {' | '.join(str((r.summary or {}).get(count, '')) for count in RoundCount)} |"
            for r in rounds
        ]
        # What the acquisition said about a round: e.g. that its scores could not tell candidates apart.
        notes = [f"- Round {r.number}: {r.summary['acquisition']['note']}" for r in rounds
                 if ((r.summary or {}).get("acquisition") or {}).get("note")]
        started = min((r.started_at for r in rounds), default=None)
        finished = max((r.finished_at for r in rounds if r.finished_at), default=None)
        wall_seconds = (finished - started).total_seconds() if started and finished else None
    lines = [
        f"# Campaign `{config.name}`", "",
        f"*{current().line(wall_seconds=wall_seconds)}*", "",
        (f"Objective: `{objective}`. Candidates: {config.candidates.model_dump(exclude_none=True)}. "
         f"DFT preset `{config.dft.preset}`; {config.model.architecture} ensembles of {config.model.members} on "
         f"{config.model.atom_features} atom features; "
         f"acquisition `{config.acquisition.function}`{' (cost-aware)' if config.acquisition.cost_aware else ''}, "
         f"batches of {config.acquisition.batch}."), "",
        (f"Status: **{status}** ({stop_reason(engine, campaign_id, config) or 'more rounds to run'}). "
         f"{state.spent} of {config.budget} calculations spent, **{state.hits} hits**."), "",
        *([rates, ""] if (rates := hit_rates(rows)) else []),
    ]
    figures = [discovery_curve(rows, out / "discovery.png", title=str(objective))] if rows else []
    for target in objective.targets:
        figure = _parity(rows, target, out / f"parity-{target}.png")
        if figure:
            figures.append(figure)
    for target in config.modelled_targets:
        figure = _dos_figure(engine, campaign_id, target, out / f"spectra-{target}.png")
        if figure:
            figures.append(figure)
    for level in filter(None, map(hull_level, objective.targets)):
        figure = _hull_figure(engine, level, rows, out / f"hull-{level}.png")
        if figure:
            figures.append(figure)
    lines += [f"![{figure.stem}]({figure.name})" for figure in figures] + [""]
    counted = " | ".join(count.heading for count in RoundCount)
    lines += ["## Rounds", "",
              f"| round | status | chosen by | models (target: model_versions.id) | {counted} |",
              "|---:|---|---|---|" + "---:|" * len(RoundCount), *round_lines, "", *([*notes, ""] if notes else [])]
    targets = objective.targets
    header = " | ".join(f"{t} predicted | {t} computed" for t in targets)
    lines += ["## Ledger", "", "Predicted: the ensemble's mean ± std when the candidate was chosen.", "",
              f"| round | # | structure | formula | function | score | rank | {header} | hit | status | DFT s |",
              "|" + "---:|" * 7 + "---|---|" * len(targets) + "---|---|---:|"]
    for row in rows:
        cells = []
        for target in targets:
            guess = row.predicted.get(target)
            cells.append(f"{guess['mean']:.3g} ± {guess['std']:.2g}" if guess else "")
            cells.append(_number(row.outcome.get("computed", {}).get(target)))
        hit = "yes" if row.outcome.get("hit") else ("" if row.outcome else "?")
        reason = f" ({row.outcome['reason']})" if row.outcome.get("reason") else ""
        lines.append(f"| {row.round} | {row.batch} | {row.structure_id} | {row.formula} | {row.function} "
                     f"| {row.score:.3g} | {row.rank} | {' | '.join(cells)} | {hit} | {row.status}{reason} "
                     f"| {_number(row.dft_seconds)} |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
