"""Acquisition: objectives, scores and batch selection."""

import csv
import math

import numpy as np
import pytest

from workbench.acquire.batch import select_batch
from workbench.acquire.objective import ObjectiveError, parse_constraint, parse_objective
from workbench.acquire.scores import (
    expected_improvement,
    gap_from_dos,
    probability_of_objective,
    total_moment,
    upper_confidence_bound,
)


def test_constraints_in_every_spelling():
    assert parse_constraint("1.5<=dir_gap<=3") == parse_constraint(" 3 >= dir_gap >= 1.5 ")
    heat = parse_constraint("heat_ref<1.0")
    assert (heat.low, heat.high) == (-math.inf, 1.0)
    assert parse_constraint("gpaw-fast.band_gap > 0.5").target == "gpaw-fast.band_gap"
    assert parse_constraint("-1e-2 < e").low == -0.01
    objective = parse_objective(["1.5<=dir_gap<=3 and heat_ref<1.0", "nsites<=10"])
    assert objective.targets == ["dir_gap", "heat_ref", "nsites"]
    assert str(objective) == "1.5<=dir_gap<=3 and heat_ref<=1 and nsites<=10"
    for bad in ("dir_gap", "1.5 <= dir_gap >= 3", "3<=x<=1", "x << 2"):
        with pytest.raises(ObjectiveError):
            parse_constraint(bad)


