"""Priors on real small data: EMT energies of L1_2 alloys, computed by the runner, are the
prior of a scalar target that is a line of them plus a part the line cannot explain. The
ensemble learns the residual; the store's predictions and the registered pyfunc model add
the prior back; the errors are clear."""

from itertools import permutations

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from ase.calculators.emt import EMT
from mlflow import MlflowClient
from pymatgen.io.ase import AseAtomsAdaptor
from sqlalchemy import func, select

from tests.dft_helpers import LATTICE, campaign_document, l12
from workbench.campaign.config import config_from_document
from workbench.campaign.loop import run_campaign
from workbench.dft.presets import BUILTIN_PRESETS
from workbench.dft.runner import RunOptions, queue_calculations, run_queued
from workbench.errors import InputError, NotFound
from workbench.io.entries import Entry, Label
from workbench.io.importer import import_entries
from workbench.io.readers import ReadOptions
from workbench.models.model import MissingPrior
from workbench.models.prior import PriorFit, composition_of
from workbench.store.engine import session_scope
from workbench.store.schema import (
    Calculation,
    CalculationStatus,
    ModelVersion,
    Prediction,
    Round,
    StructureSource,
    TargetKind,
)
from workbench.structures.crystal import Crystal
from workbench.train.config import TrainConfig
from workbench.train.pipeline import (
    MissingPriorValues,
    TrainRequest,
    predict_into_store,
    train_and_register,
)

QUICK = TrainConfig(members=2, epochs=4, patience=4, batch_size=16, learning_rate=3e-3)
SMALL = {"hidden": 16, "layers": 1}
SLOPE, INTERCEPT = 2.0, 0.5


def toy_value(atoms) -> float:
    """A line of the EMT energy per atom plus what the line cannot explain (the minor
    element's atomic number)."""
    energy = atoms.copy()
    energy.calc = EMT()
    return SLOPE * energy.get_potential_energy() / len(atoms) + INTERCEPT + 0.001 * atoms.numbers[0]


@pytest.fixture
def alloys_with_prior(engine, tmp_path) -> dict[str, int]:
    """42 alloys labeled with ``toy.energy``, with ``emt.*`` computed by the runner for
    all but ``Au3Al``."""
    crystals = {f"{a}3{b}": l12(a, b) for a, b in permutations(LATTICE, 2)}
    entries = [Entry(row=name, external_id=name, crystal=Crystal.from_ase(atoms),
                     labels={"toy.energy": Label(TargetKind.SCALAR, toy_value(atoms), "eV/atom")})
               for name, atoms in crystals.items()]
    import_entries(engine, entries, source="test", file="tests", options=ReadOptions())
    with session_scope(engine) as session:
        ids = dict(session.execute(select(StructureSource.external_id, StructureSource.structure_id)
                                   .where(StructureSource.source == "test")).all())
    queue_calculations(engine, [ids[name] for name in ids if name != "Au3Al"], BUILTIN_PRESETS["emt"])
    run_queued(engine, BUILTIN_PRESETS["emt"], RunOptions(workdir=tmp_path / "dft", batch_size=50), references=False)
    return ids


def test_the_prior_fit_is_the_least_squares_line_where_composition_adds_nothing():
    rng = np.random.default_rng(0)
    prior = np.linspace(-4, -2, 30)
    compositions = [{"Cu": float(rng.integers(1, 4)), "Au": float(rng.integers(1, 4))} for _ in prior]
    fit = PriorFit.fit("emt.energy_per_atom", prior, 3.0 * prior - 1.0, compositions, per_atom=False)
    assert (fit.slope, fit.intercept) == (pytest.approx(3.0, rel=1e-3), pytest.approx(-1.0, abs=1e-2))
    assert fit(np.array([0.0, 1.0]), [{"Cu": 1.0}, {"Au": 2.0}]) == pytest.approx([-1.0, 2.0], abs=1e-2)
    # A fit saved before the element weights existed is the line alone.
    assert PriorFit(target="x", slope=3.0, intercept=-1.0)(np.array([1.0]), [{"Cu": 1.0}]) == pytest.approx([2.0])


def test_the_prior_fit_learns_the_references_the_two_levels_do_not_share():
    """The target is the prior plus a reference energy per atom of each element (as a data
    set's formation energies differ from a potential's): the line alone cannot follow it,
    the element weights do."""
    rng = np.random.default_rng(1)
    references = {"Ba": 0.3, "Ti": -0.2, "O": 0.1, "Sr": 0.25, "Zr": -0.4}
    compositions = [{"Ba" if rng.random() < 0.5 else "Sr": 1.0, "Ti" if rng.random() < 0.5 else "Zr": 1.0, "O": 3.0}
                    for _ in range(80)]
    prior = rng.normal(-1.0, 0.3, 80)
    y = 5 * prior + np.array([sum(references[e] * n for e, n in c.items()) for c in compositions])
    fit = PriorFit.fit("sevennet.formation_energy_per_atom", prior[:60], y[:60], compositions[:60], per_atom=False)
    line = np.polyfit(prior[:60], y[:60], 1)
    fitted_error = np.abs(fit(prior[60:], compositions[60:]) - y[60:]).mean()
    assert fitted_error < 0.02 < np.abs(np.polyval(line, prior[60:]) - y[60:]).mean()
    assert fit.slope == pytest.approx(5.0, rel=0.01)
    # What an MLflow run records gives the same fit back.
    assert PriorFit.from_params({key: str(value) for key, value in fit.params().items()}) == fit


