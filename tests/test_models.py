"""CGCNN backbone with its three heads: shapes, invariances, constraints, scaling, saving."""

import numpy as np
import pytest
import torch
from ase.build import bulk
from torch_geometric.data import Batch

from workbench.featurize import Featurizer
from workbench.featurize.atom_features import cgcnn_feature_table
from workbench.featurize.data import graph_to_data
from workbench.models import CrystalModel, FeaturizerMismatch, ModelConfig
from workbench.models.layers import GaussianExpansion
from workbench.structures.crystal import Crystal

FEATURIZER = Featurizer()
SMALL = {"hidden": 16, "layers": 2}


def data_of(atoms):
    return graph_to_data(FEATURIZER.graph_of(Crystal.from_ase(atoms)), cgcnn_feature_table())


def crystals():
    return [bulk("NaCl", "rocksalt", a=5.64), bulk("Si", "diamond", a=5.43), bulk("Fe", "bcc", a=2.87),
            bulk("GaAs", "zincblende", a=5.65, cubic=True)]


def model(head: str, **head_options) -> CrystalModel:
    torch.manual_seed(0)
    config = ModelConfig("cgcnn", head, "y", FEATURIZER.key, backbone=SMALL, head_options=head_options)
    return CrystalModel(config).eval()


def test_gaussian_expansion_matches_its_formula():
    expansion = GaussianExpansion(0.0, 8.0, 0.2)
    assert expansion.size == 41
    out = expansion(torch.tensor([1.0]))
    assert out.shape == (1, 41) and out[0, 5] == pytest.approx(1.0)
    assert out[0, 6].item() == pytest.approx(np.exp(-1.0), rel=1e-5)


def test_heads_give_one_value_per_crystal_spectrum_or_site():
    batch = Batch.from_data_list([data_of(atoms) for atoms in crystals()])
    assert model("scalar")(batch).shape == (4,)
    spectrum = model("spectrum", bins=300)(batch)
    assert spectrum.shape == (4, 300) and (spectrum >= 0).all()
    assert model("per_site")(batch).shape == (batch.num_nodes,)
    assert model("per_site", site_size=3)(batch).shape == (batch.num_nodes, 3)


def test_predictions_do_not_depend_on_atom_order_or_batch_company():
    gaas = bulk("GaAs", "zincblende", a=5.65, cubic=True)
    scalar = model("scalar")
    alone = scalar(data_of(gaas))
    shuffled = scalar(data_of(gaas[[3, 1, 7, 0, 5, 2, 6, 4]]))
    in_batch = scalar(Batch.from_data_list([data_of(atoms) for atoms in crystals()]))[3]
    torch.testing.assert_close(alone, shuffled.expand_as(alone))
    torch.testing.assert_close(alone.squeeze(), in_batch, rtol=1e-5, atol=1e-5)


def test_charge_constraint_sums_each_crystal_to_its_total():
    batch = Batch.from_data_list([data_of(atoms) for atoms in crystals()])
    charges = model("per_site", conserve_total=True)
    charges.set_target_scaling(0.3, 2.0)
    sums = torch.zeros(4).index_add_(0, batch.batch, charges(batch))
    torch.testing.assert_close(sums, torch.zeros(4), atol=1e-5, rtol=0)
    batch.total = torch.tensor([1.0, 0.0, -2.0, 0.5])
    sums = torch.zeros(4).index_add_(0, batch.batch, charges(batch))
    torch.testing.assert_close(sums, batch.total, atol=1e-5, rtol=0)


def test_target_scaling_lives_in_the_model(tmp_path):
    batch = Batch.from_data_list([data_of(atoms) for atoms in crystals()])
    scalar = model("scalar")
    raw = scalar(batch)
    scalar.set_target_scaling(shift=10.0, scale=3.0)
    torch.testing.assert_close(scalar(batch), raw * 3.0 + 10.0)
    spectrum = model("spectrum", bins=8)
    spectrum.set_target_scaling(shift=10.0, scale=3.0)
    assert spectrum.target_shift.item() == 0.0  # a shift could make a DOS negative

    path = tmp_path / "model.pt"
    scalar.save(path)
    loaded = CrystalModel.load(path).eval()
    torch.testing.assert_close(loaded(batch), scalar(batch))
    assert loaded.config == scalar.config
    saved = torch.load(path, weights_only=True)
    assert saved["config"]["featurizer_key"] == FEATURIZER.key and "workbench_version" in saved


def test_a_model_refuses_graphs_of_another_featurizer():
    scalar = model("scalar")
    scalar.check_featurizer(FEATURIZER.key)
    with pytest.raises(FeaturizerMismatch, match="reads graphs of featurizer"):
        scalar.check_featurizer("0123456789abcdef")


def test_one_training_step_lowers_the_loss():
    batch = Batch.from_data_list([data_of(atoms) for atoms in crystals()])
    target = torch.tensor([1.0, 2.0, 3.0, 4.0])
    scalar = model("scalar").train()
    optimizer = torch.optim.Adam(scalar.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(scalar(batch), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_neighbour_mlp_baseline_reads_each_atoms_nearest_neighbours():
    torch.manual_seed(0)
    config = ModelConfig("neighbour-mlp", "per_site", "y", FEATURIZER.key, backbone={"hidden": 16})
    baseline = CrystalModel(config).eval()
    batch = Batch.from_data_list([data_of(atoms) for atoms in crystals()])
    assert baseline(batch).shape == (batch.num_nodes,)
    # No message passing: an atom's output does not change when another crystal joins the batch.
    gaas = data_of(bulk("GaAs", "zincblende", a=5.65, cubic=True))
    torch.testing.assert_close(baseline(gaas), baseline(batch)[-8:])
    scalar = CrystalModel(ModelConfig("neighbour-mlp", "scalar", "y", FEATURIZER.key)).eval()
    assert scalar(batch).shape == (4,)
