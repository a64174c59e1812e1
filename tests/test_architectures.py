"""ALIGNN, SchNet, MEGNet, OCrystalNet and OGCNN (CGCNN on orbital field matrices) with
each head: shapes, gradients, invariances, saving, training; the MEGNet block and the
communicative layer against their formulas; reverse bonds; the DOS autoencoder and the
latent spectrum head on every backbone; bond-angle triplets built only for a backbone
that reads them."""

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from tests.conftest import jarvis_dos_spectra, perovskite_rows, write_csv
from workbench.featurize import Featurizer, GraphConfig, featurize_structures
from workbench.featurize.data import CrystalGraphData, graph_to_data
from workbench.featurize.graph import CrystalGraph
from workbench.io.importer import import_file
from workbench.io.readers import ReadOptions
from workbench.io.structure_text import parse_structure_text
from workbench.models import CrystalModel, ModelConfig, needs_triplets, with_atom_feature_size
from workbench.models.backbones.ocrystalnet import reverse_edges
from workbench.models.dos_autoencoder import AUTOENCODER_HIDDEN, fit_dos_autoencoder
from workbench.models.layers import CommunicativeLayer, EdgeGatedConv, MEGNetBlock
from workbench.store.schema import TargetKind
from workbench.structures.crystal import Crystal
from workbench.train.config import TrainConfig
from workbench.train.dataset import load_labeled_graphs
from workbench.train.ensemble import train_ensemble
from workbench.train.kinds import fit_spectrum_autoencoder
from workbench.train.pipeline import TrainRequest, evaluate

# Whole neighbour shells, so that the graph itself does not depend on the order of atoms.
FEATURIZER = Featurizer(GraphConfig(keep_ties=True))
OFM = Featurizer(GraphConfig(keep_ties=True), atom_features="ofm")


@dataclass(frozen=True)
class Variant:
    """A backbone at test size on the graphs of a featurizer; ``deep_parameter`` learns only
    if gradients cross the whole backbone."""

    architecture: str
    featurizer: Featurizer
    backbone: dict
    deep_parameter: str


VARIANTS = {
    "alignn": Variant("alignn", FEATURIZER, {"hidden": 16, "embedding": 16, "alignn_layers": 2, "gcn_layers": 1},
                      "backbone.angle_embedding.0.0.weight"),
    "schnet": Variant("schnet", FEATURIZER, {"hidden": 16, "filters": 16, "interactions": 2},
                      "backbone.embedding.weight"),
    # SchNet starting from a linear map of atom features other than the element table.
    "schnet-ofm": Variant("schnet", OFM, {"hidden": 16, "filters": 16, "interactions": 2,
                                          "atom_feature_size": OFM.atom_feature_size}, "backbone.embedding.weight"),
    "megnet": Variant("megnet", FEATURIZER, {"channels": 8, "hidden": 16, "blocks": 2},
                      "backbone.atom_embedding.0.weight"),
    "ocrystalnet": Variant("ocrystalnet", OFM, {"hidden": 16, "layers": 2},
                           "backbone.bond_length_embedding.weight"),
    # OGCNN is a configuration: CGCNN reading the OFM-feature descriptor.
    "ogcnn": Variant("cgcnn", OFM, {"hidden": 16, "layers": 2, "atom_feature_size": OFM.atom_feature_size},
                     "backbone.embedding.weight"),
}
BINS = 8
HEADS = {"scalar": {}, "spectrum": {"bins": BINS}, "per_site": {}}
KINDS = {"scalar": TargetKind.SCALAR, "spectrum": TargetKind.SPECTRUM, "per_site": TargetKind.PER_SITE}
CROSS = pytest.mark.parametrize(("variant", "head"), [(v, h) for v in VARIANTS for h in HEADS])
EACH = pytest.mark.parametrize("variant", list(VARIANTS))


@pytest.fixture(scope="module")
def perovskites() -> list[Crystal]:
    return [parse_structure_text(row["cif"], "cif")[0] for row in perovskite_rows(12)]


@functools.cache
def cached_graph(featurizer: Featurizer, lattice: bytes, species: tuple[str, ...], frac_coords: bytes) -> CrystalGraph:
    """Graphs by content: the orbital field takes a quarter of a second per perovskite."""
    crystal = Crystal(np.frombuffer(lattice).reshape(3, 3), species, np.frombuffer(frac_coords).reshape(-1, 3))
    return featurizer.graph_of(crystal)


def data_of(crystal: Crystal, variant: str) -> CrystalGraphData:
    featurizer = VARIANTS[variant].featurizer
    graph = cached_graph(featurizer, np.asarray(crystal.lattice, dtype=float).tobytes(), crystal.species,
                         np.asarray(crystal.frac_coords, dtype=float).tobytes())
    return graph_to_data(graph, featurizer.feature_table(), triplets=needs_triplets(VARIANTS[variant].architecture))


