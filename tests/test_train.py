"""Training on real data: deduplicated splits, deterministic ensembles, metrics, baselines."""

import numpy as np
import pytest
import torch

from tests.conftest import charged_perovskite_cifs, perovskite_rows, write_csv
from workbench.featurize import Featurizer, featurize_structures
from workbench.io.importer import import_file
from workbench.io.readers import ReadOptions
from workbench.models import ModelConfig
from workbench.store.schema import TargetKind
from workbench.train.baselines import CompositionBaseline, ElementAverageBaseline, MeanBaseline
from workbench.train.config import TrainConfig
from workbench.train.dataset import load_labeled_graphs
from workbench.train.ensemble import Ensemble, train_ensemble
from workbench.train.metrics import band_gap, per_site_metrics, scalar_metrics, spectrum_metrics
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