def test_objective_counts_the_hits_of_the_replay_benchmark(shared_data):
    with (shared_data / "perov5" / "labeled_val.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    values = {name: np.array([float(row[name]) for row in rows]) for name in ("dir_gap", "heat_ref")}
    objective = parse_objective(["1.5<=dir_gap<=3", "heat_ref<1.0"])
    assert len(rows) == 3787 and objective.holds(values).sum() == 43


def test_probability_of_objective_matches_sampling():
    rng = np.random.default_rng(0)
    objective = parse_objective(["1<=a<=2", "b<0"])
    mean_a, std_a, mean_b, std_b = np.array([1.4]), np.array([0.5]), np.array([0.3]), np.array([0.4])
    exact = probability_of_objective(objective, {"a": (mean_a, std_a), "b": (mean_b, std_b)})[0]
    samples = {"a": rng.normal(1.4, 0.5, 200_000), "b": rng.normal(0.3, 0.4, 200_000)}
    assert exact == pytest.approx(objective.holds(samples).mean(), abs=0.005)
    # A certain prediction inside the window scores 1, outside 0.
    certain = probability_of_objective(objective, {"a": (np.array([1.5, 3.0]), np.zeros(2)),
                                                   "b": (np.array([-1.0, -1.0]), np.zeros(2))})
    assert certain.tolist() == [1.0, 0.0]


def test_improvement_and_confidence_bounds():
    assert expected_improvement(np.array([0.0]), np.array([1.0]), best=0.0)[0] == pytest.approx(1 / math.sqrt(2 * math.pi))
    # Minimising: a lower mean is better.
    low, high = expected_improvement(np.array([-1.0, 1.0]), np.array([0.1, 0.1]), best=0.0, maximize=False)
    assert low > 0.9 and high < 1e-6
    assert upper_confidence_bound(np.array([1.0]), np.array([0.5]), kappa=2.0, maximize=False)[0] == 0.0


def test_batches_are_spread_over_clusters():
    rng = np.random.default_rng(1)
    # Ten near-copies score best; five distinct crystals score a little lower.
    embeddings = np.vstack([rng.normal(0, 0.01, (10, 4)), rng.normal(0, 1.0, (5, 4)) + 5])
    scores = np.concatenate([np.linspace(1.0, 0.95, 10), np.linspace(0.9, 0.85, 5)])
    assert set(select_batch(scores, 4)) == {0, 1, 2, 3}
    spread = select_batch(scores, 4, embeddings)
    assert spread[0] == 0 and len(set(spread)) == 4
    assert sum(index >= 10 for index in spread) >= 2


def test_derived_quantities():
    grid = np.linspace(-5.0, 10.0, 300, endpoint=False)
    dos = np.where((grid < -0.5) | (grid > 1.0), 0.1, 0.0)
    metal = np.full(300, 0.1)
    gaps = gap_from_dos(np.vstack([dos, metal]), grid, threshold=1e-3)
    assert gaps[0] == pytest.approx(1.5, abs=0.06) and gaps[1] == 0.0
    assert total_moment(np.array([2.2, 2.2, -0.1]), np.array([0, 0, 1]), 2).tolist() == pytest.approx([4.4, -0.1])


def test_candidates_are_excluded_by_dedup_key(engine):
    from ase.build import bulk
    from sqlalchemy import update

    from tests.dft_helpers import store_crystals
    from workbench.acquire.candidates import eligible
    from workbench.dft.presets import BUILTIN_PRESETS
    from workbench.dft.runner import queue_calculations
    from workbench.store.engine import session_scope
    from workbench.store.schema import Structure, TargetDefinition, TargetKind, TargetValue

    ids = store_crystals(engine, {"Cu": bulk("Cu", a=3.6), "Cu-twin": bulk("Cu", a=3.6, cubic=True),
                                  "Au": bulk("Au", a=4.1), "Al": bulk("Al", a=4.05)})
    with session_scope(engine) as session:
        # Two ids of one crystal (as when matching by structure could not decide).
        key = session.get(Structure, ids["Cu"]).dedup_key
        session.execute(update(Structure).where(Structure.id == ids["Cu-twin"]).values(dedup_key=key))
        target = TargetDefinition(name="gap", kind=TargetKind.SCALAR)
        session.add(target)
        session.flush()
        session.add(TargetValue(structure_id=ids["Cu"], target_id=target.id, value=0.0))
    queue_calculations(engine, [ids["Au"]], BUILTIN_PRESETS["emt"])
    everything = [ids["Cu"], ids["Cu-twin"], ids["Au"], ids["Al"]]
    assert eligible(engine, everything, ["gap"]) == [ids["Al"]]
    assert eligible(engine, everything, ["other"]) == [ids["Cu"], ids["Cu-twin"], ids["Al"]]


def test_std_scale_fits_held_out_errors():
    from workbench.train.ensemble import fit_std_scale

    rng = np.random.default_rng(0)
    mean, std = rng.normal(0, 1, 20_000), rng.uniform(0.1, 1.0, 20_000)
    y = mean + 3.0 * std * rng.normal(size=mean.size)  # a spread three times too narrow
    assert fit_std_scale(y, mean, std) == pytest.approx(3.0, rel=0.02)
    assert fit_std_scale(y, mean, np.zeros_like(std)) == 1.0  # one member: nothing to scale


def test_ensembles_calibrate_their_spread_and_keep_it(tmp_path):
    import torch
    from ase.build import bulk

    from workbench.featurize.data import graph_to_data
    from workbench.featurize.featurizer import Featurizer
    from workbench.models import CrystalModel, ModelConfig
    from workbench.structures.crystal import Crystal
    from workbench.train.ensemble import CALIBRATION_FILE, Ensemble

    featurizer = Featurizer()
    data = []
    for index, (element, a) in enumerate([("Cu", 3.6), ("Al", 4.05), ("Au", 4.1), ("Ni", 3.5), ("Ag", 4.1)]):
        item = graph_to_data(featurizer.graph_of(Crystal.from_ase(bulk(element, a=a))), featurizer.feature_table())
        item.y = torch.tensor([float(index)])
        data.append(item)
    config = ModelConfig("cgcnn", "scalar", "e", featurizer.key, backbone={"hidden": 8, "layers": 1})
    members = []
    for seed in range(2):
        torch.manual_seed(seed)
        members.append(CrystalModel(config).eval())
    ensemble = Ensemble(members)
    raw_mean, raw_std = ensemble.predict(data)
    scale = ensemble.calibrate(data)
    mean, std = ensemble.predict(data)
    y = np.arange(5.0)
    assert scale == pytest.approx(np.sqrt(np.mean(((y - raw_mean.numpy()) / raw_std.numpy()) ** 2)), rel=1e-5)
    torch.testing.assert_close(mean, raw_mean)
    torch.testing.assert_close(std, raw_std * scale)
    ensemble.save(tmp_path / "ensemble")
    torch.testing.assert_close(Ensemble.load(tmp_path / "ensemble").predict(data)[1], std)
    (tmp_path / "ensemble" / CALIBRATION_FILE).unlink()  # as saved before calibration existed
    assert Ensemble.load(tmp_path / "ensemble").std_scale == 1.0
