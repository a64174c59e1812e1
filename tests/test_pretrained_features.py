"""Atom features from frozen pretrained universal models (SevenNet 7net-0, CHGNet 0.3.0):
their width, the cache under a key that names the weights, and training on them."""

import dataclasses
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from ase.build import bulk
from sqlalchemy import insert
from torch_geometric.data import Batch

from tests.conftest import charged_perovskite_cifs, perovskite_rows, write_csv
from workbench.campaign.config import config_from_document
from workbench.errors import InputError
from workbench.featurize import Featurizer, featurize_structures, load_graphs
from workbench.featurize.cache import MissingGraphs
from workbench.featurize.data import graph_to_data
from workbench.featurize.pretrained import PRETRAINED_MODELS
from workbench.io.importer import import_file
from workbench.io.readers import ReadOptions
from workbench.models import CrystalModel, ModelConfig, needs_triplets, with_atom_feature_size
from workbench.models.architectures import ARCHITECTURES
from workbench.models.model import graph_for
from workbench.settings import Settings
from workbench.store.engine import session_scope
from workbench.store.schema import Featurizer as FeaturizerRow
from workbench.structures.crystal import Crystal
from workbench.train.config import TrainConfig
from workbench.train.pipeline import TrainRequest, featurizer_of, train_and_register


def tiny_cells() -> list[Crystal]:
    """NaCl, two equivalent Fe atoms, Si, and L1_2 Cu3Au."""
    cu3au = bulk("Cu", "fcc", a=3.75, cubic=True)
    cu3au[0].symbol = "Au"
    return [Crystal.from_ase(atoms) for atoms in (bulk("NaCl", "rocksalt", a=5.64), bulk("Fe", "bcc", a=2.87) * (2, 1, 1),
                                                  bulk("Si", "diamond", a=5.43), cu3au)]


QUICK = TrainConfig(members=2, epochs=2, patience=2, batch_size=8, learning_rate=3e-3)


@pytest.fixture(scope="module", params=list(PRETRAINED_MODELS))
def featurizer(request) -> Featurizer:
    """One featurizer per model for the module, so each model is loaded once."""
    return Featurizer(atom_features=request.param)


def test_embeddings_are_finite_of_the_declared_width_and_do_not_depend_on_the_batch(featurizer):
    crystals = tiny_cells()
    width = featurizer.pretrained.width
    together = featurizer.with_embeddings(crystals, [featurizer.structure_graph(c) for c in crystals])
    for crystal, graph in zip(crystals, together, strict=True):
        embedding = graph.pretrained_embedding
        assert embedding.shape == (crystal.nsites, width) and embedding.dtype == np.float32
        assert np.isfinite(embedding).all() and np.abs(embedding).max() > 0
        alone = featurizer.graph_of(crystal).pretrained_embedding
        np.testing.assert_allclose(alone, embedding, atol=1e-4)
        data = graph_to_data(graph, featurizer.feature_table())
        assert data.x.shape == (crystal.nsites, featurizer.atom_feature_size)
        np.testing.assert_array_equal(data.x[:, :width].numpy(), embedding)  # embedding first, then cgcnn
    # Two atoms of one element in different surroundings get different vectors.
    nacl, fe2 = together[0].pretrained_embedding, together[1].pretrained_embedding
    assert not np.allclose(nacl[0], nacl[1]) and np.allclose(fe2[0], fe2[1], atol=1e-4)


