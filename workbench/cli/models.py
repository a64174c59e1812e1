"""Model commands: featurize, train, predict."""

from typing import Annotated

import typer
from rich.table import Table

from workbench.cli.shared import (
    DEFAULT_JOBS,
    StructureIdsOption,
    WhereOption,
    app,
    console,
    id_list,
    invocation,
    pairs,
    print_table,
    progress_bar,
)
from workbench.featurize.config import ATOM_FEATURES, DEFAULT_ATOM_FEATURES, GraphConfig
from workbench.models.architectures import ARCHITECTURES, DEFAULT_ARCHITECTURE
from workbench.train.config import TrainConfig
from workbench.train.progress import EnsembleProgress

AtomFeaturesOption = Annotated[str, typer.Option(help="Atom features: " + "; ".join(
    f"{name}, {description}" for name, description in ATOM_FEATURES.items()) + ".")]


def _atom_features(name: str) -> str:
    if name not in ATOM_FEATURES:
        raise typer.BadParameter(f"--atom-features must be one of {', '.join(ATOM_FEATURES)}, not {name!r}")
    return name


def _architecture(name: str) -> str:
    if name not in ARCHITECTURES:
        raise typer.BadParameter(f"--arch must be one of {', '.join(ARCHITECTURES)}, not {name!r}")
    return name


def _backbone_options(values: list[str]) -> dict:
    import yaml

    # Values are read as YAML scalars: "hidden=128" gives an int, "normalization=layer" a string.
    return {name: yaml.safe_load(value) for name, value in pairs(values, "--backbone").items()}