def model_config(variant: str, head: str) -> ModelConfig:
    chosen = VARIANTS[variant]
    return ModelConfig(chosen.architecture, head, "y", chosen.featurizer.key, backbone=chosen.backbone,
                       head_options=HEADS[head])


def model(variant: str, head: str) -> CrystalModel:
    torch.manual_seed(0)
    return CrystalModel(model_config(variant, head)).eval()


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


def test_megnet_block_updates_bonds_then_atoms_then_each_crystals_state():
    torch.manual_seed(0)
    block = MEGNetBlock(3, 5, pre_dense=True).eval()
    x, edge_attr, state = torch.randn(4, 3), torch.randn(5, 3), torch.randn(2, 3)
    # crystal 0: atoms 0, 1, 2 (atom 2 receives two bonds); crystal 1: atom 3 and its own image
    edge_index = torch.tensor([[1, 0, 0, 1, 3], [0, 1, 2, 2, 3]])
    batch = torch.tensor([0, 0, 0, 1])
    new_x, new_edges, new_state = block(x, edge_index, edge_attr, state, batch)

    atoms, bonds, crystal_state = block.atom_pre(x), block.bond_pre(edge_attr), block.state_pre(state)
    bond_crystal = batch[edge_index[1]]
    bond_update = torch.stack([block.bond_update(torch.cat(
        [atoms[j], atoms[i], bonds[k], crystal_state[bond_crystal[k]]])) for k, (j, i) in enumerate(edge_index.T)])
    atom_update = torch.stack([block.atom_update(torch.cat(
        [bond_update[edge_index[1] == i].mean(0), atoms[i], crystal_state[batch[i]]])) for i in range(4)])
    state_update = torch.stack([block.state_update(torch.cat(
        [bond_update[bond_crystal == g].mean(0), atom_update[batch == g].mean(0), crystal_state[g]]))
        for g in range(2)])
    torch.testing.assert_close(new_edges, edge_attr + bond_update)
    torch.testing.assert_close(new_x, x + atom_update)
    torch.testing.assert_close(new_state, state + state_update)


def test_megnet_atoms_carry_their_crystals_set2set_and_state_vector(perovskites):
    megnet = model("megnet", "scalar").backbone
    batch = Batch.from_data_list([data_of(crystal, "megnet") for crystal in perovskites[:3]])
    features = megnet(batch)
    channels = VARIANTS["megnet"].backbone["channels"]
    assert features.shape == (batch.num_nodes, 6 * channels) == (batch.num_nodes, megnet.out_channels)
    crystal_part = features[:, channels:]
    for crystal in range(3):
        rows = crystal_part[batch.batch == crystal]
        torch.testing.assert_close(rows, rows[:1].expand_as(rows))
    assert not torch.allclose(crystal_part[batch.batch == 0][0], crystal_part[batch.batch == 1][0])


def test_reverse_edges_pair_each_bond_with_the_opposite_image(perovskites):
    # Without kept ties the k-nearest cut leaves some bonds without their reverse.
    plain = Featurizer()
    batch = Batch.from_data_list([graph_to_data(plain.graph_of(crystal), plain.feature_table())
                                  for crystal in perovskites[:4]])
    reverse = reverse_edges(batch.edge_index, batch.edge_image)
    found = reverse >= 0
    assert 0 < int((~found).sum()) < len(reverse)
    edges = torch.arange(len(reverse))
    assert torch.equal(reverse[reverse[found]], edges[found])
    assert torch.equal(batch.edge_index[:, reverse[found]], batch.edge_index[:, found].flip(0))
    torch.testing.assert_close(batch.edge_vector[reverse[found]], -batch.edge_vector[found])
    triples = {tuple(row) for row in torch.cat([batch.edge_index.T, batch.edge_image], 1).tolist()}
    for edge in edges[~found].tolist():
        (j, i), image = batch.edge_index[:, edge].tolist(), (-batch.edge_image[edge]).tolist()
        assert (i, j, *image) not in triples


