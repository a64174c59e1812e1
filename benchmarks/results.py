"""Proof on real data: every architecture beside CGCNN and the baselines, through the product's path.

Run from the repository root:

    .venv/bin/python benchmarks/results.py [--models cgcnn schnet ...] [--only perovskites ...] [--quick]
        [--resume] [--seeds 0 1 2]

Each data set is imported once into a fresh SQLite store with ``import_file``; then, for
each model, featurized with the model's featurizer and trained with ``train_and_register``
(MLflow in a temporary folder) on the same deduplicated splits: 20 % test, 10 %
validation for early stopping and calibrating the ensemble's spread, the rest training;
three split and training seeds. Reported: test metrics of the ensemble and of the
baselines, the ensemble's uncertainty quality, parameters of one member and training
seconds per epoch.

Every finished seed of a (data set, model) pair is merged into ``docs/results.json`` at
once, and ``docs/results.md`` is rendered from all of it, so data sets and models can be
run in separate sittings. A run replaces an earlier record of the same pair; with
``--resume`` it trains only the seeds the pair lacks and adds them. Processes started with
``--resume`` and different ``--seeds`` fill one pair side by side (the record is locked
while it is merged).

Data sets, in ``WORKBENCH_DATA_DIR`` (default ``../shared/data``):

- perovskites, ``heat_ref`` (eV per cell, sum pooling): perov5/labeled_val.csv; and
  perovskites-25, -50, -75: a random 25, 50, 75 % of its rows, the points of its learning curve
- phonon DOS (66 bins): jarvis_phdos, the 663 entries that have one
- electronic DOS (300 bins): jarvis_dos50, a smoke test of the representation
- MOF DDEC charges (per site, neutral cells): mof_ddec, the 250 smallest MOFs, and the 500 smallest
"""

import argparse
import contextlib
import csv
import fcntl
import functools
import gzip
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import ase.db
import numpy as np
import torch
from ase.collections import dcdft
from ase.io import read as ase_read
from sqlalchemy import select

from workbench.dft.presets import load_preset
from workbench.dft.references import REFERENCE_SOURCE, ReferenceUnavailable, reference_atoms
from workbench.dft.runner import RunOptions, queue_calculations, run_queued, select_structures
from workbench.featurize import Featurizer, featurize_structures
from workbench.io.entries import Entry
from workbench.io.importer import import_entries, import_file
from workbench.io.readers import ReadOptions
from workbench.models.model import featurizer_for
from workbench.settings import Settings
from workbench.store import migrate
from workbench.store.engine import make_engine, session_scope
from workbench.store.schema import Structure, TargetKind
from workbench.structures.crystal import Crystal
from workbench.train.config import TrainConfig
from workbench.train.dataset import load_labeled_graphs
from workbench.train.pipeline import (
    TrainRequest,
    attach_prior,
    fit_prior,
    prior_metrics,
    train_and_register,
)
from workbench.train.splits import grouped_split

REPO = Path(__file__).resolve().parents[1]
DATA = Settings().data_dir
SEEDS = (0, 1, 2)
PROGRESS_METRICS = ("mae", "coverage_2std", "autoencoder_mae", "seconds_per_epoch")


SEVENNET_PRIOR = "sevennet.formation_energy_per_atom"
CHGNET_PRIOR = "chgnet.formation_energy_per_atom"
# Batches run at once while a prior is computed (each loads the potential once).
PRIOR_JOBS = 2


@dataclass(frozen=True)
class Model:
    """One row of the comparison: an architecture on a featurizer."""

    name: str
    architecture: str
    description: str
    atom_features: str = "cgcnn"
    # None: the neighbours the backbone declares (graph_for), 12 unless it says otherwise.
    max_neighbors: int | None = None
    # A spectrum head predicting an autoencoder's code of this size (AE-ALIGNN).
    spectrum_latent: int | None = None
    kinds: tuple[TargetKind, ...] = (TargetKind.SCALAR, TargetKind.SPECTRUM, TargetKind.PER_SITE)
    # A preset's scalar target (`<preset>.<quantity>`, computed over the store first)
    # whose fit the ensemble learns the residual of.
    prior: str | None = None
    # False: no ensemble, the prior's line alone (fitted on the training split) is evaluated.
    trains: bool = True
    # TrainConfig fields this row trains with instead of the data set's (a fine-tuned
    # pretrained network needs a lower learning rate and fewer epochs than one from scratch).
    train: tuple[tuple[str, object], ...] = ()
    # Backbone options (TrainRequest.backbone).
    backbone: tuple[tuple[str, object], ...] = ()

    def featurizer(self) -> Featurizer:
        featurizer = featurizer_for(self.architecture, self.atom_features)
        if self.max_neighbors is None:
            return featurizer
        return replace(featurizer, graph=replace(featurizer.graph, max_neighbors=self.max_neighbors))


# The 300-epoch perovskite row, which the rows below it vary one setting of.
LONG_PEROVSKITE = Model(
    "cgcnn-chgnet-chgnet-prior-neighbours-long", "cgcnn", ("`cgcnn-chgnet-chgnet-prior-neighbours` "
    "trained longer: at most 300 epochs, patience 40 (the perovskites' data set gives 120 and 15)"),
    atom_features="chgnet", prior=CHGNET_PRIOR, kinds=(TargetKind.SCALAR,),
    train=(("latent_neighbours", 10), ("epochs", 300), ("patience", 40)))


# The 150-epoch per-site row.
LONG_CHARGES = Model(
    "cgcnn-chgnet-long", "cgcnn", ("`cgcnn-chgnet` trained longer: at most 150 epochs, patience 25 (the MOF "
    "charges' data set gives 40 and 8)"), atom_features="chgnet", kinds=(TargetKind.PER_SITE,),
    train=(("epochs", 150), ("patience", 25)))