def test_the_prior_fits_held_out_error_is_that_of_refits_without_each_label():
    """On a dozen labels over as many elements the fit can pass through its training labels
    (the demo's magnetic moments, 14 labels: residuals 0.002 μB, held out 1.8); its
    held-out error is what each label is missed by when the fit, at its penalty, is made
    without it."""
    rng = np.random.default_rng(2)
    elements = ["Cu", "Au", "Ni", "Pd", "Pt", "Ag", "Al", "Fe", "Co", "Mn"]
    compositions = [{str(a): 1.0, str(b): 3.0} for a, b in (rng.choice(elements, 2, replace=False) for _ in range(12))]
    prior, y = rng.normal(0.0, 1.0, 12), rng.normal(2.0, 1.5, 12)
    fit = PriorFit.fit("chgnet.magmom_total", prior, y, compositions, per_atom=True)
    missed = []
    for left_out in range(12):
        kept = [index for index in range(12) if index != left_out]
        # The same penalty on the same element weights, fitted without the label.
        design = np.column_stack([prior, np.ones(12), [[c.get(e, 0.0) / 4 for e in sorted(fit.element_weights)]
                                                       for c in compositions]])
        penalties = np.r_[0.0, 0.0, np.full(len(fit.element_weights), fit.penalty)]
        augmented = np.vstack([design[kept], np.diag(np.sqrt(penalties))])
        weights, *_ = np.linalg.lstsq(augmented, np.r_[y[kept], np.zeros(len(penalties))], rcond=None)
        missed.append(y[left_out] - design[left_out] @ weights)
    assert fit.held_out_rmse == pytest.approx(np.sqrt(np.mean(np.square(missed))), rel=1e-6)
    in_sample = y - fit(prior, compositions)
    assert fit.held_out_rmse > np.sqrt(np.mean(in_sample**2))
    assert PriorFit.from_params({key: str(value) for key, value in fit.params().items()}) == fit
    # A line through two labels leaves nothing out that it could have missed.
    assert PriorFit.fit("p", prior[:2], y[:2], compositions[:2], per_atom=True).held_out_rmse == 0.0