def test_communicative_layer_aggregates_bonds_then_subtracts_the_reverse_bond():
    torch.manual_seed(0)
    layer = CommunicativeLayer(3)
    x, edge_attr, initial = torch.randn(3, 3), torch.randn(4, 3), torch.randn(4, 3)
    edge_index = torch.tensor([[1, 0, 2, 1], [0, 1, 1, 2]])
    reverse = torch.tensor([1, 0, 3, 2])
    reverse[3], reverse[2] = -1, -1  # as if bonds 1 -> 2 and 2 -> 1 were in different images
    new_x, new_edges = layer(x, edge_attr, initial, edge_index, reverse)

    expected_x = x.clone()
    for atom in range(3):
        incoming = edge_attr[edge_index[1] == atom]
        expected_x[atom] += incoming.sum(0) * incoming.max(0).values
    torch.testing.assert_close(new_x, expected_x)
    reverse_attr = torch.stack([edge_attr[r] if r >= 0 else torch.zeros(3) for r in reverse.tolist()])
    message = expected_x[edge_index[0]] - reverse_attr
    torch.testing.assert_close(new_edges, torch.nn.functional.mish(initial + layer.bond_message(message)))


@CROSS
def test_heads_give_the_right_shapes_and_every_layer_learns(perovskites, variant, head):
    batch = Batch.from_data_list([data_of(crystal, variant) for crystal in perovskites[:4]])
    crystal_model = model(variant, head).train()
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
    alignn = VARIANTS["alignn"].backbone
    unread = (f"backbone.alignn_layers.{alignn['alignn_layers'] - 1}.line_graph_conv.edge_norm",
              f"backbone.gcn_layers.{alignn['gcn_layers'] - 1}.edge_norm")
    expected = {f"{norm}.{name}" for norm in unread for name in ("weight", "bias")}
    assert without == (expected if variant == "alignn" else set())
    assert parameters[VARIANTS[variant].deep_parameter].grad.abs().sum() > 0


@EACH
def test_sites_follow_their_atoms_under_permutation_translation_and_rotation(perovskites, variant):
    per_site = model(variant, "per_site")
    atoms = perovskites[0].to_ase()
    reference = per_site(data_of(Crystal.from_ase(atoms), variant))

    order = [3, 0, 4, 2, 1]
    permuted = per_site(data_of(Crystal.from_ase(atoms[order]), variant))
    torch.testing.assert_close(permuted, reference[order], rtol=1e-4, atol=1e-5)

    moved = atoms.copy()
    moved.translate([1.3, -0.7, 2.9])
    moved.wrap()
    moved.rotate(37.0, (1.0, 2.0, 3.0), rotate_cell=True)
    torch.testing.assert_close(per_site(data_of(Crystal.from_ase(moved), variant)), reference,
                               rtol=1e-4, atol=1e-5)


@EACH
def test_a_crystal_predicts_the_same_alone_or_in_a_batch(perovskites, variant):
    scalar = model(variant, "scalar")
    data = [data_of(crystal, variant) for crystal in perovskites[:4]]
    together = scalar(Batch.from_data_list(data))
    alone = torch.cat([scalar(Batch.from_data_list([item])) for item in data])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


@CROSS
def test_a_saved_model_loads_with_identical_predictions(perovskites, variant, head, tmp_path):
    batch = Batch.from_data_list([data_of(crystal, variant) for crystal in perovskites[:4]])
    trained = model(variant, head)
    trained.set_target_scaling(0.5, 2.0)
    trained.save(tmp_path / "model.pt")
    loaded = CrystalModel.load(tmp_path / "model.pt").eval()
    assert loaded.config == trained.config
    assert torch.equal(loaded(batch), trained(batch))


@CROSS
def test_an_ensemble_trains_end_to_end(perovskites, variant, head):
    data = [with_labels(data_of(crystal, variant), head, seed)
            for seed, crystal in enumerate(perovskites)]
    train, validation = data[:8], data[8:]
    config = model_config(variant, head)
    quick = TrainConfig(members=2, epochs=2, batch_size=4, learning_rate=3e-3)
    ensemble, histories = train_ensemble(config, KINDS[head], train, validation, quick,
                                         device=torch.device("cpu"))
    assert [len(history.train_loss) for history in histories] == [2, 2]
    assert all(np.isfinite(history.validation_loss).all() for history in histories)
    mean, std = ensemble.predict(validation)
    expected = {"scalar": (4,), "spectrum": (4, BINS), "per_site": (sum(d.num_nodes for d in validation),)}[head]
    assert mean.shape == std.shape == expected and (std > 0).all()


def test_a_dos_autoencoder_reconstructs_held_out_spectra_better_than_the_mean():
    spectra = torch.tensor(jarvis_dos_spectra())
    train, held_out = spectra[:16], spectra[16:]
    autoencoder, losses = fit_dos_autoencoder(train, None, latent=12, hidden=AUTOENCODER_HIDDEN, epochs=300,
                                              patience=300, batch_size=8, learning_rate=1e-3, seed=0,
                                              device=torch.device("cpu"))
    assert autoencoder.scale == train.max() and losses[-1] < losses[0]
    with torch.no_grad():
        codes = autoencoder.encode(held_out)
        reconstructed = autoencoder(held_out)
    assert codes.shape == (4, 12) and ((reconstructed >= 0) & (reconstructed <= train.max())).all()
    mean_spectrum_error = (train.mean(0) - held_out).abs().mean()
    assert (reconstructed - held_out).abs().mean() < 0.8 * mean_spectrum_error


