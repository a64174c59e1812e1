"""Ensembles in the MLflow model registry, as one pyfunc model that predicts mean and std.

``mlflow.pyfunc.load_model("models:/NAME@champion")`` gives a model that takes CIF
strings, POSCAR strings or pymatgen structures (a list, or a DataFrame with a ``cif``
column) and returns a DataFrame with ``mean`` and ``std`` per structure (lists of bins or
of sites for spectra and per-site targets). A model trained with a prior
(``workbench train --prior``) adds it back, so it takes a DataFrame with a ``prior``
column too: each structure's value of the prior target. The model carries its member weights, its
featurizer config and the workbench code, so it loads in a fresh process; it is logged
as code (``pyfunc_entry.py``, MLflow's "models from code"), so loading it unpickles
nothing.
"""

import json
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient
from pymatgen.core import Structure as PymatgenStructure

import workbench
from workbench.featurize.data import graph_to_data
from workbench.featurize.featurizer import Featurizer
from workbench.io.structure_text import guess_text_format, parse_structure_text
from workbench.models import needs_triplets
from workbench.models.model import MissingPrior, backbone_classes
from workbench.models.prior import PriorFit
from workbench.settings import Settings
from workbench.structures.crystal import Crystal
from workbench.train.ensemble import Ensemble
from workbench.train.kinds import kind_of_head

CHAMPION, CHALLENGER = "champion", "challenger"
PRIOR_COLUMN = "prior"  # the pyfunc input column of a model with a prior
REQUIREMENTS = ("torch", "torch-geometric", "numpy", "pandas", "pymatgen", "ase", "gemmi", "moyopy",
                "sqlalchemy", "scipy", "matplotlib", "pydantic", "pydantic-settings")


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """The pyfunc face of an :class:`Ensemble`."""

    def load_context(self, context) -> None:
        self.ensemble = Ensemble.load(Path(context.artifacts["ensemble"]))
        config = json.loads(Path(context.artifacts["featurizer"]).read_text())
        self.featurizer = Featurizer.from_config(config)
        if self.featurizer.key != self.ensemble.config.featurizer_key:
            raise ValueError("the packaged featurizer does not match the ensemble's")

    # No type hint on model_input: MLflow would turn a DataFrame into its first column.
    def predict(self, context, model_input, params: dict | None = None) -> pd.DataFrame:
        crystals = [_crystal(item) for item in _items(model_input)]
        table = self.featurizer.feature_table()
        triplets = needs_triplets(self.ensemble.config.architecture)
        data = [graph_to_data(self.featurizer.graph_of(crystal), table, triplets=triplets) for crystal in crystals]
        prior = self.ensemble.members[0].prior
        if prior:
            for item, value in zip(data, _prior_column(model_input, prior), strict=True):
                item.prior = torch.tensor([value], dtype=torch.float32)
        mean, std = self.ensemble.predict(data)
        means, stds = kind_of_head(self.ensemble.config.head).per_structure(
            mean.numpy(), std.numpy(), [crystal.nsites for crystal in crystals])
        # A float per structure, or a list per bin or per site.
        return pd.DataFrame({"mean": [np.asarray(m).tolist() for m in means],
                             "std": [np.asarray(s).tolist() for s in stds]})


def _items(model_input) -> list:
    if isinstance(model_input, pd.DataFrame):
        column = "cif" if "cif" in model_input.columns else model_input.columns[0]
        return list(model_input[column])
    if isinstance(model_input, str | PymatgenStructure):
        return [model_input]
    return list(model_input)


def _prior_column(model_input, prior: PriorFit) -> list[float]:
    if not isinstance(model_input, pd.DataFrame) or PRIOR_COLUMN not in model_input.columns:
        raise MissingPrior(f"this model adds its prior {prior.target!r} back: pass a DataFrame with a "
                           f"{PRIOR_COLUMN!r} column holding each structure's value of it")
    values = model_input[PRIOR_COLUMN].astype(float)
    if values.isna().any():
        raise MissingPrior(f"rows {list(values.index[values.isna()])[:5]} have no {PRIOR_COLUMN!r} value "
                           f"(the prior {prior.target!r})")
    return list(values)


