"""Latent neighbours: a crystal unlike the training set gets a wider spread than the
members' disagreement gives it, weighed on held-out labels, saved with the model."""

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from tests.conftest import charged_perovskite_cifs, perovskite_rows, write_csv
from tests.dft_helpers import campaign_document
from workbench.campaign.config import config_from_document
from workbench.errors import InputError
from workbench.featurize import Featurizer, featurize_structures
from workbench.io.importer import import_file
from workbench.io.readers import ReadOptions
from workbench.models import ModelConfig
from workbench.store.schema import TargetKind
from workbench.train.config import TrainConfig
from workbench.train.dataset import load_labeled_graphs
from workbench.train.ensemble import CalibrationMethod, Ensemble, fit_spread_scales, train_ensemble
from workbench.train.neighbours import LatentNeighbours
from workbench.train.pipeline import TrainRequest, train_and_register
from workbench.train.registry import download_ensemble

FEATURIZER = Featurizer()
SMALL = {"hidden": 16, "layers": 2}
OXYGEN = 8
NEIGHBOURS = 5


def test_the_distance_is_to_the_nearest_training_embeddings():
    reference = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 2.0]])
    neighbours = LatentNeighbours.fit(reference, k=1)
    np.testing.assert_allclose(neighbours.distance(reference).numpy(), 0.0, atol=1e-6)
    # Standardized per feature (spreads 0.5 and 1): (0.5, 1) lies 1 and sqrt(2) from its two nearest.
    two = LatentNeighbours.fit(reference, k=2)
    assert two.distance(torch.tensor([[0.5, 1.0]])).item() == pytest.approx(np.sqrt(2), rel=1e-5)
    far, near = neighbours.distance(torch.tensor([[9.0, 9.0], [0.1, 0.1]]))
    assert far > 10 * near
    again = LatentNeighbours.from_document(neighbours.to_document())
    torch.testing.assert_close(again.distance(reference), neighbours.distance(reference))


def test_the_calibration_weighs_whichever_term_follows_the_errors():
    rng = np.random.default_rng(0)
    std, distance = rng.uniform(0.1, 1.0, 2000), rng.uniform(0.1, 1.0, 2000)
    by_distance = rng.normal(size=2000) * 0.5 * distance
    std_scale, distance_scale = fit_spread_scales(by_distance, np.zeros(2000), std, distance)
    assert distance_scale == pytest.approx(0.5, rel=0.1) and std_scale < 0.1
    by_spread = rng.normal(size=2000) * 2.0 * std
    std_scale, distance_scale = fit_spread_scales(by_spread, np.zeros(2000), std, distance)
    assert std_scale == pytest.approx(2.0, rel=0.1) and distance_scale < 0.2


@pytest.fixture
def perovskites(engine, tmp_path):
    write_csv(tmp_path / "perov.csv", perovskite_rows(300), ["material_id", "cif", "heat_ref"])
    import_file(engine, tmp_path / "perov.csv", source="castelli", options=ReadOptions())
    featurize_structures(engine, FEATURIZER)
    return load_labeled_graphs(engine, "heat_ref", FEATURIZER).data