@pytest.mark.parametrize("per_atom", [False, True])
def test_the_models_prior_term_is_the_fit_over_a_batch(per_atom):
    from torch_geometric.data import Batch, Data

    fit = PriorFit("p", 2.0, 0.5, {"Cu": 0.1, "Au": -0.3}, per_atom=per_atom)
    cells = [[29, 29, 79], [79], [29, 13]]  # Al has no weight: it adds nothing
    batch = Batch.from_data_list([Data(atomic_numbers=torch.tensor(cell), num_nodes=len(cell)) for cell in cells])
    prior = torch.tensor([1.0, -1.0, 0.0])
    term = fit.term(prior, batch.atomic_numbers, batch.batch, 3, torch.as_tensor(fit.element_table(), dtype=torch.float32))
    expected = fit(prior.numpy(), [composition_of(cell) for cell in cells])
    np.testing.assert_allclose(term.numpy(), expected, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_residual_ensemble_adds_its_prior_back(engine, settings, alloys_with_prior):
    ids = alloys_with_prior
    request = TrainRequest(target="toy.energy", name="toy", prior="emt.energy_per_atom", train=QUICK,
                           backbone=SMALL, device="cpu", workers=1, validation_fraction=0.15, test_fraction=0.2)
    with pytest.raises(MissingPriorValues, match="1 of 42 structures for target 'toy.energy' have no value of "
                                                 "the prior 'emt.energy_per_atom'"):
        train_and_register(engine, settings, request)
    queue_calculations(engine, [ids["Au3Al"]], BUILTIN_PRESETS["emt"])
    run_queued(engine, BUILTIN_PRESETS["emt"], RunOptions(workdir=settings.home / "dft"), references=False)

    result = train_and_register(engine, settings, request)
    # The prior alone (its line, fitted on the training split), and the sum of both.
    assert {"prior.mae", "prior.rmse", "mae", "rmse", "baseline_composition.mae"} <= set(result.metrics)
    assert result.metrics["prior.mae"] < 0.1
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    run = MlflowClient().get_run(result.run_id)
    assert "prior.mae" in run.data.metrics and run.data.params["prior.target"] == "emt.energy_per_atom"
    slope = float(run.data.params["prior.slope"])
    assert slope == pytest.approx(SLOPE, rel=0.2)

    # The store's predictions add the prior back: they sit on the labels, not on the residuals.
    assert predict_into_store(engine, settings, "toy@champion") == 42
    with session_scope(engine) as session:
        stored = dict(session.execute(select(Prediction.structure_id, Prediction.mean)).all())
    names = ["Cu3Au", "Pt3Ni", "Al3Ag"]
    labels = {name: toy_value(l12(name[:2], name[3:])) for name in names}
    for name in names:
        assert abs(stored[ids[name]] - labels[name]) < 0.1  # the labels span 0.26-0.99

    # The registered model takes the prior's value in a "prior" column and adds its line back.
    model = mlflow.pyfunc.load_model("models:/toy@champion")
    structures = [AseAtomsAdaptor.get_structure(l12(name[:2], name[3:])) for name in names]
    emt = [_emt_per_atom(name) for name in names]
    out = model.predict(pd.DataFrame({"cif": structures, "prior": emt}))
    np.testing.assert_allclose(out["mean"], [stored[ids[name]] for name in names], rtol=1e-4, atol=1e-5)
    shifted = model.predict(pd.DataFrame({"cif": structures, "prior": [value + 1.0 for value in emt]}))
    np.testing.assert_allclose(shifted["mean"] - out["mean"], slope, rtol=1e-4)
    np.testing.assert_allclose(shifted["std"], out["std"], rtol=1e-4, atol=1e-6)
    with pytest.raises(MissingPrior, match="'prior' column"):
        model.predict(structures)


def _emt_per_atom(name: str) -> float:
    atoms = l12(name[:2], name[3:])
    atoms.calc = EMT()
    return atoms.get_potential_energy() / len(atoms)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_priors_are_for_scalar_targets_only(engine, settings, alloys_with_prior):
    def train(target: str, prior: str) -> None:
        train_and_register(engine, settings, TrainRequest(target=target, name="x", prior=prior, train=QUICK,
                                                          backbone=SMALL, device="cpu", workers=1))

    with pytest.raises(InputError, match="target 'emt.forces' is a per_site target; a prior is for scalar"):
        train("emt.forces", "emt.energy_per_atom")
    with pytest.raises(InputError, match="the prior 'emt.forces' is a per_site target; a prior must be scalar"):
        train("toy.energy", "emt.forces")
    with pytest.raises(NotFound, match="no target named 'sevennet.energy' in the store"):
        train("toy.energy", "sevennet.energy")


def test_the_campaign_config_takes_a_scalar_prior():
    config = config_from_document(campaign_document("x", 10, model={"prior": "emt.energy_per_atom"}))
    assert config.model.prior == "emt.energy_per_atom"
    assert config_from_document(campaign_document("x", 10)).model.prior is None
    with pytest.raises(InputError, match="model.prior: "):
        config_from_document(campaign_document("x", 10, model={"prior": "emt.energy_per_atom <= 2"}))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_campaign_screens_its_pool_and_learns_against_the_prior(engine, settings, alloys, tmp_path):
    """``screen`` runs EMT over the pool before the first model; the campaign's own DFT
    (EMT again, under another preset name) is the expensive level, and its model learns
    the residual against the screen's energies."""
    expensive = tmp_path / "emt-confirm.yaml"
    expensive.write_text("name: emt-confirm\ncalculator: emt\nspin: \"off\"\ndos: false\nwall_time_s: 300\n")
    document = campaign_document("screened", 14, objective=["emt-confirm.energy_per_atom<=0.0"],
                                 dft={"preset": str(expensive), "jobs": 2}, screen={"preset": "emt", "jobs": 2},
                                 model={"members": 2, "epochs": 4, "patience": 4, "device": "cpu",
                                        "prior": "emt.energy_per_atom"})
    outcome = run_campaign(engine, settings, config_from_document(document))
    assert (outcome.spent, outcome.rounds) == (14, 2)  # the screen is not in the budget
    with session_scope(engine) as session:
        screened = session.scalar(select(func.count(Calculation.id)).where(Calculation.preset == "emt",
                                                                          Calculation.status == CalculationStatus.DONE))
        summaries = [row.summary for row in session.scalars(select(Round).order_by(Round.number))]
        version = session.scalar(select(ModelVersion))
        predicted = session.scalar(select(func.count(Prediction.id)))
    assert screened >= 42
    assert "screen" not in summaries[0]
    assert summaries[1]["screen"]["preset"] == "emt" and summaries[1]["screen"]["calculations"] >= 42
    assert summaries[1]["screen"]["wall_time_s"] > 0
    run = MlflowClient(settings.mlflow_tracking_uri).get_run(version.mlflow_run_id)
    assert run.data.params["prior.target"] == "emt.energy_per_atom"
    assert run.data.params["prior.slope"].startswith(("0.99", "1.0"))  # the same energies, another name
    assert predicted == 42 - 10



@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_train_command_takes_a_prior(run_cli, alloys_with_prior, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    refused = run_cli("train", "--target", "toy.energy", "--name", "toy", "--prior", "emt.energy_per_atom",
                      "--members", "1", "--epochs", "1", "--device", "cpu", "--jobs", "1", expect=1).output
    assert "1 of 42 structures for target 'toy.energy' have no value of the prior 'emt.energy_per_atom'" in refused