def _crystal(item) -> Crystal:
    if isinstance(item, PymatgenStructure):
        return Crystal.from_pymatgen(item)
    if isinstance(item, str):
        return parse_structure_text(item, guess_text_format(item))[0]
    raise TypeError(f"expected a CIF/POSCAR string or a pymatgen Structure, got {type(item).__name__}")


def use_experiment(settings: Settings, name: str) -> str:
    """Point MLflow at the settings' store and at the experiment ``name`` (created if new).

    With a local store (a SQLite file), artifacts go to ``WORKBENCH_HOME/mlartifacts``,
    an absolute path, so that they never land in whatever folder a worker runs in.
    """
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        local = settings.mlflow_tracking_uri.startswith(("sqlite:", "file:"))
        location = (settings.home / "mlartifacts" / name).as_uri() if local else None
        return client.create_experiment(name, artifact_location=location)
    return experiment.experiment_id


def requirements(ensemble: Ensemble, featurizer: Featurizer) -> list[str]:
    """The packages the pyfunc model needs: the workbench's own, those its backbone declares
    (``requirements``, e.g. SevenNet's ``sevenn``) and the package of its pretrained atom
    features."""
    backbone = backbone_classes(ensemble.config.architecture)[0]
    pretrained = (featurizer.pretrained.package,) if featurizer.pretrained else ()
    return list(dict.fromkeys([*REQUIREMENTS, *getattr(backbone, "requirements", ()), *pretrained]))


def log_ensemble(ensemble: Ensemble, featurizer: Featurizer, name: str, workdir: Path) -> int:
    """Log the ensemble in the active run and register it as a new version of ``name``."""
    ensemble_folder = workdir / "ensemble"
    ensemble.save(ensemble_folder)
    featurizer_file = workdir / "featurizer.json"
    featurizer_file.write_text(json.dumps(featurizer.config, indent=1))
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name("pyfunc_entry.py")),  # code, not a pickle
        artifacts={"ensemble": str(ensemble_folder), "featurizer": str(featurizer_file)},
        code_paths=[str(Path(workbench.__file__).parent)],
        pip_requirements=[f"{package}=={version(package)}" for package in requirements(ensemble, featurizer)],
        registered_model_name=name,
    )
    return int(info.registered_model_version)


def set_aliases(name: str, registry_version: int, *, champion: bool) -> list[str]:
    """A new version is the challenger; it is also the champion when asked, or when the
    registered model has no champion yet. Returns the aliases it got."""
    client = MlflowClient()
    aliases = client.get_registered_model(name).aliases
    client.set_registered_model_alias(name, CHALLENGER, registry_version)
    given = [CHALLENGER]
    if champion or CHAMPION not in aliases:
        client.set_registered_model_alias(name, CHAMPION, registry_version)
        given.append(CHAMPION)
    return given


def resolve(model_uri: str) -> tuple[str, int]:
    """``NAME@alias`` or ``NAME/version`` (or ``models:/...``) -> (name, version)."""
    reference = model_uri.removeprefix("models:/")
    client = MlflowClient()
    if "@" in reference:
        name, alias = reference.split("@", 1)
        return name, int(client.get_model_version_by_alias(name, alias).version)
    name, _, number = reference.partition("/")
    if not number.isdigit():
        raise ValueError(f"expected NAME@alias or NAME/version, got {model_uri!r}")
    return name, int(number)


def download_ensemble(name: str, registry_version: int, destination: Path) -> Ensemble:
    """The member weights of a registered version, as an :class:`Ensemble`."""
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{registry_version}", dst_path=str(destination)
    )
    folders = list(Path(local).rglob("member_0.pt"))
    if not folders:
        raise FileNotFoundError(f"no ensemble weights in models:/{name}/{registry_version}")
    return Ensemble.load(folders[0].parent)
