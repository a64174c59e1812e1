"""ALIGNN and SchNet backbones with each head: shapes, gradients, invariances, saving,
training, and bond-angle triplets built only for a backbone that reads them."""

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from tests.conftest import perovskite_rows, write_csv
from workbench.featurize import Featurizer, GraphConfig, featurize_structures
from workbench.featurize.data import CrystalGraphData, graph_to_data
from workbench.io.importer import import_file
from workbench.io.readers import ReadOptions
from workbench.io.structure_text import parse_structure_text
from workbench.models import CrystalModel, ModelConfig, needs_triplets
from workbench.models.layers import EdgeGatedConv
from workbench.store.schema import TargetKind
from workbench.structures.crystal import Crystal
from workbench.train.config import TrainConfig
from workbench.train.dataset import load_labeled_graphs
from workbench.train.ensemble import train_ensemble

# Whole neighbour shells, so that the graph itself does not depend on the order of atoms.
FEATURIZER = Featurizer(GraphConfig(keep_ties=True))
SMALL = {
    "alignn": {"hidden": 16, "embedding": 16, "alignn_layers": 2, "gcn_layers": 1},
    "schnet": {"hidden": 16, "filters": 16, "interactions": 2},
}
BINS = 8
HEADS = {"scalar": {}, "spectrum": {"bins": BINS}, "per_site": {}}
KINDS = {"scalar": TargetKind.SCALAR, "spectrum": TargetKind.SPECTRUM, "per_site": TargetKind.PER_SITE}
CROSS = pytest.mark.parametrize(("architecture", "head"), [(a, h) for a in SMALL for h in HEADS])


@pytest.fixture(scope="module")
def perovskites(shared_data) -> list[Crystal]:
    return [parse_structure_text(row["cif"], "cif")[0] for row in perovskite_rows(shared_data, 12)]


def data_of(crystal: Crystal, architecture: str) -> CrystalGraphData:
    return graph_to_data(FEATURIZER.graph_of(crystal), FEATURIZER.feature_table(),
                         triplets=needs_triplets(architecture))


def model(architecture: str, head: str) -> CrystalModel:
    torch.manual_seed(0)
    config = ModelConfig(architecture, head, "y", FEATURIZER.key, backbone=SMALL[architecture],
                         head_options=HEADS[head])
    return CrystalModel(config).eval()


def with_labels(data: CrystalGraphData, head: str, seed: int) -> CrystalGraphData:
    """Labels shaped as the store gives them: ``(1,)``, ``(1, bins)`` or ``(n_sites,)``."""
    generator = torch.Generator().manual_seed(seed)
    size = {"scalar": (1,), "spectrum": (1, BINS), "per_site": (data.num_nodes,)}[head]
    data.y = torch.rand(size, generator=generator)
    return data


def test_edge_gated_conv_is_a_normalised_gated_sum_with_residuals():
    torch.manual_seed(0)
    conv = EdgeGatedConv(4, normalization="layer").eval()
    x, edge_attr = torch.randn(3, 4), torch.randn(4, 4)
    edge_index = torch.tensor([[1, 2, 0, 2], [0, 0, 1, 1]])  # atom 2 receives nothing
    new_x, new_edges = conv(x, edge_index, edge_attr)

    silu, norm = torch.nn.functional.silu, conv.node_norm
    gate = conv.gate_from_target(x[edge_index[1]]) + conv.gate_from_source(x[edge_index[0]]) \
        + conv.gate_from_edge(edge_attr)
    for atom in range(3):
        incoming = (edge_index[1] == atom).nonzero().flatten()
        weight = torch.sigmoid(gate[incoming])
        values = conv.neighbour_update(x[edge_index[0, incoming]])
        mean = (weight * values).sum(0) / (weight.sum(0) + conv.epsilon)
        expected = x[atom] + silu(norm(conv.self_update(x[atom]) + mean))
        torch.testing.assert_close(new_x[atom], expected)
    torch.testing.assert_close(new_edges, edge_attr + silu(conv.edge_norm(gate)))


@CROSS
def test_heads_give_the_right_shapes_and_every_layer_learns(perovskites, architecture, head):
    batch = Batch.from_data_list([data_of(crystal, architecture) for crystal in perovskites[:4]])
    crystal_model = model(architecture, head).train()
    out = crystal_model(batch)
    expected = {"scalar": (4,), "spectrum": (4, BINS), "per_site": (batch.num_nodes,)}[head]
    assert out.shape == expected and torch.isfinite(out).all()
    if head == "spectrum":
        assert (out >= 0).all()

    out.square().sum().backward()
    parameters = dict(crystal_model.named_parameters())
    without = {name for name, parameter in parameters.items() if parameter.grad is None}
    # ALIGNN's last line-graph and last crystal-graph convolutions update triplets and bonds
    # that nothing reads afterwards; their edge normalisations get no gradient.
    unread = (f"backbone.alignn_layers.{SMALL['alignn']['alignn_layers'] - 1}.line_graph_conv.edge_norm",
              f"backbone.gcn_layers.{SMALL['alignn']['gcn_layers'] - 1}.edge_norm")
    expected = {f"{norm}.{name}" for norm in unread for name in ("weight", "bias")}
    assert without == (expected if architecture == "alignn" else set())
    first = {"alignn": "backbone.angle_embedding.0.0.weight", "schnet": "backbone.embedding.weight"}[architecture]
    assert parameters[first].grad.abs().sum() > 0


