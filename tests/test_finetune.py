"""Fine-tuning the pretrained SevenNet (7net-0, from the sevenn wheel) as a backbone of our heads."""

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from ase.build import bulk

from tests.conftest import perovskite_rows, write_csv
from workbench.featurize import Featurizer
from workbench.featurize.atom_features import cgcnn_feature_table
from workbench.featurize.data import graph_to_data
from workbench.models import CrystalModel, ModelConfig
from workbench.models.backbones.sevennet import SevenNet, SevenNetConfig, SevenNetError
from workbench.models.model import graph_for
from workbench.store.schema import TargetKind
from workbench.structures.crystal import Crystal
from workbench.train.config import TrainConfig
from workbench.train.ensemble import train_ensemble

FEATURIZER = Featurizer(graph_for("sevennet"))
CPU = torch.device("cpu")


def _cells():
    """Si, NaCl and a 4-atom Cu cell, rattled so that forces and features differ by site."""
    cells = [bulk("Si"), bulk("NaCl", "rocksalt", a=5.64), bulk("Cu", cubic=True)]
    for seed, atoms in enumerate(cells):
        atoms.rattle(0.05, seed=seed)
    return cells


def _graph(atoms, featurizer: Featurizer = FEATURIZER):
    return graph_to_data(featurizer.graph_of(Crystal.from_ase(atoms)), cgcnn_feature_table())


def test_backbone_gives_sevennets_own_atom_features():
    """Our graphs through the backbone, then 7net-0's own readout, give the atom energies of
    SevenNet's calculator on its own graphs: same edges, same directions, same weights."""
    from sevenn.calculator import SevenNetCalculator
    from sevenn.util import load_checkpoint

    backbone = SevenNet(SevenNetConfig()).eval()
    full = load_checkpoint("7net-0").build_model()
    calculator = SevenNetCalculator(full, file_type="model_instance", device="cpu")
    readout = [full._modules[name] for name in ("reduce_input_to_hidden", "reduce_hidden_to_energy",
                                                "rescale_atomic_energy")]
    for atoms in _cells():
        item = _graph(atoms)
        with torch.no_grad():
            features = backbone(item)
            out = {"x": features, "atom_type": backbone.atom_types[item.atomic_numbers]}
            for module in readout:
                out = module(out)
        assert features.shape == (len(atoms), backbone.out_channels) == (len(atoms), 128)
        assert torch.isfinite(features).all()
        atoms.calc = calculator
        np.testing.assert_allclose(out["atomic_energy"].reshape(-1).numpy(), atoms.get_potential_energies(),
                                   rtol=1e-5, atol=1e-5)


def test_finetune_chooses_what_learns_and_bad_input_is_refused():
    frozen = SevenNet(SevenNetConfig(finetune="none"))
    assert not any(parameter.requires_grad for parameter in frozen.parameters())
    model = CrystalModel(ModelConfig("sevennet", "scalar", "y", FEATURIZER.key, backbone={"finetune": "last"}))
    learning = {name.split(".")[1] for name, parameter in model.backbone.named_parameters() if parameter.requires_grad}
    assert learning and all(name.startswith("4_") for name in learning)  # the last of 5 blocks only
    assert all(parameter.requires_grad for parameter in model.head.parameters())

    with pytest.raises(SevenNetError, match="7net-omni.*offline"):
        SevenNet(SevenNetConfig(model="7net-omni"))  # would need a download
    with pytest.raises(SevenNetError, match="finetune must be one of all, last, none"):
        SevenNet(SevenNetConfig(finetune="head"))
    with pytest.raises(SevenNetError, match="max_neighbors"):  # 12 neighbours leave some within 5 Å out
        frozen(_graph(bulk("Cu"), Featurizer()))
    with pytest.raises(SevenNetError, match="atomic number 84"):  # Po is not in 7net-0's type map
        frozen(_graph(bulk("Po", "sc", a=3.35)))