def long_perovskite_variant(suffix: str, change: str, train: tuple[tuple[str, object], ...] = (),
                            backbone: tuple[tuple[str, object], ...] = ()) -> Model:
    """LONG_PEROVSKITE with `train` and `backbone` added, named as its family with `-<suffix>`
    in place of `-long`."""
    return replace(LONG_PEROVSKITE, name=f"{LONG_PEROVSKITE.name.removesuffix('-long')}-{suffix}",
                   description=f"`{LONG_PEROVSKITE.name}` {change}", train=LONG_PEROVSKITE.train + train,
                   backbone=LONG_PEROVSKITE.backbone + backbone)


def on_backbone(row: Model, architecture: str) -> Model:
    """``row`` on another backbone (one that reads its atom features), named after it."""
    return replace(row, name=row.name.replace(row.architecture, architecture, 1), architecture=architecture,
                   description=f"`{row.name}` on the {architecture} backbone")


MODELS = {model.name: model for model in (
    Model("cgcnn", "cgcnn", "CGCNN (64 atom features, 3 convolutions, Gaussian edges to 8 Å), 12 neighbours"),
    Model("schnet", "schnet", "SchNet (PyG's continuous filters on our periodic edges), 12 neighbours"),
    Model("megnet", "megnet", "MEGNet (node, edge and state updates, set2set readout), 12 neighbours"),
    # 16 nearest neighbours, as in the ALIGNN DOS paper.
    Model("alignn", "alignn", "ALIGNN (edge-gated line graph then crystal graph), 16 neighbours",
          max_neighbors=16),
    Model("ocrystalnet", "ocrystalnet", "OCrystalNet (OFM-feature atoms, atom-bond messages), 12 neighbours",
          atom_features="ofm"),
    Model("ogcnn", "cgcnn", "OGCNN (OFM features in the CGCNN backbone), 12 neighbours", atom_features="ofm"),
    Model("ae-alignn", "alignn", "AE-ALIGNN (ALIGNN predicting a 12-entry autoencoder code), 16 neighbours",
          max_neighbors=16, spectrum_latent=12, kinds=(TargetKind.SPECTRUM,)),
    Model("neighbour-mlp", "neighbour-mlp", "the neighbour-MLP baseline of Karaguesian et al. (2021)",
          kinds=(TargetKind.PER_SITE,)),
    Model("sevennet-prior", "cgcnn", ("the prior alone, no network: the target's fit on SevenNet-0's formation "
          "energy per atom (a line) and on element counts (ridge weights, penalty by leave-one-out error), "
          "fitted on the training split (before 2b58a00 the line alone: 0.352 ± 0.015)"),
          prior=SEVENNET_PRIOR, trains=False, kinds=(TargetKind.SCALAR,)),
    Model("cgcnn-prior", "cgcnn", ("CGCNN ensemble learning the residual of the target against that fit "
          "(`--prior sevennet.formation_energy_per_atom`), 12 neighbours"),
          prior=SEVENNET_PRIOR, kinds=(TargetKind.SCALAR,)),
    Model("cgcnn-sevennet", "cgcnn", ("CGCNN backbone on pretrained SevenNet-0 atom features (its embedding "
          "before the CGCNN vector in each atom's features), 12 neighbours"), atom_features="sevennet"),
    Model("cgcnn-sevennet-prior", "cgcnn", ("both: CGCNN on SevenNet-0 atom features learning the residual "
          "against the prior's fit"), atom_features="sevennet", prior=SEVENNET_PRIOR, kinds=(TargetKind.SCALAR,)),
    Model("cgcnn-prior-neighbours", "cgcnn", ("`cgcnn-prior` whose spread also weighs each crystal's mean "
          "distance to its 10 nearest training crystals in the members' embedding (`--latent-neighbours 10`)"),
          prior=SEVENNET_PRIOR, kinds=(TargetKind.SCALAR,), train=(("latent_neighbours", 10),)),
    Model("cgcnn-chgnet", "cgcnn", ("CGCNN backbone on pretrained CHGNet 0.3.0 atom features (its 64 atom "
          "features after the last atom convolution, before the CGCNN vector in each atom's features), "
          "12 neighbours"), atom_features="chgnet"),
    Model("cgcnn-chgnet-prior", "cgcnn", ("both: CGCNN on CHGNet 0.3.0 atom features learning the residual "
          "against the SevenNet prior's fit"), atom_features="chgnet", prior=SEVENNET_PRIOR,
          kinds=(TargetKind.SCALAR,)),
    Model("cgcnn-chgnet-prior-neighbours", "cgcnn", ("`cgcnn-chgnet-prior` whose spread also weighs each "
          "crystal's distance to its 10 nearest training crystals (`--latent-neighbours 10`)"),
          atom_features="chgnet", prior=SEVENNET_PRIOR, kinds=(TargetKind.SCALAR,),
          train=(("latent_neighbours", 10),)),
    Model("chgnet-prior", "cgcnn", ("the prior alone, as `sevennet-prior` but on CHGNet 0.3.0's formation "
          "energy per atom"), prior=CHGNET_PRIOR, trains=False, kinds=(TargetKind.SCALAR,)),
    Model("cgcnn-chgnet-chgnet-prior-neighbours", "cgcnn", ("`cgcnn-chgnet-prior-neighbours` learning the "
          "residual against CHGNet's fit instead of SevenNet's (`--prior chgnet.formation_energy_per_atom`): "
          "features and prior from one model"), atom_features="chgnet", prior=CHGNET_PRIOR,
          kinds=(TargetKind.SCALAR,), train=(("latent_neighbours", 10),)),
    LONG_PEROVSKITE,
    long_perovskite_variant("decay", "with a decaying learning rate: halved after 10 epochs without a better "
                            "validation loss (`--decay-patience 10`)", train=(("decay_patience", 10),)),
    long_perovskite_variant("members4", "with 4 members rather than 3", train=(("members", 4),)),
    long_perovskite_variant("hidden128", "with a wider backbone: 128 atom features in each convolution "
                            "rather than 64", backbone=(("hidden", 128),)),
    long_perovskite_variant("batch32", "with batches of 32 rather than 64", train=(("batch_size", 32),)),
    long_perovskite_variant("wd", "with weight decay 0.01 (AdamW's decoupled decay; the data sets train "
                            "with none)", train=(("weight_decay", 0.01),)),
    long_perovskite_variant("lr1e-3", "at learning rate 0.001 rather than 0.002",
                            train=(("learning_rate", 1e-3),)),
    *(long_perovskite_variant(f"k{count}", f"with the distance to the {count} nearest training crystals rather "
                              "than 10 in its spread (`--latent-neighbours`)", train=(("latent_neighbours", count),))
      for count in (5, 20)),
    long_perovskite_variant("bootstrap", "with each member trained on a bootstrap resample of the training split "
                            "(`--bootstrap`)", train=(("bootstrap", True),)),
    on_backbone(LONG_PEROVSKITE, "megnet"),
    on_backbone(LONG_PEROVSKITE, "schnet"),
    Model("schnet-chgnet", "schnet", ("SchNet starting from CHGNet 0.3.0's atom features (a linear map of them "
          "in place of its element embedding), 12 neighbours"), atom_features="chgnet"),
    Model("alignn-chgnet", "alignn", "ALIGNN starting from CHGNet 0.3.0's atom features, 16 neighbours",
          atom_features="chgnet", max_neighbors=16),
    LONG_CHARGES,
    on_backbone(LONG_CHARGES, "schnet"),
    # The settings of benchmarks/finetune.md, where 6 epochs at 0.001 beat CGCNN's 60; an
    # epoch over 3,000 structures costs minutes on a CPU core, hence the short budget.
    Model("sevennet-finetune", "sevennet", ("SevenNet-0 without its readout under our scalar head, every "
          "weight fine-tuned (`--arch sevennet`, `finetune: all`), every neighbour within its 5 Å cutoff; "
          "batches of 16 at learning rate 0.001"), kinds=(TargetKind.SCALAR,),
          train=(("epochs", 6), ("patience", 2), ("batch_size", 16), ("learning_rate", 1e-3)),
          backbone=(("finetune", "all"),)),
)}


