"""Training on real data: deduplicated splits, deterministic ensembles, metrics, baselines."""

import time
from itertools import pairwise, permutations

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from tests.conftest import charged_perovskite_cifs, perovskite_rows, write_csv
from tests.dft_helpers import LATTICE, l12
from workbench.errors import InputError, NotFound
from workbench.featurize import Featurizer, featurize_structures
from workbench.io.entries import Entry, Label
from workbench.io.importer import import_entries, import_file
from workbench.io.readers import ReadOptions
from workbench.models import ModelConfig
from workbench.store.engine import session_scope
from workbench.store.schema import Graph, TargetKind
from workbench.structures.crystal import Crystal
from workbench.train.baselines import CompositionBaseline, ElementAverageBaseline, MeanBaseline
from workbench.train.config import TrainConfig, available_cores
from workbench.train.dataset import load_labeled_graphs
from workbench.train.ensemble import Ensemble, train_ensemble
from workbench.train.metrics import band_gap, per_site_metrics, scalar_metrics, spectrum_metrics
from workbench.train.pipeline import MIN_LABELS, TrainRequest, train_and_register
from workbench.train.splits import grouped_split

FEATURIZER = Featurizer()
SMALL = {"hidden": 16, "layers": 2}
QUICK = TrainConfig(members=2, epochs=6, patience=3, batch_size=32, learning_rate=3e-3)


@pytest.fixture
def perovskites(engine, tmp_path):
    write_csv(tmp_path / "perov.csv", perovskite_rows(160), ["material_id", "cif", "heat_ref"])
    import_file(engine, tmp_path / "perov.csv", source="castelli", options=ReadOptions())
    featurize_structures(engine, FEATURIZER)
    return load_labeled_graphs(engine, "heat_ref", FEATURIZER)


def _store_labeled(engine, crystals: dict) -> None:
    """Import ``{name: atoms}``, each labeled ``toy.value`` (its index)."""
    entries = [Entry(row=name, external_id=name, crystal=Crystal.from_ase(atoms),
                     labels={"toy.value": Label(TargetKind.SCALAR, float(index), "eV")})
               for index, (name, atoms) in enumerate(crystals.items())]
    import_entries(engine, entries, source="test", file="tests", options=ReadOptions())


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_bad_request_is_refused_before_any_structure_is_featurized(engine, settings):
    _store_labeled(engine, {f"{a}3{b}": l12(a, b) for a, b in pairwise(LATTICE)})

    def train(**request) -> None:
        train_and_register(engine, settings, TrainRequest(name="toy", device="cpu", workers=1, **request))

    with pytest.raises(InputError, match="pooling 'max' is not one of mean, sum") as refused:
        train(target="toy.value", pooling="max")
    assert refused.value.field == "pooling"
    with pytest.raises(NotFound, match="no target named 'toy.gap' in the store"):
        train(target="toy.gap")
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Graph)) == 0


@pytest.mark.parametrize("backend", ["sqlite"])
def test_labels_that_leave_no_training_structure_are_refused_by_name(engine, settings):
    """10 distinct alloys: a test half and a validation 45 % take whole groups, 5 each."""
    _store_labeled(engine, {f"{a}3{b}": l12(a, b) for a, b in list(permutations(LATTICE, 2))[:MIN_LABELS]})
    request = TrainRequest(target="toy.value", name="toy", device="cpu", workers=1, test_fraction=0.5,
                           validation_fraction=0.45)
    with pytest.raises(InputError, match="10 labeled structures fall in 10 dedup groups") as refused:
        train_and_register(engine, settings, request)
    assert refused.value.field == "validation_fraction"


def test_grouped_split_keeps_duplicates_together():
    ids = list(range(100))
    groups = [f"key{i // 4}" for i in ids]  # 25 groups of 4
    split = grouped_split(ids, groups, validation=0.1, test=0.2, seed=3)
    assert sorted(split.train + split.validation + split.test) == ids
    for part in (split.train, split.validation, split.test):
        assert all(i + 4 - i % 4 - 1 in part for i in part)  # whole groups only
    assert len(split.test) == 20 and len(split.validation) == 12
    assert grouped_split(ids, groups, validation=0.1, test=0.2, seed=3) == split


