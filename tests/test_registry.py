"""Train, register in MLflow, predict into the store, and load the champion in a fresh process."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from packaging.utils import canonicalize_name
from sqlalchemy import func, select

from tests.conftest import perovskite_rows, write_csv
from workbench.featurize import Featurizer
from workbench.io.importer import import_file
from workbench.io.readers import ReadOptions
from workbench.models import CrystalModel, ModelConfig
from workbench.store.engine import session_scope
from workbench.store.queries import run_read_only
from workbench.store.schema import ModelVersion, Prediction, Structure, StructureSource
from workbench.train.config import TrainConfig
from workbench.train.pipeline import TrainRequest, predict_into_store, train_and_register

QUICK = TrainConfig(members=2, epochs=3, patience=2, batch_size=32, learning_rate=3e-3)


def imported_distributions() -> list[list[str]]:
    """Run in the process that loaded a model: for each third-party package a loaded
    workbench module imports at its top, the distributions that provide it."""
    import ast
    import importlib.metadata

    providers = importlib.metadata.packages_distributions()
    packages = set()
    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] == "workbench" and getattr(module, "__file__", None):
            for node in ast.parse(Path(module.__file__).read_text()).body:
                if isinstance(node, ast.Import):
                    packages |= {alias.name.partition(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    packages.add(node.module.partition(".")[0])
    return sorted(providers[package] for package in packages
                  if package not in sys.stdlib_module_names and package != "workbench")


@pytest.fixture
def rows() -> list[dict]:
    return perovskite_rows(150)


@pytest.mark.slow
def test_train_register_predict_and_load_the_champion(engine, settings, rows, tmp_path):
    labeled, unlabeled = rows[:120], rows[120:]
    for name, part, columns in (("labeled", labeled, ["material_id", "cif", "heat_ref"]),
                                ("unlabeled", unlabeled, ["material_id", "cif"])):
        import_file(engine, write_csv(tmp_path / f"{name}.csv", part, columns), source=name, options=ReadOptions())

    request = TrainRequest(target="heat_ref", name="perov-heat", train=QUICK, pooling="sum", device="cpu")
    first = train_and_register(engine, settings, request)
    assert (first.registry_version, sorted(first.aliases)) == (1, ["challenger", "champion"])
    assert {"mae", "rmse", "coverage_2std", "baseline_mean.mae", "baseline_composition.mae"} <= set(first.metrics)
    # What a member costs: its parameters and training seconds per epoch.
    assert first.metrics["parameters"] == sum(p.numel() for p in CrystalModel(
        ModelConfig("cgcnn", "scalar", "heat_ref", Featurizer().key, head_options={"pooling": "sum"})).parameters())
    assert first.metrics["seconds_per_epoch"] > 0
    second = train_and_register(engine, settings, request)
    assert (second.registry_version, second.aliases) == (2, ["challenger"])

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client = MlflowClient()
    assert int(client.get_model_version_by_alias("perov-heat", "champion").version) == 1
    run = client.get_run(first.run_id)
    assert run.data.params["target"] == "heat_ref" and "member1.train_loss" in run.data.metrics
    assert [a.path for a in client.list_artifacts(first.run_id, "plots")] == ["plots/parity.png"]
    assert str(settings.home) in run.info.artifact_uri  # absolute, under WORKBENCH_HOME

    with session_scope(engine) as session:
        version = session.scalar(select(ModelVersion).where(ModelVersion.registry_version == 1))
        assert (version.name, version.mlflow_run_id, version.targets) == ("perov-heat", first.run_id, ["heat_ref"])
    assert predict_into_store(engine, settings, "perov-heat@champion") == 150
    assert predict_into_store(engine, settings, "perov-heat@champion") == 0  # nothing twice
    with pytest.raises(RuntimeError, match="meta tensors"):  # the device asked for predicts: meta holds no values
        predict_into_store(engine, settings, "perov-heat/2", device="meta")
    assert predict_into_store(engine, settings, "perov-heat/2", where="nsites = 5") == 150
    candidates = run_read_only(engine, "SELECT structure_id, mean, std, model_version_id FROM candidates "
                                       "WHERE target = 'heat_ref' ORDER BY std DESC")
    assert len(candidates.rows) == 30 and {row[3] for row in candidates.rows} == {second.model_version_id}

    # A fresh process loads the champion from the registry and predicts from CIF strings.
    script = (
        "import json, sys, mlflow\n"
        f"mlflow.set_tracking_uri({settings.mlflow_tracking_uri!r})\n"
        "model = mlflow.pyfunc.load_model('models:/perov-heat@champion')\n"
        "from pymatgen.core import Structure\n"
        "cifs = json.load(sys.stdin)\n"
        "out = model.predict(cifs)\n"
        "again = model.predict([Structure.from_str(cif, fmt='cif') for cif in cifs])\n"
        "assert (out['mean'] - again['mean']).abs().max() < 1e-5\n"
        "print(out.to_json(orient='records'))\n"
        f"from pathlib import Path\n{inspect.getsource(imported_distributions)}"
        "print(json.dumps({'sevenn': 'sevenn' in sys.modules, 'imports': imported_distributions()}))\n"
    )
    cifs = [row["cif"] for row in unlabeled[:3]]
    result = subprocess.run([sys.executable, "-c", script], input=json.dumps(cifs), capture_output=True,
                            text=True, check=True, cwd=tmp_path)
    *_, predictions, loaded = result.stdout.strip().splitlines()
    fresh = json.loads(predictions)
    # The model's declared requirements cover what loading it imported; SevenNet's are not needed.
    loaded = json.loads(loaded)
    requirements = Path(mlflow.pyfunc.get_model_dependencies("models:/perov-heat@champion")).read_text()
    listed = {canonicalize_name(line.partition("==")[0]) for line in requirements.splitlines()}
    assert not loaded["sevenn"]
    assert [providers for providers in loaded["imports"] if not listed & set(map(canonicalize_name, providers))] == []
    with session_scope(engine) as session:
        stored = session.execute(
            select(Prediction.mean, Prediction.std).join(StructureSource, StructureSource.structure_id == Prediction.structure_id)
            .where(Prediction.model_version_id == first.model_version_id,
                   StructureSource.external_id.in_([row["material_id"] for row in unlabeled[:3]]))
            .order_by(StructureSource.external_id)
        ).all()
        order = np.argsort([row["material_id"] for row in unlabeled[:3]])
    np.testing.assert_allclose([fresh[i]["mean"] for i in order], [row.mean for row in stored], rtol=1e-4)
    np.testing.assert_allclose([fresh[i]["std"] for i in order], [row.std for row in stored], rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_train_and_predict_commands(run_cli, engine, rows, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    write_csv(tmp_path / "perov.csv", rows[:60], ["material_id", "cif", "dir_gap"])
    run_cli("import", tmp_path / "perov.csv", "--jobs", "1")
    out = run_cli("train", "--target", "dir_gap", "--name", "gap", "--members", "2", "--epochs", "2",
                  "--device", "cpu", "--jobs", "1", "--latent-neighbours", "5").output
    assert "Registered gap version 1 (challenger, champion)" in out and "baseline_mean.mae" in out
    # Six validation labels are too few to weigh the distance: recorded as 0.
    assert "calibration.distance_scale" in out
    assert "Wrote 60 predictions of gap@champion" in run_cli("predict", "--model", "gap@champion", "--jobs", "1").output
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == 60
        assert session.scalar(select(func.count()).select_from(Structure)) == 60


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_other_architectures_from_the_command_line(run_cli, engine, rows, tmp_path, monkeypatch):
    """OCrystalNet on OFM features with a smaller width, then ALIGNN, through the CLI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    write_csv(tmp_path / "perov.csv", rows[:30], ["material_id", "cif", "dir_gap"])
    run_cli("import", tmp_path / "perov.csv", "--jobs", "1")
    assert "30 graphs built" in run_cli("featurize", "--atom-features", "ofm", "--jobs", "1").output
    out = run_cli("train", "--target", "dir_gap", "--name", "gap-ocn", "--arch", "ocrystalnet",
                  "--atom-features", "ofm", "--backbone", "hidden=32", "--members", "2", "--epochs", "2",
                  "--device", "cpu", "--jobs", "1").output
    assert "Registered gap-ocn version 1" in out
    run_cli("train", "--target", "dir_gap", "--name", "gap-alignn", "--arch", "alignn", "--members", "1",
            "--epochs", "1", "--device", "cpu", "--jobs", "1")
    assert "Wrote 30 predictions" in run_cli("predict", "--model", "gap-ocn@champion", "--jobs", "1").output
    run_cli("train", "--target", "dir_gap", "--name", "bad", "--atom-features", "orbital", expect=2)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_replay_against_a_labeled_pool(run_cli, rows, tmp_path):
    import json

    write_csv(tmp_path / "perov.csv", rows[:120], ["material_id", "cif", "heat_ref", "dir_gap"])
    run_cli("import", tmp_path / "perov.csv", "--source", "pool", "--jobs", "1")
    plot = tmp_path / "curve.png"
    out = run_cli("replay", "--source", "pool", "--objective", "heat_ref<1.0", "--objective", "dir_gap<=3",
                  "--initial", "20", "--batch", "10", "--budget", "40", "--seeds", "2", "--members", "1",
                  "--epochs", "2", "--device", "cpu", "--plot", plot, "--json").stdout
    result = json.loads(out[out.index("{"):])
    assert result["pool"] == 120 and result["revealed"] == [20, 30, 40]
    assert len(result["hits_at_budget"]) == len(result["random_hits_at_budget"]) == 2
    for curve in result["hits"] + result["random_hits"]:
        assert curve == sorted(curve) and curve[-1] <= min(40, result["hits_in_pool"])
    assert plot.stat().st_size > 0
    # A campaign's config gives the objective and the model; options still override.
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text("name: c\ncandidates: {source: pool}\nobjective: ['heat_ref<1.0']\nbudget: 40\n"
                        "model: {members: 1, epochs: 2}\nacquisition: {batch: 10}\n")
    out = run_cli("replay", "--source", "pool", "--config", campaign, "--initial", "20", "--budget", "30",
                  "--seeds", "1", "--device", "cpu", "--plot", plot, "--json").stdout
    result = json.loads(out[out.index("{"):])
    assert result["objective"] == "heat_ref<=1" and result["revealed"] == [20, 30]
    # As a campaign with model.prior (here the stored gap, a poor but real prior of heat_ref).
    out = run_cli("replay", "--source", "pool", "--objective", "heat_ref<1.0", "--prior", "dir_gap",
                  "--initial", "20", "--batch", "10", "--budget", "30", "--seeds", "1", "--members", "1",
                  "--epochs", "2", "--device", "cpu", "--plot", plot, "--json").stdout
    assert json.loads(out[out.index("{"):])["bases"][0][0] in ("model", "prior")
    run_cli("replay", "--source", "pool", "--objective", "heat_ref<1", "--atom-features", "mace", expect=2)
    run_cli("replay", "--source", "pool", "--objective", "heat_ref<1", "--arch", "sevennet", "--atom-features", "ofm",
            expect=1)
    run_cli("replay", "--source", "pool", expect=2)  # no objective anywhere
    run_cli("replay", "--source", "pool", "--objective", "heat_ref<<1", expect=2)
    run_cli("replay", "--source", "nowhere", "--objective", "heat_ref<1", expect=1)