@dataclass(frozen=True)
class Aim:
    """What the models should reach on a data set, as an issue asks: an MAE at most, and
    where it asks for them, a range of 2σ coverage and a least ρ(|error|, std)."""

    issue: str
    unit: str
    mae_at_most: float
    coverage: tuple[float, float] | None = None
    rho_at_least: float | None = None

    def bounds(self) -> dict[str, tuple[str, str, Callable[[float], bool]]]:
        """Metric -> (its column, the bound in words, the check) for each bound asked for."""
        bounds = {"mae": ("MAE", f"MAE ≤ {self.mae_at_most:g} {self.unit}", lambda value: value <= self.mae_at_most)}
        if self.coverage:
            low, high = self.coverage
            bounds["coverage_2std"] = ("coverage 2σ", f"coverage 2σ {low:.2f}–{high:.2f}",
                                       lambda value: low <= value <= high)
        if self.rho_at_least is not None:
            bounds["spearman_error_std"] = ("ρ(error, std)", f"ρ(|error|, std) ≥ {self.rho_at_least:g}",
                                            lambda value: value >= self.rho_at_least)
        return bounds


@dataclass(frozen=True)
class DataSet:
    name: str
    target: str
    kind: TargetKind
    load: Callable[..., str]
    train: TrainConfig
    note: str
    pooling: str = "mean"
    conserve_total: bool = False
    # Published test MAE (same units) per model name, with where it comes from.
    published: tuple[dict[str, float], str] | None = None
    aim: Aim | None = None
    # A random share of another data set's rows: its runs are points of that one's learning curve.
    share_of: str | None = None
    share: float = 1.0


# The smallest MOFs (training time grows with the number of atoms), and twice as many
# (2.6 times the atoms) with the same training and aim: what more data brings.
MOF_COUNT = 250
MOF_LARGER_COUNT = 500
MOF_TRAINING = TrainConfig(members=3, epochs=40, patience=8, batch_size=8)
MOF_AIM = Aim("issue 17", "e", 0.04)


# Shares of the labeled perovskites that the learning curve trains on, each a prefix of
# one fixed shuffle of the rows (so each share holds the smaller ones).
PEROVSKITE_SHARES = (0.25, 0.5, 0.75)
PEROVSKITE_SHUFFLE_SEED = 0


def load_perovskites(engine, workdir: Path, quick: bool, executor, *, share: float = 1.0) -> str:
    source = DATA / "perov5" / "labeled_val.csv"
    if quick or share < 1.0:
        with source.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        if share < 1.0:
            order = np.random.default_rng(PEROVSKITE_SHUFFLE_SEED).permutation(len(rows))
            rows = [rows[index] for index in sorted(order[:round(share * len(rows))])]
        rows = rows[:300] if quick else rows
        source = workdir / "perovskites_subset.csv"
        with source.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    import_file(engine, source, source="castelli", options=ReadOptions(targets={"heat_ref": "heat_ref"}),
                executor=executor)
    return ""


def load_phonon_dos(engine, workdir: Path, quick: bool, executor) -> str:
    with gzip.open(DATA / "jarvis_phdos" / "jarvis_tc_phdos.json.gz", "rt") as handle:
        entries = json.load(handle)
    path = workdir / "phdos.db"
    with ase.db.connect(str(path)) as database:
        kept = 0
        for jid, entry in sorted(entries.items()):
            if not entry.get("phonon_dos"):
                continue
            atoms = ase_read(io.StringIO(entry["poscar"].replace("\\n", "\n")), format="vasp")
            spectrum = np.array([float(v) for v in entry["phonon_dos"].split(";")])
            database.write(atoms, data={"phonon_dos": spectrum, "wb_sources": [["jarvis", jid]]})
            kept += 1
            if quick and kept >= 120:
                break
    database.metadata = {"workbench": {"targets": {"phonon_dos": {"key": "phonon_dos", "kind": "spectrum"}}}}
    report = import_file(engine, path, source="jarvis", options=ReadOptions(), skip_bad=True)
    return (f"{kept} entries with a phonon DOS; {len(report.skipped)} left out because an earlier entry is the "
            "same crystal (by the store's dedup) with a different spectrum.")