def test_ensemble_trains_deterministically_and_predicts_mean_and_std(perovskites):
    split = grouped_split(perovskites.structure_ids, perovskites.dedup_keys, validation=0.15, test=0.15, seed=0)
    train, validation = perovskites.subset(split.train), perovskites.subset(split.validation)
    config = ModelConfig("cgcnn", "scalar", "heat_ref", FEATURIZER.key, backbone=SMALL,
                         head_options={"pooling": "sum"})
    device = torch.device("cpu")
    ensemble, histories = train_ensemble(config, TargetKind.SCALAR, train, validation, QUICK, device=device)
    again, _ = train_ensemble(config, TargetKind.SCALAR, train, validation, QUICK, device=device)
    test = perovskites.subset(split.test)
    mean, std = ensemble.predict(test)
    assert mean.shape == std.shape == (len(test),) and (std > 0).all()
    torch.testing.assert_close(again.predict(test)[0], mean)  # same seed, same model
    assert all(h.validation_loss[h.best_epoch] == min(h.validation_loss) for h in histories)
    assert histories[0].train_loss[-1] < histories[0].train_loss[0]

    y = torch.cat([item.y for item in test]).numpy()
    metrics = scalar_metrics(y, mean.numpy(), std.numpy())
    assert set(metrics) == {"mae", "rmse", "spearman_error_std", "coverage_1std", "coverage_2std"}
    assert np.isfinite(metrics["mae"])


def test_learning_rate_decays_after_epochs_without_a_better_validation_loss(perovskites):
    split = grouped_split(perovskites.structure_ids, perovskites.dedup_keys, validation=0.15, test=0.15, seed=0)
    train, validation = perovskites.subset(split.train), perovskites.subset(split.validation)
    config = ModelConfig("cgcnn", "scalar", "heat_ref", FEATURIZER.key, backbone=SMALL)
    decaying = TrainConfig(members=1, epochs=12, patience=12, batch_size=32, learning_rate=3e-3, decay_patience=1)
    _, (history,) = train_ensemble(config, TargetKind.SCALAR, train, validation, decaying, device=torch.device("cpu"))
    rates = history.learning_rate
    assert rates[0] == decaying.learning_rate and min(rates) < decaying.learning_rate
    for epoch in range(1, len(rates)):
        if rates[epoch] < rates[epoch - 1]:  # only after a validation loss no better than the best before it
            assert rates[epoch] == pytest.approx(rates[epoch - 1] * decaying.decay_factor)
            assert history.validation_loss[epoch - 1] >= min(history.validation_loss[:epoch - 1])
    _, constant = train_ensemble(config, TargetKind.SCALAR, train, validation, QUICK, device=torch.device("cpu"))
    assert all(set(member.learning_rate) == {QUICK.learning_rate} for member in constant)


def test_ensemble_saves_and_loads(perovskites, tmp_path):
    config = ModelConfig("cgcnn", "scalar", "heat_ref", FEATURIZER.key, backbone=SMALL)
    quick = TrainConfig(members=2, epochs=1, batch_size=32)
    ensemble, _ = train_ensemble(config, TargetKind.SCALAR, perovskites.data[:64], [], quick,
                                 device=torch.device("cpu"))
    ensemble.save(tmp_path / "ensemble")
    loaded = Ensemble.load(tmp_path / "ensemble")
    torch.testing.assert_close(loaded.predict(perovskites.data[64:80])[0], ensemble.predict(perovskites.data[64:80])[0])


def test_baselines(perovskites):
    y = np.array([item.y.item() for item in perovskites.data])
    numbers = [item.atomic_numbers.numpy() for item in perovskites.data]
    assert MeanBaseline().fit(list(y)).predict(3) == pytest.approx(np.full(3, y.mean()))
    fitted = CompositionBaseline(extensive=True).fit(numbers, y).predict(numbers)
    assert np.mean(np.abs(fitted - y)) < np.mean(np.abs(y - y.mean()))  # composition explains some
    sites = np.array([8, 8, 1, 6])
    per_site = ElementAverageBaseline().fit(sites, np.array([-1.0, -0.8, 0.4, 0.2]))
    assert per_site.predict(np.array([8, 1, 26])) == pytest.approx([-0.9, 0.4, -0.3])


def test_spectrum_and_per_site_metrics():
    energies = np.linspace(-5, 10, 301)[:-1]
    gapped = np.where((energies > -0.5) & (energies < 1.5), 0.0, 0.1)
    assert band_gap(energies, gapped) == pytest.approx(2.0, abs=0.06)
    assert band_gap(energies, np.full(300, 0.1)) == 0.0
    y = np.stack([gapped, np.full(300, 0.1)])
    metrics = spectrum_metrics(y, y * 1.1, np.full_like(y, 0.01), energies)
    assert metrics["relative_error_mean_dos"] == pytest.approx(0.1)
    assert metrics["mae_band_gap"] == pytest.approx(0.0)
    site = per_site_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 3.0]), np.ones(3), np.array([8, 8, 1]))
    assert site["mae_O"] == pytest.approx(0.25) and site["mae_H"] == 0.0 and site["coverage_1std"] == 1.0