def test_per_site_head_fine_tunes_the_last_block_only():
    """Forces from a real calculator (EMT) as a per-site target: only the last interaction
    block and the head move away from the pretrained weights."""
    from ase.calculators.emt import EMT

    from workbench.train.kinds import KINDS

    data = []
    for index, metal in enumerate(["Cu", "Al", "Ni", "Ag", "Au", "Pd"]):
        atoms = bulk(metal, "fcc", cubic=True)
        atoms.rattle(0.08, seed=index)
        atoms.calc = EMT()
        item = _graph(atoms)
        item.y = KINDS[TargetKind.PER_SITE].label(None, atoms.get_forces())
        data.append(item)
    config = ModelConfig("sevennet", "per_site", "forces", FEATURIZER.key, backbone={"finetune": "last"},
                         head_options={"site_size": 3})
    ensemble, histories = train_ensemble(config, TargetKind.PER_SITE, data[:4], data[4:],
                                         TrainConfig(members=1, epochs=2, batch_size=2), device=CPU)
    mean, _ = ensemble.predict(data[4:])
    assert mean.shape == (8, 3) and torch.isfinite(mean).all() and len(histories[0].train_loss) == 2
    pretrained = SevenNet(SevenNetConfig()).state_dict()
    fine_tuned = ensemble.members[0].backbone.state_dict()
    moved = {name for name, weight in fine_tuned.items() if not torch.equal(weight, pretrained[name])}
    assert moved and all(name.startswith("layers.4_") for name in moved)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_fine_tuned_ensemble_trains_in_workers_registers_and_loads(engine, database_url, mlflow_uri, tmp_path):
    """Two members fine-tuned in worker processes through ``train_and_register``; the
    version loaded back from MLflow predicts what the trained ensemble scored, and holds
    fine-tuned, not pretrained, weights."""
    from workbench.io.importer import import_file
    from workbench.io.readers import ReadOptions
    from workbench.settings import Settings
    from workbench.train.dataset import load_labeled_graphs
    from workbench.train.pipeline import TrainRequest, train_and_register
    from workbench.train.registry import download_ensemble
    from workbench.train.splits import grouped_split

    import_file(engine, write_csv(tmp_path / "perov.csv", perovskite_rows(14), ["material_id", "cif", "heat_ref"]),
                source="castelli", options=ReadOptions())
    settings = Settings(home=tmp_path / "home", database_url=database_url, mlflow_tracking_uri=mlflow_uri)
    request = TrainRequest(target="heat_ref", name="heat-7net", architecture="sevennet", featurizer=FEATURIZER,
                           pooling="sum", train=TrainConfig(members=2, epochs=2, batch_size=4, learning_rate=1e-3),
                           test_fraction=0.2, device="cpu", workers=2)
    result = train_and_register(engine, settings, request)

    ensemble = download_ensemble("heat-7net", result.registry_version, tmp_path / "download")
    labeled = load_labeled_graphs(engine, "heat_ref", FEATURIZER)
    split = grouped_split(labeled.structure_ids, labeled.dedup_keys, validation=request.validation_fraction,
                          test=request.test_fraction, seed=request.split_seed)
    test = labeled.subset(split.test)
    mean, _ = ensemble.predict(test)
    mae = float(np.mean(np.abs(mean.numpy() - torch.cat([item.y for item in test]).numpy())))
    assert mae == pytest.approx(result.metrics["mae"], rel=1e-5)  # the loaded members are the trained ones

    pretrained = SevenNet(SevenNetConfig()).state_dict()
    for member in ensemble.members:
        assert member.config.backbone == {} and member.config.architecture == "sevennet"
        moved = [name for name, weight in member.backbone.state_dict().items()
                 if not torch.equal(weight, pretrained[name])]
        assert any(name.startswith("layers.0_") for name in moved) and any(name.startswith("layers.4_")
                                                                            for name in moved)
    # The registered model names the package its backbone is built from.
    mlflow.set_tracking_uri(mlflow_uri)
    requirements = Path(mlflow.pyfunc.get_model_dependencies(f"models:/heat-7net/{result.registry_version}"))
    assert "sevenn==" in requirements.read_text()


def test_a_campaign_on_sevennet_builds_the_graphs_it_declares():
    """A campaign's rounds featurize with the graph the architecture declares (all
    neighbours within SevenNet's cutoff), not the 12-neighbour default it would refuse."""
    from workbench.campaign.config import config_from_document

    document = {"name": "gaps", "candidates": {"source": "pool"}, "objective": ["dir_gap<2"], "budget": 4}
    featurizer = config_from_document(document | {"model": {"architecture": "sevennet"}}).model.featurizer()
    assert featurizer.graph == graph_for("sevennet") == SevenNet.graph
    assert config_from_document(document).model.featurizer().graph == Featurizer().graph