def load_electronic_dos(engine, workdir: Path, quick: bool, executor) -> str:
    # The 300-bin representation of Kaundinya et al.: -5..10 eV around the Fermi level.
    grid = (np.linspace(-5.0, 10.0, 300, endpoint=False), "eV")
    import_file(engine, DATA / "jarvis_dos50" / "id_prop.csv", source="jarvis",
                options=ReadOptions(targets={"value": "dos"}, grids={"dos": grid}))
    return ""


def load_mof_charges(engine, workdir: Path, quick: bool, executor, *, count: int) -> str:
    count = 40 if quick else count
    with tarfile.open(DATA / "mof_ddec" / "ddec_mofs_1000.tar.gz") as archive:
        members = sorted((m for m in archive.getmembers() if m.isfile()), key=lambda m: (m.size, m.name))[:count]
        archive.extractall(workdir / "mofs", members=members, filter="data")
    skipped = sum(len(import_file(engine, workdir / "mofs" / member.name, source="core-mof",
                                  options=ReadOptions(), skip_bad=True).skipped) for member in members)
    return (f"{count} files; {skipped} left out because another file holds the same framework "
            "(by the store's dedup) with different charges.")


PEROVSKITES = DataSet(
    "perovskites", "heat_ref", TargetKind.SCALAR, load_perovskites, TrainConfig(members=3, epochs=120, patience=15),
    pooling="sum", note="Castelli perovskites, heat of formation per 5-atom cell (eV).",
    published=({"alignn": 0.029, "schnet": 0.034, "megnet": 0.035, "cgcnn": 0.045},
               ("Published: Matbench perovskites (the same Castelli set, about 15k training "
                "structures against our 2,650), eV/cell; OCrystalNet reported about two thirds of "
                "ALIGNN's parameters.")),
    aim=Aim("issue 17", "eV/cell", 0.05, (0.90, 0.97), 0.3))


def perovskite_share(share: float) -> DataSet:
    """PEROVSKITES on ``share`` of its labeled rows (a point of its learning curve, without its aim)."""
    percent = round(100 * share)
    return replace(PEROVSKITES, name=f"{PEROVSKITES.name}-{percent}",
                   load=functools.partial(load_perovskites, share=share), published=None, aim=None,
                   note=(f"{PEROVSKITES.note} A random {percent} % of the labeled rows (a prefix of one fixed "
                         f"shuffle): a point of the learning curve in the `{PEROVSKITES.name}` section."),
                   share_of=PEROVSKITES.name, share=share)


DATA_SETS = (
    PEROVSKITES,
    DataSet("phonon-dos", "phonon_dos", TargetKind.SPECTRUM, load_phonon_dos,
            TrainConfig(members=3, epochs=150, patience=20), note="JARVIS phonon DOS, 66 bins normalised to max 1."),
    DataSet("electronic-dos", "dos", TargetKind.SPECTRUM, load_electronic_dos,
            TrainConfig(members=3, epochs=80, patience=15, batch_size=8),
            note="50 JARVIS electronic DOS, 300 bins: a smoke test of the representation, no accuracy claim."),
    DataSet("mof-charges", "charges", TargetKind.PER_SITE, functools.partial(load_mof_charges, count=MOF_COUNT),
            MOF_TRAINING, conserve_total=True,
            note=f"CoRE-MOF DDEC6 charges (e), the {MOF_COUNT} smallest MOFs, neutrality enforced.", aim=MOF_AIM),
    DataSet("mof-charges-500", "charges", TargetKind.PER_SITE,
            functools.partial(load_mof_charges, count=MOF_LARGER_COUNT), MOF_TRAINING, conserve_total=True,
            note=(f"CoRE-MOF DDEC6 charges (e), the {MOF_LARGER_COUNT} smallest MOFs (those of `mof-charges` and "
                  "the next ones by size), neutrality enforced: what twice the structures bring."), aim=MOF_AIM),
    *(perovskite_share(share) for share in PEROVSKITE_SHARES),
)


def import_references(engine) -> list[str]:
    """Elemental references for the stored elements whose reference state ASE cannot build
    (B, Ga, Mn, S, Te among the perovskites), from ASE's dcdft collection: the Delta test's
    PBE structures (its Mn and S are simplified 2- and 1-atom cells). The runner adds ASE's
    reference states for the other elements."""
    with session_scope(engine) as session:
        elements = {element for row in session.scalars(select(Structure.elements)) for element in row}
    unbuildable = []
    for element in sorted(elements):
        try:
            reference_atoms(element)
        except ReferenceUnavailable:
            unbuildable.append(element)
    entries = [Entry(row=element, external_id=element, crystal=Crystal.from_ase(dcdft[element]))
               for element in unbuildable]
    if entries:
        import_entries(engine, entries, source=REFERENCE_SOURCE, file="ase.collections.dcdft", options=ReadOptions())
    return unbuildable


def recorded_train(train: dict) -> dict:
    """A record's training settings, with the ``TrainConfig`` fields added since it was
    made at their defaults (a new field's default keeps the behaviour it had before)."""
    return {field.name: field.default for field in fields(TrainConfig) if field.name != "seed"} | train


def prepare_prior(engine, settings: Settings, prior: str) -> str:
    """Compute ``prior`` over every stored structure with its preset, as
    ``workbench dft run --preset <preset> --all`` does (formation energies against elemental
    references computed with the same preset); returns a note on what it did."""
    started = time.perf_counter()
    preset = load_preset(prior.partition(".")[0])  # a preset's target reads <preset>.<quantity>
    from_dcdft = import_references(engine)
    calculation_ids = queue_calculations(engine, select_structures(engine, preset.name, every=True), preset)
    report = run_queued(engine, preset, RunOptions.from_settings(settings, jobs=PRIOR_JOBS),
                        calculation_ids=calculation_ids)
    minutes = (time.perf_counter() - started) / 60
    failed = f"; {len(report.failed)} failed ({', '.join(sorted(set(report.failed.values())))})" if report.failed else ""
    missing = (f"; no reference for {', '.join(sorted(report.references_missing))}"
               if report.references_missing else "")
    return (f"The prior `{prior}` computed first with the `{preset.name}` preset over the store "
            f"({len(report.done)} single points with the elemental references, batches of {preset.batch_size}, "
            f"{PRIOR_JOBS} at once, {minutes:.1f} min under a load average of {load_average()}{failed}{missing}; "
            f"{report.formation_energies} formation energies; references of {', '.join(from_dcdft) or 'no element'} "
            "from ASE's dcdft collection, the others ASE's reference states).")