def test_per_site_charges_train_with_the_neutrality_constraint(engine, tmp_path):
    for material_id, cif, _ in charged_perovskite_cifs(12):  # formal oxidation states: neutral cells
        (tmp_path / f"{material_id}.cif").write_text(cif)
        import_file(engine, tmp_path / f"{material_id}.cif", source="oxi", options=ReadOptions())
    featurize_structures(engine, FEATURIZER)
    charges = load_labeled_graphs(engine, "charges", FEATURIZER)
    config = ModelConfig("cgcnn", "per_site", "charges", FEATURIZER.key, backbone=SMALL,
                         head_options={"conserve_total": True})
    ensemble, _ = train_ensemble(config, TargetKind.PER_SITE, charges.data[:9], charges.data[9:],
                                 TrainConfig(members=2, epochs=3, batch_size=4), device=torch.device("cpu"))
    mean, _ = ensemble.predict(charges.data[9:])
    assert mean.shape == (sum(item.num_nodes for item in charges.data[9:]),)
    start = 0
    for item in charges.data[9:]:
        assert abs(mean[start:start + item.num_nodes].sum().item()) < 1e-3  # each cell stays neutral
        start += item.num_nodes


def _emt_labeled(kind: TargetKind) -> list:
    """Rattled fcc cells labeled by a real (EMT) calculator: energy per cell, forces per
    site, and as a spectrum each cell's histogram of interatomic distances (2-5 Å)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from workbench.featurize.atom_features import cgcnn_feature_table
    from workbench.featurize.data import graph_to_data
    from workbench.structures.crystal import Crystal
    from workbench.train.kinds import KINDS

    data = []
    for index, (metal, a) in enumerate([("Cu", 3.61), ("Al", 4.05), ("Ni", 3.52), ("Ag", 4.09), ("Au", 4.08),
                                        ("Pd", 3.89), ("Pt", 3.92), ("Cu", 3.70), ("Al", 4.00), ("Ni", 3.60)]):
        atoms = bulk(metal, "fcc", a=a, cubic=True)
        atoms.rattle(0.05, seed=index)
        atoms.calc = EMT()
        distances = atoms.get_all_distances(mic=True)[np.triu_indices(len(atoms), 1)]
        spectrum = np.histogram(distances, bins=BINS, range=(2.0, 5.0))[0].astype(float)
        item = graph_to_data(FEATURIZER.graph_of(Crystal.from_ase(atoms)), cgcnn_feature_table())
        item.y = KINDS[kind].label(atoms.get_potential_energy(), {
            TargetKind.SCALAR: None, TargetKind.SPECTRUM: spectrum, TargetKind.PER_SITE: atoms.get_forces()}[kind])
        data.append(item)
    return data


BINS = 12


@pytest.mark.parametrize("kind", list(TargetKind))
def test_each_target_kind_has_one_complete_entry(kind, tmp_path):
    """Head and options, labels, scaling, training, metrics, baselines, plot and the rows of
    ``predictions``, all from the kind's entry."""
    from workbench.models.heads import HEADS
    from workbench.store.schema import Prediction, TargetDefinition
    from workbench.train.kinds import KINDS, kind_of_head
    from workbench.train.pipeline import TrainRequest, evaluate

    assert set(KINDS) == set(TargetKind)
    spec = KINDS[kind]
    assert spec.kind is kind and spec.head in HEADS and kind_of_head(spec.head) is spec
    definition = TargetDefinition(name="y", kind=kind, length=BINS, site_shape=[3])
    request = TrainRequest(target="y", name="kinds", pooling="sum")
    config = ModelConfig("cgcnn", spec.head, "y", FEATURIZER.key, backbone=SMALL,
                         head_options=spec.head_options(definition, request))
    data = _emt_labeled(kind)
    ensemble, _ = train_ensemble(config, kind, data[:7], data[7:], TrainConfig(members=2, epochs=2, batch_size=4),
                                 device=torch.device("cpu"))
    metrics = evaluate(kind, ensemble, data[:7], data[7:], None, request, tmp_path, device=torch.device("cpu"))
    assert np.isfinite(metrics["mae"]) and any(key.startswith("baseline_") for key in metrics)
    assert (tmp_path / spec.plot_file).stat().st_size > 0

    mean, std = (tensor.numpy() for tensor in ensemble.predict(data[7:]))
    means, stds = spec.per_structure(mean, std, [item.num_nodes for item in data[7:]])
    assert len(means) == len(stds) == 3
    for item, value in zip(data[7:], means, strict=True):
        shape = {TargetKind.SCALAR: (), TargetKind.SPECTRUM: (BINS,), TargetKind.PER_SITE: (item.num_nodes, 3)}
        assert np.shape(value) == shape[kind]
    columns = spec.prediction_columns(means[0], stds[0])
    assert set(columns) == {"mean", "std", "mean_array", "std_array"} <= set(Prediction.__table__.columns.keys())
    assert (columns["mean_array"] is None) == (not spec.array_valued)