@pytest.fixture(scope="module")
def chgnet() -> Featurizer:
    return Featurizer(atom_features="chgnet")


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_every_backbone_and_head_reads_pretrained_features(chgnet, architecture):
    """Each head on each backbone that reads ``data.x``, on the graphs that backbone reads,
    with the same embeddings (they do not depend on our graph)."""
    featurizer = chgnet
    backbone = with_atom_feature_size(architecture, {}, featurizer)
    if "atom_feature_size" not in backbone:
        pytest.skip(f"{architecture} embeds atomic numbers and reads no atom features")
    crystals = tiny_cells()
    embedded = featurizer.with_embeddings(crystals, [featurizer.structure_graph(c) for c in crystals])
    ours = dataclasses.replace(featurizer, graph=graph_for(architecture))
    graphs = [dataclasses.replace(ours.structure_graph(crystal), pretrained_embedding=graph.pretrained_embedding)
              for crystal, graph in zip(crystals, embedded, strict=True)]
    batch = Batch.from_data_list([graph_to_data(graph, ours.feature_table(), triplets=needs_triplets(architecture))
                                  for graph in graphs])
    for head, options, shape in (("scalar", {}, (4,)), ("spectrum", {"bins": 8}, (4, 8)),
                                 ("per_site", {}, (batch.num_nodes,))):
        torch.manual_seed(0)
        model = CrystalModel(ModelConfig(architecture, head, "y", ours.key, backbone=backbone, head_options=options))
        out = model.eval()(batch)
        assert out.shape == shape and torch.isfinite(out).all(), (architecture, head)


def test_the_key_names_model_package_and_weights():
    keys = {Featurizer(atom_features=name).key for name in ["cgcnn", "ofm", *PRETRAINED_MODELS]}
    assert len(keys) == 2 + len(PRETRAINED_MODELS)
    config = Featurizer(atom_features="chgnet").config["pretrained"]
    assert config["model"] == "0.3.0" and len(config["weights_sha256"]) == 64 and config["width"] == 64
    assert "pretrained" not in Featurizer().config  # the other featurizers' keys are as they were


@pytest.mark.parametrize("backend", ["sqlite"])
def test_embeddings_are_cached_once_and_other_weights_get_their_own_key(engine, tmp_path):
    write_csv(tmp_path / "perov.csv", perovskite_rows(6), ["material_id", "cif", "heat_ref"])
    import_file(engine, tmp_path / "perov.csv", source="castelli", options=ReadOptions())
    sevennet = Featurizer(atom_features="sevennet")
    first = featurize_structures(engine, sevennet)
    assert (first.featurized, first.already_cached, first.failed) == (6, 0, [])
    again = featurize_structures(engine, sevennet)
    assert (again.featurized, again.already_cached) == (0, 6)
    graphs = load_graphs(engine, sevennet.key, range(1, 7))
    assert all(graph.pretrained_embedding.shape == (graph.num_nodes, 128) for graph in graphs.values())

    # The same entry with other weights (SevenNet-0 of 22 May 2024): another key, and the
    # graphs cached under the old one are not served for it.
    older = Featurizer(atom_features="sevennet",
                       pretrained=dataclasses.replace(PRETRAINED_MODELS["sevennet"], model="7net-0_22may2024"))
    assert older.key != sevennet.key
    with pytest.raises(MissingGraphs):
        load_graphs(engine, older.key, range(1, 7))
    assert featurize_structures(engine, older).featurized == 6
    changed = load_graphs(engine, older.key, range(1, 7))
    assert not np.allclose(changed[1].pretrained_embedding, graphs[1].pretrained_embedding, atol=1e-3)
    assert featurizer_of(engine, older.key) == older  # rebuilt from its stored config

    # A store whose weights differ from the installed ones (say, before an upgrade of the
    # package) is refused rather than served.
    stale = dict(sevennet.config, pretrained=dict(sevennet.config["pretrained"], weights_sha256="0" * 64))
    with session_scope(engine) as session:
        session.execute(insert(FeaturizerRow).values(key="stale", name=sevennet.name, config=stale))
    with pytest.raises(ValueError, match="pretrained model's package or weights"):
        featurizer_of(engine, "stale")