@pytest.mark.parametrize("architecture", list(SMALL))
def test_sites_follow_their_atoms_under_permutation_translation_and_rotation(perovskites, architecture):
    per_site = model(architecture, "per_site")
    atoms = perovskites[0].to_ase()
    reference = per_site(data_of(Crystal.from_ase(atoms), architecture))

    order = [3, 0, 4, 2, 1]
    permuted = per_site(data_of(Crystal.from_ase(atoms[order]), architecture))
    torch.testing.assert_close(permuted, reference[order], rtol=1e-4, atol=1e-5)

    moved = atoms.copy()
    moved.translate([1.3, -0.7, 2.9])
    moved.wrap()
    moved.rotate(37.0, (1.0, 2.0, 3.0), rotate_cell=True)
    torch.testing.assert_close(per_site(data_of(Crystal.from_ase(moved), architecture)), reference,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("architecture", list(SMALL))
def test_a_crystal_predicts_the_same_alone_or_in_a_batch(perovskites, architecture):
    scalar = model(architecture, "scalar")
    data = [data_of(crystal, architecture) for crystal in perovskites[:4]]
    together = scalar(Batch.from_data_list(data))
    alone = torch.cat([scalar(Batch.from_data_list([item])) for item in data])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


@CROSS
def test_a_saved_model_loads_with_identical_predictions(perovskites, architecture, head, tmp_path):
    batch = Batch.from_data_list([data_of(crystal, architecture) for crystal in perovskites[:4]])
    trained = model(architecture, head)
    trained.set_target_scaling(0.5, 2.0)
    trained.save(tmp_path / "model.pt")
    loaded = CrystalModel.load(tmp_path / "model.pt").eval()
    assert loaded.config == trained.config
    assert torch.equal(loaded(batch), trained(batch))


@CROSS
def test_an_ensemble_trains_end_to_end(perovskites, architecture, head):
    data = [with_labels(data_of(crystal, architecture), head, seed)
            for seed, crystal in enumerate(perovskites)]
    train, validation = data[:8], data[8:]
    config = ModelConfig(architecture, head, "y", FEATURIZER.key, backbone=SMALL[architecture],
                         head_options=HEADS[head])
    quick = TrainConfig(members=2, epochs=2, batch_size=4, learning_rate=3e-3)
    ensemble, histories = train_ensemble(config, KINDS[head], train, validation, quick,
                                         device=torch.device("cpu"))
    assert [len(history.train_loss) for history in histories] == [2, 2]
    assert all(np.isfinite(history.validation_loss).all() for history in histories)
    mean, std = ensemble.predict(validation)
    expected = {"scalar": (4,), "spectrum": (4, BINS), "per_site": (sum(d.num_nodes for d in validation),)}[head]
    assert mean.shape == std.shape == expected and (std > 0).all()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_triplets_are_built_on_loading_only_for_a_backbone_that_reads_them(engine, shared_data, tmp_path):
    write_csv(tmp_path / "perov.csv", perovskite_rows(shared_data, 12), ["material_id", "cif", "heat_ref"])
    import_file(engine, tmp_path / "perov.csv", source="castelli", options=ReadOptions())
    featurize_structures(engine, FEATURIZER)
    loaded = {architecture: load_labeled_graphs(engine, "heat_ref", FEATURIZER,
                                                triplets=needs_triplets(architecture))
              for architecture in ("alignn", "cgcnn", "schnet")}
    batches = {architecture: next(iter(DataLoader(labeled.data, batch_size=4)))
               for architecture, labeled in loaded.items()}
    assert "triplet_index" in batches["alignn"]
    assert "triplet_index" not in batches["cgcnn"] and "triplet_index" not in batches["schnet"]
    # Batched, a triplet still pairs two bonds that end at one atom (shifted by the edges before).
    batch = batches["alignn"]
    centres = batch.edge_index[1][batch.triplet_index]
    assert torch.equal(centres[0], centres[1])
    assert torch.equal(batch.batch[centres[0]].unique(), torch.arange(4))

    config = ModelConfig("alignn", "scalar", "heat_ref", FEATURIZER.key, backbone=SMALL["alignn"])
    ensemble, _ = train_ensemble(config, TargetKind.SCALAR, loaded["alignn"].data[:8], loaded["alignn"].data[8:],
                                 TrainConfig(members=1, epochs=1, batch_size=4), device=torch.device("cpu"))
    assert ensemble.predict(loaded["alignn"].data[8:])[0].shape == (4,)


def test_alignn_refuses_graphs_without_triplets(perovskites):
    with pytest.raises(ValueError, match="triplets=True"):
        model("alignn", "scalar")(data_of(perovskites[0], "schnet"))
    with pytest.raises(ValueError, match="unknown architecture"):
        needs_triplets("megnet")