def evaluate_prior(engine, request: TrainRequest) -> dict[str, float]:
    """The prior alone on ``request``'s test split: its fit (line and element weights) on
    the training split, on the same split and graphs as ``train_and_register`` (``mae``,
    ``rmse``, the line, the ridge penalty the element weights were fitted with)."""
    labeled = load_labeled_graphs(engine, request.target, request.featurizer)
    attach_prior(engine, request.prior, labeled.structure_ids, labeled.data, target=request.target,
                 kind=labeled.kind)
    split = grouped_split(labeled.structure_ids, labeled.dedup_keys, validation=request.validation_fraction,
                          test=request.test_fraction, seed=request.split_seed)
    train, test = labeled.subset(split.train), labeled.subset(split.test)
    fit = fit_prior(request.prior, train, per_atom=request.pooling == "mean")
    metrics = prior_metrics(fit, test)
    # How much of the target's variation the prior follows, on the test split.
    correlation = np.corrcoef([item.prior.item() for item in test], [item.y.item() for item in test])[0, 1]
    return {"mae": metrics["prior.mae"], "rmse": metrics["prior.rmse"], "prior.slope": fit.slope,
            "prior.intercept": fit.intercept, "prior.penalty": fit.penalty, "prior.pearson_r": float(correlation),
            "parameters": float(2 + len(fit.element_weights))}


def load_average() -> str:
    return " / ".join(f"{value:.1f}" for value in os.getloadavg())