@pytest.mark.parametrize("backend", ["sqlite"])
def test_crystals_unlike_the_training_set_get_a_wider_spread(perovskites, tmp_path):
    oxides = [item for item in perovskites if (item.atomic_numbers == OXYGEN).any()]
    others = [item for item in perovskites if not (item.atomic_numbers == OXYGEN).any()]
    train, validation, held_out = oxides[:150], oxides[150:190], oxides[190:]
    config = ModelConfig("cgcnn", "scalar", "heat_ref", FEATURIZER.key, backbone=SMALL,
                         head_options={"pooling": "sum"})
    training = TrainConfig(members=2, epochs=8, batch_size=32, learning_rate=3e-3, latent_neighbours=NEIGHBOURS)
    ensemble, _ = train_ensemble(config, TargetKind.SCALAR, train, validation, training, device=torch.device("cpu"))

    assert ensemble.neighbours.reference.shape == (len(train), 2 * ensemble.members[0].backbone.out_channels)
    near, far = (ensemble.neighbours.distance(ensemble.embed(items)) for items in (held_out, others))
    # No oxygen (nitrides here): most lie farther from the training oxides than any held-out oxide's median.
    assert (far > near.median()).float().mean() > 0.75

    calibration = ensemble.calibration
    assert calibration.method == CalibrationMethod.CALIBRATED and calibration.validation_labels == len(validation)
    assert calibration.distance_scale > 0 and calibration.metrics()["calibration.distance_scale"] > 0
    mean, std = ensemble.predict(others)
    spread_only = Ensemble(ensemble.members, calibration=calibration)  # no neighbours: the spread alone
    _, members_std = spread_only.predict(others)
    expected = torch.sqrt(members_std**2 + (calibration.distance_scale
                                            * ensemble.neighbours.distance(ensemble.embed(others)))**2)
    torch.testing.assert_close(std, expected)

    ensemble.save(tmp_path / "ensemble")
    loaded = Ensemble.load(tmp_path / "ensemble")
    torch.testing.assert_close(loaded.predict(others), (mean, std))


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_few_validation_labels_leave_the_distance_out(perovskites):
    config = ModelConfig("cgcnn", "scalar", "heat_ref", FEATURIZER.key, backbone=SMALL,
                         head_options={"pooling": "sum"})
    training = TrainConfig(members=2, epochs=2, batch_size=32, latent_neighbours=NEIGHBOURS)
    ensemble, _ = train_ensemble(config, TargetKind.SCALAR, perovskites[:100], perovskites[100:110], training,
                                 device=torch.device("cpu"))
    assert ensemble.calibration.method == CalibrationMethod.SHRUNK
    assert ensemble.calibration.distance_scale == 0.0


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_registered_model_keeps_its_neighbours(engine, settings, perovskites):
    training = TrainConfig(members=2, epochs=3, batch_size=32, latent_neighbours=NEIGHBOURS)
    result = train_and_register(engine, settings, TrainRequest(
        target="heat_ref", name="heat", pooling="sum", backbone=SMALL, device="cpu", workers=1, train=training))
    assert result.metrics["calibration.distance_scale"] > 0
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    assert MlflowClient().get_run(result.run_id).data.params["train.latent_neighbours"] == str(NEIGHBOURS)
    # The pyfunc model's spread is the registered ensemble's, distance included.
    ensemble = download_ensemble("heat", result.registry_version, settings.home / "download")
    assert ensemble.neighbours is not None
    rows = perovskite_rows(3)
    out = mlflow.pyfunc.load_model("models:/heat@champion").predict(pd.DataFrame({"cif": [row["cif"] for row in rows]}))
    assert (out["std"] > 0).all()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_per_site_targets_refuse_latent_neighbours(engine, settings, tmp_path):
    for material_id, cif, _ in charged_perovskite_cifs(12):
        (tmp_path / f"{material_id}.cif").write_text(cif)
        import_file(engine, tmp_path / f"{material_id}.cif", source="oxi", options=ReadOptions())
    request = TrainRequest(target="charges", name="charges", conserve_total=True, backbone=SMALL, device="cpu",
                           workers=1, train=TrainConfig(members=2, epochs=1, latent_neighbours=NEIGHBOURS))
    with pytest.raises(InputError, match="'charges' is a per_site target: its spread is per site"):
        train_and_register(engine, settings, request)


def test_a_campaign_config_passes_latent_neighbours_to_its_rounds():
    config = config_from_document(campaign_document("x", 10, model={"latent_neighbours": 10}))
    assert config.model.train_config(seed=3).latent_neighbours == 10
    assert config_from_document(campaign_document("x", 10)).model.train_config(seed=3).latent_neighbours == 0
    with pytest.raises(InputError, match="model.latent_neighbours: "):
        config_from_document(campaign_document("x", 10, model={"latent_neighbours": -1}))