@app.command()
def featurize(
    ctx: typer.Context,
    cutoff: Annotated[float, typer.Option(help="Neighbour search radius, Å.")] = GraphConfig.cutoff,
    max_neighbors: Annotated[int, typer.Option(help="Neighbours kept per atom.")] = GraphConfig.max_neighbors,
    keep_ties: Annotated[bool, typer.Option(help="Keep the whole shell of the k-th neighbour.")] = False,
    max_cutoff: Annotated[float, typer.Option(help="Radius tried once for sites short of neighbours.")]
    = GraphConfig.max_cutoff,
    atom_features: AtomFeaturesOption = DEFAULT_ATOM_FEATURES,
    jobs: Annotated[int, typer.Option(help="Worker processes.")] = DEFAULT_JOBS,
) -> None:
    """Build and cache the crystal graphs the store does not have yet for this featurizer."""
    from workbench.featurize.cache import featurize_structures
    from workbench.featurize.featurizer import Featurizer

    featurizer = Featurizer(GraphConfig(cutoff=cutoff, max_neighbors=max_neighbors,
                                        keep_ties=keep_ties, max_cutoff=max_cutoff),
                            atom_features=_atom_features(atom_features))
    engine = invocation(ctx).engine
    with progress_bar(jobs) as (progress, executor):
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
    ctx: typer.Context,
    target: Annotated[str, typer.Option(help="Target to learn.")],
    name: Annotated[str, typer.Option(help="Registered model name in MLflow.")],
    arch: Annotated[str, typer.Option(
        help=f"Backbone: {', '.join(ARCHITECTURES)}.")] = DEFAULT_ARCHITECTURE,
    backbone: Annotated[list[str] | None, typer.Option(
        help="Backbone setting NAME=VALUE, e.g. hidden=128 (repeatable).")] = None,
    atom_features: AtomFeaturesOption = DEFAULT_ATOM_FEATURES,
    spectrum_latent: Annotated[int | None, typer.Option(
        help="Spectrum targets: predict an autoencoder code of this size (AE-DOS; 12 as published).")] = None,
    members: Annotated[int, typer.Option(help="Ensemble members.")] = TrainConfig.members,
    epochs: Annotated[int, typer.Option(help="Most epochs per member.")] = TrainConfig.epochs,
    patience: Annotated[int, typer.Option(help="Early stopping patience, epochs.")] = TrainConfig.patience,
    batch_size: Annotated[int, typer.Option()] = TrainConfig.batch_size,
    learning_rate: Annotated[float, typer.Option()] = TrainConfig.learning_rate,
    decay_patience: Annotated[int, typer.Option(
        help=f"Multiply the learning rate by {TrainConfig.decay_factor} after this many epochs without a better "
             "validation loss (0: constant).",
        min=0)] = TrainConfig.decay_patience,
    bootstrap: Annotated[bool, typer.Option(help="Train each member on a bootstrap sample.")] = False,
    latent_neighbours: Annotated[int, typer.Option(
        help="Scalar and spectrum targets: add each crystal's mean distance to its K nearest training crystals "
             "in the members' embedding to the spread, weighed on the validation split (0: off).",
        min=0)] = TrainConfig.latent_neighbours,
    seed: Annotated[int, typer.Option(help="Seed of member 0 (member i uses seed + i).")] = 0,
    pooling: Annotated[str, typer.Option(help="Scalar targets: mean (intensive) or sum (extensive).")] = "mean",
    conserve_total: Annotated[bool, typer.Option(help="Per-site targets: values sum to 0 per structure.")]
    = False,
    prior: Annotated[str | None, typer.Option(
        help="Scalar targets: learn the residual against a fit of this stored scalar target and of "
             "composition (e.g. sevennet.formation_energy_per_atom), added back when predicting.")] = None,
    champion: Annotated[bool, typer.Option(help="Make this version the champion.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    jobs: Annotated[int, typer.Option(
        help="Worker processes for featurizing and for training the members side by side.")] = DEFAULT_JOBS,
) -> None:
    """Train an ensemble on the store's labels, evaluate it, register it in MLflow."""
    from workbench.models.model import featurizer_for
    from workbench.train.pipeline import TrainRequest, train_and_register

    run = invocation(ctx)
    run.settings.ensure_home()
    request = TrainRequest(
        target=target, name=name, architecture=_architecture(arch), pooling=pooling, conserve_total=conserve_total,
        champion=champion, device=device, backbone=_backbone_options(backbone or []),
        featurizer=featurizer_for(arch, _atom_features(atom_features)),
        spectrum_latent=spectrum_latent,
        train=TrainConfig(members=members, epochs=epochs, patience=patience, batch_size=batch_size,
                          learning_rate=learning_rate, decay_patience=decay_patience, bootstrap=bootstrap, seed=seed,
                          latent_neighbours=latent_neighbours),
        workers=jobs, prior=prior,
    )
    ensemble = EnsembleProgress(members, epochs)
    with progress_bar(jobs) as (progress, executor):
        task = progress.add_task(f"training {members} members", total=ensemble.total)

        def on_epoch(member: int, epoch: int, loss: float, val: float) -> None:
            ensemble.epoch(member, epoch)
            progress.update(task, completed=ensemble.completed, description=(
                f"member {member}: epoch {epoch} train {loss:.4f} validation {val:.4f}; {ensemble.describe_left()}"))

        def on_member(member: int, history) -> None:
            ensemble.finished(member, len(history.train_loss))
            progress.update(task, completed=ensemble.completed, total=ensemble.total)

        result = train_and_register(run.engine, run.settings, request, executor=executor,
                                    on_epoch=on_epoch, on_member=on_member)
    console.print(f"Registered {result.name} version {result.registry_version} "
                  f"({', '.join(result.aliases)}), run {result.run_id}")
    table = Table("metric (test split)", "value")
    for key, value in sorted(result.metrics.items()):
        table.add_row(key, f"{value:.4g}")
    print_table(table)


@app.command()
def predict(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="NAME@alias or NAME/version.")],
    ids: StructureIdsOption = "",
    where: WhereOption = "",
    jobs: Annotated[int, typer.Option(help="Worker processes for featurizing.")] = DEFAULT_JOBS,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Write a registered model's predictions (mean and std) into the store."""
    from workbench.train.pipeline import predict_into_store

    run = invocation(ctx)
    with progress_bar(jobs) as (progress, executor):
        task = progress.add_task(f"predicting with {model}", total=None)
        written = predict_into_store(
            run.engine, run.settings, model, structure_ids=id_list(ids), where=where or None,
            executor=executor, device=device, on_total=lambda n: progress.update(task, total=n),
            on_progress=lambda n: progress.advance(task, n),
        )
    console.print(f"Wrote {written} predictions of {model}")