def test_the_campaign_config_takes_atom_features():
    """By default CHGNet's, for a backbone that reads atom features (SchNet too); the
    element table for one that embeds atomic numbers itself, which would ignore them."""
    document = {"name": "gaps", "candidates": {"source": "pool"}, "objective": ["dir_gap<2"], "budget": 4}
    assert config_from_document(document).model.atom_features == "chgnet"
    for architecture, default in (("alignn", "chgnet"), ("schnet", "chgnet"), ("sevennet", "cgcnn")):
        model = config_from_document(document | {"model": {"architecture": architecture}}).model
        assert model.atom_features == default
    assert config_from_document(document | {"model": {"atom_features": None}}).model.atom_features == "chgnet"
    stored = config_from_document(document).to_document()
    assert config_from_document(stored).model.atom_features == "chgnet"  # a stored config keeps its choice
    assert config_from_document(document | {"model": {"atom_features": "cgcnn"}}).model.atom_features == "cgcnn"
    assert config_from_document(document | {"model": {"atom_features": "sevennet"}}).model.atom_features == "sevennet"
    with pytest.raises(InputError, match="unknown atom features 'mace'"):
        config_from_document(document | {"model": {"atom_features": "mace"}})


@pytest.mark.parametrize("backend", ["sqlite"])
def test_atom_features_a_backbone_would_ignore_are_refused(engine, tmp_path):
    """The fine-tuned SevenNet embeds atomic numbers: asking it for CHGNet features would
    spend minutes computing embeddings nothing reads."""
    document = {"name": "gaps", "candidates": {"source": "pool"}, "objective": ["dir_gap<2"], "budget": 4}
    refused = "sevennet embeds atomic numbers and reads no atom features: atom features 'chgnet'"
    with pytest.raises(InputError, match=refused):
        config_from_document(document | {"model": {"architecture": "sevennet", "atom_features": "chgnet"}})
    settings = Settings(home=tmp_path, database_url=str(engine.url), mlflow_tracking_uri=f"sqlite:///{tmp_path}/m.db")
    request = TrainRequest(target="y", name="y", architecture="sevennet", featurizer=Featurizer(atom_features="chgnet"))
    with pytest.raises(InputError, match=refused):
        train_and_register(engine, settings, request)
    assert config_from_document(document | {"model": {"architecture": "sevennet"}}).model.architecture == "sevennet"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_train_a_scalar_target_on_sevennet_features_from_the_command_line(run_cli, tmp_path, mlflow_uri,
                                                                          monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    rows = perovskite_rows(24)
    write_csv(tmp_path / "perov.csv", rows, ["material_id", "cif", "heat_ref"])
    run_cli("import", tmp_path / "perov.csv", "--jobs", "1")
    assert "24 graphs built" in run_cli("featurize", "--atom-features", "sevennet", "--jobs", "1").output
    out = run_cli("train", "--target", "heat_ref", "--name", "heat-7net", "--atom-features", "sevennet",
                  "--backbone", "hidden=16", "--members", "2", "--epochs", "2", "--device", "cpu",
                  "--jobs", "1").output
    assert "Registered heat-7net version 1" in out
    assert "Wrote 24 predictions" in run_cli("predict", "--model", "heat-7net@champion", "--jobs", "1").output
    # The registered model embeds new crystals itself (its featurizer loads SevenNet once).
    mlflow.set_tracking_uri(mlflow_uri)
    predicted = mlflow.pyfunc.load_model("models:/heat-7net@champion").predict([row["cif"] for row in rows[:3]])
    assert np.isfinite(predicted["mean"].to_numpy(dtype=float)).all()
    requirements = mlflow.pyfunc.get_model_dependencies("models:/heat-7net@champion")
    assert "sevenn==" in Path(requirements).read_text()
    run_cli("featurize", "--atom-features", "mace", expect=2)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_train_per_site_charges_on_chgnet_features(engine, database_url, tmp_path, mlflow_uri):
    for material_id, cif, _ in charged_perovskite_cifs(12):  # formal oxidation states: neutral cells
        (tmp_path / f"{material_id}.cif").write_text(cif)
        import_file(engine, tmp_path / f"{material_id}.cif", source="oxi", options=ReadOptions())
    settings = Settings(home=tmp_path / "home", database_url=database_url, mlflow_tracking_uri=mlflow_uri)
    request = TrainRequest(target="charges", name="charges-chgnet", featurizer=Featurizer(atom_features="chgnet"),
                           conserve_total=True, backbone={"hidden": 16}, train=QUICK, device="cpu", workers=1)
    result = train_and_register(engine, settings, request)
    assert result.registry_version == 1 and np.isfinite(result.metrics["mae"])