def test_members_train_in_worker_processes_as_they_would_here(perovskites):
    """Two worker processes give the members this process gives, for the same seeds; the
    epochs of both come back for the progress display."""
    train, validation = perovskites.data[:96], perovskites.data[96:128]
    config = ModelConfig("cgcnn", "scalar", "heat_ref", FEATURIZER.key, backbone=SMALL)
    quick = TrainConfig(members=2, epochs=2, batch_size=32)
    epochs, finished = [], []
    threads = torch.get_num_threads()
    share = max(1, available_cores() // 2)  # each worker's: sums in the same order
    torch.set_num_threads(share)
    try:
        here, _ = train_ensemble(config, TargetKind.SCALAR, train, validation, quick, device=torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    there, histories = train_ensemble(
        config, TargetKind.SCALAR, train, validation, quick, device=torch.device("cpu"), workers=2,
        on_epoch=lambda member, epoch, *_: epochs.append((member, epoch)),
        on_member=lambda member, history: finished.append(member))
    assert sorted(epochs) == [(0, 0), (0, 1), (1, 0), (1, 1)] and sorted(finished) == [0, 1]
    assert [len(history.train_loss) for history in histories] == [2, 2]
    for mine, theirs in zip(here.members, there.members, strict=True):
        for name, weight in mine.state_dict().items():
            torch.testing.assert_close(theirs.state_dict()[name], weight, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(there.predict(validation)[1], here.predict(validation)[1], rtol=1e-3, atol=1e-5)

    # On a Dask cluster's executor, as the campaign flow trains them (an in-process cluster here).
    from distributed import Client

    # Its threads share this process's torch threads: the workers' share, or the sums differ.
    torch.set_num_threads(share)
    try:
        with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
            on_dask, _ = train_ensemble(config, TargetKind.SCALAR, train, validation, quick,
                                        device=torch.device("cpu"), executor=client.get_executor())
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(on_dask.predict(validation)[0], there.predict(validation)[0], rtol=1e-3, atol=1e-4)


def test_training_defaults_live_in_one_table():
    """The campaign's model settings, a replay and the command line take theirs from
    ``workbench/train/config.py``."""
    import dataclasses
    import inspect

    from workbench.campaign.config import ModelSettings
    from workbench.campaign.replay import ReplayConfig
    from workbench.cli.models import train as train_command
    from workbench.train.config import CAMPAIGN_TRAINING

    settings = ModelSettings()
    assert settings.train_config(seed=CAMPAIGN_TRAINING.seed) == CAMPAIGN_TRAINING
    assert ReplayConfig.__dataclass_fields__["train"].default == CAMPAIGN_TRAINING
    options = inspect.signature(train_command).parameters
    for field in dataclasses.fields(TrainConfig):
        if field.name in options:
            assert options[field.name].default == field.default, field.name


def test_the_time_left_is_an_upper_bound_that_tightens_as_members_stop():
    from workbench.train.progress import EnsembleProgress

    progress = EnsembleProgress(members=2, epochs=10, started=time.monotonic() - 80)  # 80 s ago
    assert progress.seconds_left() is None and progress.describe_left() == "time left: estimating"
    for epoch in range(4):
        progress.epoch(0, epoch)
        progress.epoch(1, epoch)
    assert (progress.completed, progress.total) == (8, 20)
    progress.finished(0, 4)  # stopped early: its last 6 epochs will not run
    assert (progress.completed, progress.total) == (8, 14)
    assert progress.seconds_left() == pytest.approx(80 / 8 * 6, rel=0.05)  # 10 s per epoch, 6 epochs left
    assert progress.describe_left().startswith("at most 1 min 0")