def run_data_set(data_set: DataSet, models: list[Model], seeds: list[int], quick: bool,
                 executor: ProcessPoolExecutor, record: Callable[..., None], resumed: dict[str, dict] | None) -> None:
    """Import ``data_set`` once, then train ``seeds`` of every model on it, recording each
    seed as it ends.

    With ``resumed`` (the record at the start, keys ``"<data set>/<model>"``), a pair keeps
    its recorded seeds and trains only the ones it lacks; splits depend on the seed alone,
    so they are the same ones. Without it, a pair's first trained seed replaces its record.
    """
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        settings = Settings(home=workdir / "home", database_url=f"sqlite:///{workdir / 'store.db'}",
                            mlflow_tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
        engine = make_engine(settings.database_url)
        migrate.upgrade(engine)
        import_note = data_set.load(engine, workdir, quick, executor)
        with engine.connect() as connection:
            # Only the data set's target: a prior's preparation stores other targets too.
            structures = connection.exec_driver_sql(
                "SELECT count(*) FROM target_values JOIN target_definitions "
                "ON target_values.target_id = target_definitions.id WHERE target_definitions.name = ?",
                (data_set.target,)).scalar_one()
        data_set_train = replace(data_set.train, epochs=4) if quick else data_set.train
        commit = git_commit()  # of the code that runs, even if HEAD moves meanwhile
        prepared: dict[str, tuple[str, float]] = {}  # prior -> (note, minutes)
        for model in models:
            pair = f"{data_set.name}/{model.name}"
            train = replace(data_set_train, **dict(model.train))
            if quick:
                train = replace(train, epochs=min(train.epochs, data_set_train.epochs))
            run = {"data_set": data_set.name, "model": model.name, "target": data_set.target,
                   "structures": structures, "import_note": import_note,
                   "train": {key: value for key, value in asdict(train).items() if key != "seed"},
                   "machine": machine(), "quick": quick}
            todo = seeds
            if resumed and pair in resumed:
                earlier = resumed[pair]
                for key in ("structures", "train", "quick"):
                    if (recorded_train(earlier[key]) if key == "train" else earlier[key]) != run[key]:
                        raise SystemExit(f"--resume {pair}: the recorded run has {key} {earlier[key]!r}, "
                                         f"this one {run[key]!r}; run it afresh without --resume")
                todo = [seed for seed in seeds if seed not in {entry["seed"] for entry in earlier["seeds"]}]
            if not todo:
                print(f"{pair}: seeds {seeds} are recorded already", flush=True)
                continue
            prepare_minutes = 0.0
            if model.prior:
                if model.prior not in prepared:
                    started = time.perf_counter()
                    note = prepare_prior(engine, settings, model.prior)
                    prepared[model.prior] = (note, (time.perf_counter() - started) / 60)
                    # The preparation counts once, with the first model that needs it.
                    prepare_minutes = prepared[model.prior][1]
                run["prepare_note"] = prepared[model.prior][0]
            started = time.perf_counter()
            featurizer = model.featurizer()
            featurize_structures(engine, featurizer, executor=executor)
            # This process's featurizing counts once, with its first seed.
            overhead_minutes = (time.perf_counter() - started) / 60 + prepare_minutes
            for position, seed in enumerate(todo):
                seed_started = time.perf_counter()
                request = TrainRequest(target=data_set.target, name=f"{data_set.name}-{model.name}-{seed}",
                                       train=replace(train, seed=seed), architecture=model.architecture,
                                       featurizer=featurizer, backbone=dict(model.backbone),
                                       pooling=data_set.pooling,
                                       conserve_total=data_set.conserve_total,
                                       spectrum_latent=model.spectrum_latent,
                                       validation_fraction=0.1, test_fraction=0.2, split_seed=seed, device="cpu",
                                       prior=model.prior)
                metrics = (train_and_register(engine, settings, request, executor=executor).metrics if model.trains
                           else evaluate_prior(engine, request))
                print(f"{data_set.name} {model.name} seed {seed}: " + ", ".join(
                    f"{key}={metrics[key]:.4g}" for key in PROGRESS_METRICS if key in metrics), flush=True)
                # Recorded after every seed, so a run stopped early keeps the seeds it finished.
                record(pair, run, {"seed": seed, "commit": commit, "metrics": metrics, "load_average": load_average()},
                       minutes=overhead_minutes + (time.perf_counter() - seed_started) / 60,
                       featurize_minutes=overhead_minutes, replace=resumed is None and position == 0)
                overhead_minutes = 0.0
        engine.dispose()


def merge_seed(earlier: dict | None, run: dict, entry: dict, minutes: float, featurize_minutes: float) -> dict:
    """``run`` with ``earlier``'s seeds (if any) and ``entry``, in seed order; its minutes
    and featurizing add to theirs."""
    earlier = earlier or {"seeds": [], "minutes": 0.0, "featurize_minutes": 0.0}
    seeds = [seed for seed in earlier["seeds"] if seed["seed"] != entry["seed"]] + [entry]
    return run | {"seeds": sorted(seeds, key=lambda seed: seed["seed"]),
                  "minutes": earlier["minutes"] + minutes,
                  "featurize_minutes": earlier["featurize_minutes"] + featurize_minutes,
                  "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def seed_range(seeds: list[int]) -> str:
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    if seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"seeds {seeds[0]}–{seeds[-1]}"
    return "seeds " + ", ".join(map(str, seeds))


def commits(run: dict) -> str:
    """The commit that trained the run's seeds, or each commit with the seeds it trained."""
    trained: dict[str, list[int]] = {}
    for seed in run["seeds"]:
        trained.setdefault(seed["commit"], []).append(seed["seed"])
    if len(trained) == 1:
        return next(iter(trained))
    return ", ".join(f"{commit} ({seed_range(seeds)})" for commit, seeds in trained.items())


def git_commit() -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip()


def machine() -> str:
    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU; "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def summary(values: list[float | None], digits: int = 4) -> str:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} ± {statistics.stdev(values):.2g}"


def column(run: dict, key: str) -> list[float | None]:
    return [seed["metrics"].get(key) for seed in run["seeds"]]


# Metrics that describe the data set or the run, not the model: never compared across models.
NOT_MODEL_METRICS = ("baseline_", "parameters", "seconds_per_epoch")


def degenerate_metrics(entries: list[dict]) -> list[str]:
    """Metrics whose every seed is the same for every model of a data set: they cannot tell
    models apart there (e.g. a band-gap error when every model predicts a zero gap)."""
    if len(entries) < 2:
        return []
    shared = set.intersection(*(set(seed["metrics"]) for run in entries for seed in run["seeds"]))
    degenerate = []
    for key in sorted(shared):
        if key.startswith(NOT_MODEL_METRICS):
            continue
        values = {tuple(round(value, 6) if value is not None else None for value in column(run, key)) for run in entries}
        if len(values) == 1:
            degenerate.append(key)
    return degenerate


def seed_count(run: dict) -> str:
    """A note on a run stopped before all its seeds were trained."""
    return "" if len(run["seeds"]) == len(SEEDS) else f" ({len(run['seeds'])} of {len(SEEDS)} seeds)"


def mean(run: dict, key: str) -> float | None:
    values = [value for value in column(run, key) if value is not None and np.isfinite(value)]
    return statistics.fmean(values) if values else None


# Decimals of the aim table: enough to see which side of a bound a mean lies.
AIM_DIGITS = {"mae": 4, "coverage_2std": 3, "spearman_error_std": 3}


def aim_check(data_set: DataSet, entries: list[dict]) -> tuple[list[str], str]:
    """A table of each row's seed means against ``data_set.aim`` and a sentence on it."""
    aim = data_set.aim
    bounds = aim.bounds()
    asked = ", ".join(words for _, words, _ in bounds.values())
    lines = [f"Against the aim of {aim.issue} ({asked}), seed means (✓ met, ✗ not, – no spread to judge):", "",
             "| model | seeds | " + " | ".join(column for column, _, _ in bounds.values()) + " |",
             "|---|---:|" + "---:|" * len(bounds)]
    met = []
    for run in entries:
        cells, passed = [], True
        for key, (_, _, check) in bounds.items():
            value = mean(run, key)
            passed = passed and value is not None and check(value)
            cells.append("–" if value is None else f"{value:.{AIM_DIGITS[key]}f} {'✓' if check(value) else '✗'}")
        if passed:
            met.append(f"`{run['model']}`")
        lines.append(f"| `{run['model']}` | {len(run['seeds'])} | " + " | ".join(cells) + " |")
    # A row screened on fewer seeds than the most any row has is not quoted as the lowest.
    most_seeds = max(len(run["seeds"]) for run in entries)
    best = min((run for run in entries if len(run["seeds"]) == most_seeds),
               key=lambda run: mean(run, "mae") if mean(run, "mae") is not None else np.inf)
    meets = {1: "meets it", 2: "meets both", 3: "meets all three"}[len(bounds)]
    sentence = (f"{data_set.name} `{data_set.target}` ({aim.issue}'s aim: {asked}): {', '.join(met) or 'no row'} "
                f"{meets}; the lowest MAE is `{best['model']}`'s {mean(best, 'mae'):.3g} ({len(best['seeds'])} seed(s)), "
                f"coverage {summary(column(best, 'coverage_2std'), 2)}, ρ {summary(column(best, 'spearman_error_std'), 2)}.")
    return lines + [""], sentence


def loads(run: dict) -> str:
    """The load averages (1, 5, 15 min) recorded at the end of each seed, where recorded."""
    recorded = [f"{seed['load_average']} (seed {seed['seed']})" for seed in run["seeds"] if "load_average" in seed]
    return f"; load average at the end of each seed: {', '.join(recorded)}" if recorded else ""


def own_training(run: dict) -> str:
    """A sentence on the training settings the row sets itself (``Model.train``), with the
    values recorded, or an empty string."""
    keys = [key for key, _ in MODELS[run["model"]].train]
    changed = ", ".join(f"{key.replace('_', ' ')} {run['train'][key]:g}" if isinstance(run["train"][key], float)
                        else f"{key.replace('_', ' ')} {run['train'][key]}" for key in keys)
    return f"Trained with {changed} (the section's other settings)." if keys else ""


def power_law(data_set: DataSet, line: np.ndarray, structures: int) -> str:
    """The power law of ``line`` (slope, intercept of log MAE against log structures) in
    words, extrapolated to the aim's MAE where it falls, in structures and as a multiple of
    ``structures`` (the full data set's)."""
    slope, intercept = line
    words = f"MAE ∝ structures^{slope:.2f}"
    if not data_set.aim or slope >= 0:
        return words
    needed = np.exp((np.log(data_set.aim.mae_at_most) - intercept) / slope)
    return (f"{words}, which, extrapolated, reaches the aim's {data_set.aim.mae_at_most:g} {data_set.aim.unit} at about "
            f"{needed:,.0f} labeled structures ({needed / structures:.1f} times the full set's)")


def learning_curve(data_set: DataSet, runs: dict[str, dict], data_sets: dict[str, DataSet]) -> list[str]:
    """For each model run on ``data_set`` and on random shares of it: a table of seed means
    against the labeled structures, and the power law ``MAE ∝ structures^-b`` fitted (least
    squares in log-log) through the points that have every seed, extrapolated to the aim."""
    shares = sorted((other for other in data_sets.values() if other.share_of == data_set.name),
                    key=lambda other: other.share) + [data_set]
    lines = []
    for model in MODELS:
        points = [runs[key] for other in shares if (key := f"{other.name}/{model}") in runs]
        if len(points) < 2 or points[-1]["data_set"] != data_set.name:
            continue
        if not lines:
            lines += [("Learning curve: the same rows trained on a random share of the labeled structures "
                       "(data sets `" + "`, `".join(other.name for other in shares[:-1]) + "`, split as above), "
                       "seed means:"), ""]
        lines += [f"`{model}`:", "", "| labeled structures | seeds | MAE | coverage 2σ | ρ(error, std) |",
                  "|---:|---:|---:|---:|---:|"]
        lines += [f"| {run['structures']:,} | {len(run['seeds'])} | {summary(column(run, 'mae'))} | "
                  f"{summary(column(run, 'coverage_2std'), 2)} | {summary(column(run, 'spearman_error_std'), 2)} |"
                  for run in points]
        complete = [run for run in points if len(run["seeds"]) == len(SEEDS)]
        if len(complete) >= 3:
            sizes = np.log([run["structures"] for run in complete])
            maes = np.log([mean(run, "mae") for run in complete])
            full = points[-1]["structures"]
            fitted = power_law(data_set, np.polyfit(sizes, maes, 1), full)
            # The slope of the last step alone: where the curve bends, the fit's average misleads.
            last = power_law(data_set, np.polyfit(sizes[-2:], maes[-2:], 1), full)
            lines += ["", (f"Fitted through the {len(complete)} points with every seed: {fitted}; between the last "
                           f"two alone: {last}.")]
        lines.append("")
    return lines


def render(runs: dict[str, dict], data_sets: dict[str, DataSet]) -> str:
    entries_of = {name: [runs[key] for model in MODELS if (key := f"{name}/{model}") in runs] for name in data_sets}
    aims = {name: aim_check(data_sets[name], entries) for name, entries in entries_of.items()
            if entries and data_sets[name].aim}
    lines = [
        "# Results on real data",
        "",
        ("Every architecture beside CGCNN and the baselines, trained through the product's own path "
         "(`import_file` → `featurize_structures` → `train_and_register`), on the same deduplicated "
         "splits per seed (20 % test, 10 % validation for early stopping and for calibrating the "
         "ensemble's spread, the rest training). Mean ± standard deviation over "
         f"{len(SEEDS)} seeds (split and training; fewer where a row says so). Test-split metrics; coverage is the share of "
         "test values within 2 calibrated standard deviations (0.95 if the spread were exact Gaussian "
         "errors); ρ is the Spearman correlation between error and predicted std."),
        "",
        ("Produced by `benchmarks/results.py` (raw numbers: [results.json](results.json)); each "
         "section says when and where its runs were made. Models not listed for a data set have "
         "not been run on it yet; the command is `benchmarks/results.py --only DATA_SET --models MODEL`, "
         "and `--resume` trains the seeds a row lacks (with `--seeds`, several processes can share them). "
         "Seconds per epoch are wall times of training runs that may have shared the machine with "
         "other jobs; the like-for-like throughput comparison is "
         "[benchmarks/architectures.md](../benchmarks/architectures.md)."),
        "",
        *(["Summary against the issues' aims (seed means):", ""] if aims else []),
        *[f"- {sentence}" for _, sentence in aims.values()],
        *([""] if aims else []),
        "Models:",
        "",
    ]
    lines += [f"- `{model.name}`: {model.description}." for model in MODELS.values()]
    lines.append("")
    for data_set in data_sets.values():
        entries = entries_of[data_set.name]
        if not entries:
            continue
        first = entries[0]
        train = first["train"]
        lines += [f"## {data_set.name}: `{data_set.target}`", "",
                  (f"{data_set.note} {first['import_note']} {first['structures']} labeled structures; "
                   f"ensembles of {train['members']}, at most {train['epochs']} epochs (patience "
                   f"{train['patience']}), batches of {train['batch_size']}."), ""]
        published, reference = data_set.published or ({}, "")
        header = "| model | MAE | coverage 2σ | ρ(error, std) | parameters | s / epoch | minutes (all seeds) |"
        if published:
            header += " published MAE |"
        lines += [header, "|---" + "|---:" * (header.count("|") - 2) + "|"]
        for run in entries:
            cells = [f"`{run['model']}`{seed_count(run)}", summary(column(run, "mae")), summary(column(run, "coverage_2std"), 2),
                     summary(column(run, "spearman_error_std"), 2),
                     f"{statistics.fmean(column(run, 'parameters')):,.0f}",
                     summary(column(run, "seconds_per_epoch"), 2), f"{run['minutes']:.1f}"]
            if published:
                cells.append(f"{published[run['model']]:g}" if run["model"] in published else "")
            lines.append("| " + " | ".join(cells) + " |")
        baselines = sorted(key for key in first["seeds"][0]["metrics"] if key.startswith("baseline_"))
        for key in baselines:
            name = key.removeprefix("baseline_").removesuffix(".mae").replace("_", " ")
            lines.append(f"| {name} (baseline) | {summary(column(first, key))} |" + " |" * (header.count("|") - 3))
        lines.append("")
        if reference:
            missing = sorted(published.keys() - {run["model"] for run in entries})
            if missing:
                reference += (f" Not run here yet: {', '.join(missing)} (for training cost see "
                              "[benchmarks/architectures.md](../benchmarks/architectures.md)).")
            lines += [reference, ""]
        if data_set.name in aims:
            lines += aims[data_set.name][0]
        lines += learning_curve(data_set, runs, data_sets)
        parameters = {run["model"]: statistics.fmean(column(run, "parameters")) for run in entries}
        if {"ocrystalnet", "alignn"} <= parameters.keys():
            ratio = parameters["ocrystalnet"] / parameters["alignn"]
            lines += [f"Here OCrystalNet has {ratio:.2f} of ALIGNN's parameters.", ""]
        autoencoded = [run for run in entries if "autoencoder_mae" in run["seeds"][0]["metrics"]]
        if autoencoded:
            lines += [("Autoencoder alone (reconstructing the test spectra) and end to end (the model's "
                      "predicted code, decoded), as Table I of the AE-ALIGNN paper:"), "",
                      "| model | autoencoder MAE | end-to-end MAE |", "|---|---:|---:|"]
            lines += [f"| `{run['model']}` | {summary(column(run, 'autoencoder_mae'))} | "
                      f"{summary(column(run, 'mae'))} |" for run in autoencoded]
            lines.append("")
        degenerate = degenerate_metrics(entries)
        if degenerate:
            lines += [(f"Degenerate here: {', '.join(f'`{key}`' for key in degenerate)} came out the same, seed "
                       "for seed, for every model, so it measures the data set and not the model; it is flagged "
                       "in the tables below, not shown."), ""]
        for run in entries:
            # Per-element rows only for elements in every seed's test split.
            metrics = sorted(set.intersection(*(set(seed["metrics"]) for seed in run["seeds"])))
            lines += [f"### {data_set.name}, `{run['model']}`{seed_count(run)}", "",
                      (f"Commit {commits(run)}, {run['date']}, {run['machine']}; {run['minutes']:.1f} min "
                       f"for {len(run['seeds'])} seed(s) ({run['featurize_minutes']:.1f} min featurizing"
                       f"{' and computing the prior' if run.get('prepare_note') else ''})"
                       f"{'; quick smoke run' if run['quick'] else ''}"
                       f"{loads(run)}."), "",
                      *([run["prepare_note"], ""] if run.get("prepare_note") else []),
                      *([sentence, ""] if (sentence := own_training(run)) else []),
                      "| metric | value |", "|---|---:|"]
            lines += [f"| {key} | {'degenerate (same for every model)' if key in degenerate else summary(column(run, key))} |"
                      for key in metrics]
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    csv.field_size_limit(sys.maxsize)  # CIF columns are long
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small subsets and 4 epochs, a smoke run (default --out: .workbench/results-quick.md)")
    parser.add_argument("--out", type=Path, help="markdown to write, its JSON beside it (default: docs/results.md)")
    parser.add_argument("--only", nargs="*", help="data sets to run (default: all)")
    parser.add_argument("--models", nargs="*", default=["cgcnn"], choices=sorted(MODELS),
                        help="models to run on each data set they apply to")
    parser.add_argument("--render", action="store_true", help="only write the markdown from the JSON")
    parser.add_argument("--resume", action="store_true",
                        help="train only the seeds a pair recorded in the JSON lacks (same settings required)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS), choices=SEEDS,
                        help="seeds to train (default: all); with --resume, several processes can fill one pair")
    args = parser.parse_args()
    out = args.out or (REPO / ".workbench" / "results-quick.md" if args.quick else REPO / "docs" / "results.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    record_path = out.with_suffix(".json")
    data_sets = {data_set.name: data_set for data_set in DATA_SETS}

    def read_runs() -> dict[str, dict]:
        return json.loads(record_path.read_text()) if record_path.exists() else {}

    def write_page(runs: dict[str, dict]) -> None:
        out.write_text(render(runs, data_sets) + "\n")
        print(f"wrote {out}", flush=True)

    def record(key: str, run: dict, entry: dict, *, minutes: float, featurize_minutes: float, replace: bool) -> None:
        """Merge one trained seed into the pair ``key`` (its first seed of a fresh run replaces
        the pair), re-reading the record under a lock so that other processes' seeds stay."""
        with locked(record_path.parent):
            runs = read_runs()
            runs[key] = merge_seed(None if replace else runs.get(key), run, entry, minutes, featurize_minutes)
            record_path.write_text(json.dumps(runs, indent=1, sort_keys=True) + "\n")
            write_page(runs)

    if args.render:
        write_page(read_runs())
        return
    resumed = read_runs() if args.resume else None
    with ProcessPoolExecutor(2) as executor:
        for name in args.only or data_sets:
            data_set = data_sets[name]
            models = [MODELS[name] for name in args.models if data_set.kind in MODELS[name].kinds]
            if models:
                run_data_set(data_set, models, sorted(set(args.seeds)), args.quick, executor, record, resumed)


@contextlib.contextmanager
def locked(folder: Path):
    """An exclusive lock on ``folder`` (held by one process at a time)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


if __name__ == "__main__":
    main()