@EACH
def test_a_latent_spectrum_head_trains_in_two_stages_on_any_backbone(perovskites, variant, tmp_path):
    data = [with_labels(data_of(crystal, variant), "spectrum", seed) for seed, crystal in enumerate(perovskites)]
    train, validation = data[:8], data[8:]
    latent = {"bins": BINS, "latent": 3, "autoencoder_hidden": [6]}
    config = dataclasses.replace(model_config(variant, "spectrum"), head_options=latent)
    quick = TrainConfig(members=2, epochs=2, batch_size=4, learning_rate=3e-3)
    ensemble, _ = train_ensemble(config, TargetKind.SPECTRUM, train, validation, quick, device=torch.device("cpu"))

    autoencoder = fit_spectrum_autoencoder(ensemble.members[0].head, train, validation, quick, torch.device("cpu"))
    for member in ensemble.members:  # stage one once, its decoder frozen through stage two
        assert member.target_scale == autoencoder.scale == torch.cat([item.y for item in train]).max()
        for (name, weight), (_, fitted) in zip(member.head.decoder.state_dict().items(),
                                              autoencoder.decoder.state_dict().items(), strict=True):
            assert torch.equal(weight, fitted), name
        assert not any(parameter.requires_grad for parameter in member.head.decoder.parameters())
    mean, _ = ensemble.predict(validation)
    assert mean.shape == (4, BINS) and ((mean >= 0) & (mean <= autoencoder.scale)).all()
    # The autoencoder stays with the ensemble, to report its reconstruction error alone.
    assert torch.equal(ensemble.shared(torch.cat([item.y for item in validation])),
                       autoencoder(torch.cat([item.y for item in validation])))
    metrics = evaluate(TargetKind.SPECTRUM, ensemble, train, validation, None,
                       TrainRequest(target="dos", name="latent"), tmp_path, device=torch.device("cpu"))
    reconstructed = autoencoder(torch.cat([item.y for item in validation]))
    assert metrics["autoencoder_mae"] == pytest.approx(
        (reconstructed - torch.cat([item.y for item in validation])).abs().mean().item())

    ensemble.members[0].save(tmp_path / "model.pt")
    batch = Batch.from_data_list(validation)
    assert torch.equal(CrystalModel.load(tmp_path / "model.pt").eval()(batch), ensemble.members[0](batch))


@pytest.mark.parametrize("backend", ["sqlite"])
def test_triplets_are_built_on_loading_only_for_a_backbone_that_reads_them(engine, tmp_path):
    write_csv(tmp_path / "perov.csv", perovskite_rows(12), ["material_id", "cif", "heat_ref"])
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

    config = ModelConfig("alignn", "scalar", "heat_ref", FEATURIZER.key, backbone=VARIANTS["alignn"].backbone)
    ensemble, _ = train_ensemble(config, TargetKind.SCALAR, loaded["alignn"].data[:8], loaded["alignn"].data[8:],
                                 TrainConfig(members=1, epochs=1, batch_size=4), device=torch.device("cpu"))
    assert ensemble.predict(loaded["alignn"].data[8:])[0].shape == (4,)


def test_backbones_that_read_atom_features_take_their_width_from_the_featurizer():
    assert OFM.atom_feature_size == 1056 + 91 and FEATURIZER.atom_feature_size == 91
    for architecture in ("cgcnn", "alignn", "megnet", "ocrystalnet", "neighbour-mlp", "schnet"):
        options = with_atom_feature_size(architecture, {"hidden": 8}, OFM)
        assert options == {"hidden": 8, "atom_feature_size": 1147}
    assert with_atom_feature_size("cgcnn", {"hidden": 8}, FEATURIZER) == {"hidden": 8, "atom_feature_size": 91}
    # SchNet embeds atomic numbers on the element table, as published; SevenNet always.
    assert with_atom_feature_size("schnet", {"hidden": 8}, FEATURIZER) == {"hidden": 8}
    assert with_atom_feature_size("sevennet", {}, OFM) == {}


def test_alignn_refuses_graphs_without_triplets(perovskites):
    with pytest.raises(ValueError, match="triplets=True"):
        model("alignn", "scalar")(data_of(perovskites[0], "schnet"))
    with pytest.raises(ValueError, match="unknown architecture"):
        needs_triplets("dimenet")
