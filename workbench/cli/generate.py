"""Candidate generation: ``workbench generate substitute | predict | prototypes``."""

from typing import Annotated

import typer
from rich.table import Table

from workbench.cli.shared import app, console, invocation, print_table, progress_bar

generate_app = typer.Typer(help="Candidate structures by element substitution into prototypes.",
                           no_args_is_help=True)
app.add_typer(generate_app, name="generate")

LabelOption = Annotated[str, typer.Option(help="Source label of the candidates.")]
ChargeOption = Annotated[bool, typer.Option(
    help="Keep only charge-balanced decorations (pymatgen's oxidation-state guesses).")]


def _report(report) -> None:
    filtered = f", {report.charge_filtered} not charge-balanced" if report.charge_filtered else ""
    known = f", {report.known} generated before" if report.known else ""
    console.print(f"Structure {report.parent_id}: {report.decorations} decorations{filtered}{known}: "
                  f"{report.new_structures} new structures, {report.matched} equal to stored ones (linked)")


@generate_app.command("substitute")
def substitute(
    ctx: typer.Context,
    prototype: Annotated[str, typer.Option(
        help="A stored structure id, aflow:<label> (see `workbench generate prototypes`) or a structure file.")],
    site: Annotated[list[str], typer.Option(
        help="ELEMENT=E1,E2,...: the elements put on every site the prototype's ELEMENT occupies; "
        "repeatable. Elements not named stay.")],
    label: LabelOption = "generated",
    charge_balanced: ChargeOption = False,
) -> None:
    """Every combination of the --site choices in the prototype, into the store (deduplicated)."""
    from workbench.generate.prototypes import resolve_prototype
    from workbench.generate.store import store_decorations
    from workbench.generate.substitute import (
        ChargeBalance,
        count_explicit,
        explicit_substitutions,
        parse_sites,
    )

    engine = invocation(ctx).engine
    parent = resolve_prototype(engine, prototype)
    sites = parse_sites(site, parent.elements)
    with progress_bar() as (progress, _):
        task = progress.add_task(f"{prototype}", total=count_explicit(sites))
        report = store_decorations(
            engine, parent, explicit_substitutions(sites), source=label,
            charge_balance=ChargeBalance() if charge_balanced else None,
            on_progress=lambda n: progress.advance(task, n))
    _report(report)


@generate_app.command("predict")
def predict(
    ctx: typer.Context,
    where: Annotated[str, typer.Option(
        help="SQL condition on the structures table choosing the parents, run read-only.")] = "",
    source: Annotated[str, typer.Option(help="Or: every structure of this source label is a parent.")] = "",
    threshold: Annotated[float, typer.Option(
        help="Smallest substitution probability kept (pymatgen's SubstitutionPredictor).")] = 1e-3,
    max_per_parent: Annotated[int, typer.Option(help="Most probable substitutions kept per parent.")] = 100,
    label: LabelOption = "generated",
    charge_balanced: ChargeOption = False,
) -> None:
    """Substitutions pymatgen's predictor (its bundled probability table) finds likely, for each parent."""
    from pymatgen.core.structure_prediction.substitution_probability import SubstitutionPredictor

    from workbench.errors import InputError
    from workbench.generate.prototypes import source_structures, stored_prototype
    from workbench.generate.store import store_decorations
    from workbench.generate.substitute import ChargeBalance, predicted_substitutions
    from workbench.store.queries import structures_where

    if bool(where) == bool(source):
        raise typer.BadParameter("choose the parents with exactly one of --where or --source")
    engine = invocation(ctx).engine
    parents = structures_where(engine, where, option="--where") if where else source_structures(engine, source)
    if not parents:
        raise typer.BadParameter("no structures match", param_hint="--where" if where else "--source")
    predictor = SubstitutionPredictor(threshold=threshold)
    balance = ChargeBalance() if charge_balanced else None
    with progress_bar() as (progress, _):
        task = progress.add_task("parents", total=len(parents))
        for parent_id in parents:
            parent = stored_prototype(engine, parent_id, str(parent_id))
            try:
                substitutions = predicted_substitutions(parent.crystal, predictor)[:max_per_parent]
            except InputError as error:
                console.print(f"[yellow]Structure {parent_id} skipped: {error}")
            else:
                _report(store_decorations(engine, parent, substitutions, source=label, charge_balance=balance))
            progress.advance(task)


@generate_app.command("prototypes")
def prototypes(
    search: Annotated[str, typer.Argument(
        help="Show the prototypes whose label, mineral, Pearson symbol or Strukturbericht contains this.")] = "",
) -> None:
    """The AFLOW prototype library pymatgen ships (use one as --prototype aflow:<label>)."""
    from collections import Counter

    from workbench.generate.prototypes import aflow_library

    table = Table("label", "formula", "sites", "Pearson", "Strukturbericht", "mineral")
    needle = search.lower()
    for entry in aflow_library():
        fields = (entry.label, entry.mineral, entry.pearson, entry.strukturbericht)
        if needle in " ".join(fields).lower():
            counts = Counter(entry.crystal.species)
            formula = "".join(f"{element}{count if count > 1 else ''}" for element, count in sorted(counts.items()))
            table.add_row(entry.label, formula, str(entry.crystal.nsites), entry.pearson,
                          entry.strukturbericht, entry.mineral)
    print_table(table)
