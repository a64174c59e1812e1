"""Acquisition: objectives, every registered score function, cost-aware and diverse batch plans, ties."""

import math

import numpy as np
import pytest
from scipy.stats import norm

from tests.conftest import perovskite_rows
from workbench.acquire.batch import diverse_batch
from workbench.acquire.objective import ObjectiveError, parse_constraint, parse_objective
from workbench.acquire.plan import AcquisitionSettings, plan_batch
from workbench.acquire.scores import (
    SCORE_FUNCTIONS,
    expected_improvement,
    log_probability_of_constraint,
    probability_of_objective,
    upper_confidence_bound,
)
from workbench.errors import InputError


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


def test_objective_counts_the_hits_of_the_replay_benchmark():
    rows = perovskite_rows()
    values = {name: np.array([float(row[name]) for row in rows]) for name in ("dir_gap", "heat_ref")}
    objective = parse_objective(["1.5<=dir_gap<=3", "heat_ref<1.0"])
    assert len(rows) == 1000 and objective.holds(values).sum() == 9  # 43 in all 3,787


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


def test_log_probability_does_not_underflow():
    # Tiny models (issue 17): means 55-95 spreads from the window, where P rounds to 0.
    window = parse_constraint("1.5<=g<=3")
    mean, std = np.array([-4.0, -6.0, -8.0, 2.0, 40.0]), np.array([0.1, 0.1, 0.1, 0.1, 0.5])
    log_p = log_probability_of_constraint(window, mean, std)
    assert np.all(np.isfinite(log_p)) and probability_of_objective(
        parse_objective(["1.5<=g<=3"]), {"g": (mean, std)})[:3].tolist() == [0.0, 0.0, 0.0]
    assert log_p[0] > log_p[1] > log_p[2]  # nearer the window is likelier, however far
    # Where P is representable, the log agrees with it, on both sides of the window.
    moderate = np.array([1.0, 3.5, 2.2])
    assert np.exp(log_probability_of_constraint(window, moderate, np.full(3, 0.4))) == pytest.approx(
        norm.cdf((3 - moderate) / 0.4) - norm.cdf((1.5 - moderate) / 0.4), rel=1e-9)
    # The tails of scipy's own log survival function, far above and below the window.
    assert log_probability_of_constraint(window, np.array([40.0]), np.array([0.5]))[0] == pytest.approx(
        norm.logcdf((3 - 40.0) / 0.5), rel=1e-6)
    assert log_probability_of_constraint(window, np.array([-4.0]), np.array([0.1]))[0] == pytest.approx(
        norm.logsf((1.5 + 4.0) / 0.1), rel=1e-6)
    one_sided = parse_constraint("h<1")
    assert log_probability_of_constraint(one_sided, np.array([30.0]), np.array([1.0]))[0] == pytest.approx(
        norm.logcdf(-29.0), rel=1e-9)


def test_improvement_and_confidence_bounds():
    assert expected_improvement(np.array([0.0]), np.array([1.0]), best=0.0)[0] == pytest.approx(1 / math.sqrt(2 * math.pi))
    # Minimising: a lower mean is better.
    low, high = expected_improvement(np.array([-1.0, 1.0]), np.array([0.1, 0.1]), best=0.0, maximize=False)
    assert low > 0.9 and high < 1e-6
    assert upper_confidence_bound(np.array([1.0]), np.array([0.5]), kappa=2.0, maximize=False)[0] == 0.0


def _predictions(count: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {"gap": (rng.uniform(0, 4, count), rng.uniform(0.05, 1.0, count)),
            "heat": (rng.uniform(-1, 2, count), rng.uniform(0.05, 1.0, count))}


WINDOW = parse_objective(["1.5<=gap<=3", "heat<1"])
BELOW = parse_objective(["heat<1", "1.5<=gap<=3"])  # one-sided first constraint: minimise heat


def test_score_functions_are_one_entry_each():
    """Every registered function plans a batch, ranked as its definition says."""
    predictions = _predictions(40)
    heat_mean, heat_std = predictions["heat"]
    expected = {
        "probability": probability_of_objective(BELOW, predictions),
        "ucb": -heat_mean + 2.0 * heat_std,
        "ei": expected_improvement(heat_mean, heat_std, -0.5, maximize=False),
        "greedy": -heat_mean,
        "uncertainty": predictions["gap"][1] + heat_std,
    }
    assert set(SCORE_FUNCTIONS) == {*expected, "random"}
    for name, function in SCORE_FUNCTIONS.items():
        plan = plan_batch(predictions, BELOW, AcquisitionSettings(function=name), size=5, best_labeled=-0.5,
                          rng=np.random.default_rng(0))
        assert plan.function == name and len(plan.chosen) == len(set(plan.chosen)) == 5
        assert sorted(plan.ranks) == list(range(1, 41))
        if name in expected:
            assert list(plan.order) == list(np.argsort(-expected[name], kind="stable")), name
            assert list(plan.chosen) == list(plan.order[:5]) and plan.note is None
            assert plan.reasons[0] == f"rank 1 of 40 by {name}"
        else:
            assert plan.reasons == ("random pick",) * 5 and not function.needs_model
    random_again = plan_batch({}, BELOW, AcquisitionSettings(function="random"), size=5, count=40,
                              rng=np.random.default_rng(0))
    assert list(random_again.chosen) == list(plan.chosen)  # random needs no predictions


def test_needs_are_declared_and_checked():
    predictions = _predictions(10)
    for name in ("ucb", "ei", "greedy"):
        assert SCORE_FUNCTIONS[name].one_sided
        with pytest.raises(InputError, match=f"'{name}' needs a one-sided first objective constraint") as caught:
            plan_batch(predictions, WINDOW, AcquisitionSettings(function=name), size=2, best_labeled=0.0)
        assert caught.value.field == "acquisition.function"
    with pytest.raises(ValueError, match="needs the best label"):
        plan_batch(predictions, BELOW, AcquisitionSettings(function="ei"), size=2)
    with pytest.raises(ValueError, match="needs predictions of gap"):
        plan_batch({"heat": predictions["heat"]}, BELOW, AcquisitionSettings(), size=2)
    with pytest.raises(ValueError, match="unknown acquisition function 'pi'; known: probability, ucb"):
        plan_batch(predictions, BELOW, AcquisitionSettings(function="pi"), size=2)
    with pytest.raises(ValueError, match="needs the expected cost"):
        plan_batch(predictions, BELOW, AcquisitionSettings(cost_aware=True), size=2)


def test_cost_aware_plans_weigh_each_scale_by_cost():
    count = 30
    predictions = _predictions(count, seed=1)
    costs = np.random.default_rng(2).uniform(1, 100, count)
    plain = {name: plan_batch(predictions, BELOW, AcquisitionSettings(function=name, diversity=0), size=4,
                              best_labeled=-0.5, rng=np.random.default_rng(3)) for name in SCORE_FUNCTIONS}
    for name, function in SCORE_FUNCTIONS.items():
        plan = plan_batch(predictions, BELOW, AcquisitionSettings(function=name, cost_aware=True, diversity=0),
                          size=4, costs=costs, best_labeled=-0.5, rng=np.random.default_rng(3))
        raw = plain[name].scores
        weighed = {"log": raw - np.log(costs), "positive": raw / costs,
                   "signed": (raw - raw.min()) / costs, "none": raw}[function.scale]
        np.testing.assert_allclose(plan.scores, weighed)
        if function.needs_model:
            assert plan.reasons[0] == f"rank 1 of {count} by {name} per expected second"
    # Of two equally promising candidates the cheaper comes first; a cheap one that will
    # hardly meet the objective comes last.
    even = {"heat": (np.array([0.0, 0.0, 3.0]), np.full(3, 0.5)), "gap": (np.full(3, 2.0), np.full(3, 0.5))}
    plan = plan_batch(even, BELOW, AcquisitionSettings(cost_aware=True), size=3, costs=np.array([50.0, 5.0, 1.0]))
    assert list(plan.order) == [1, 0, 2]


def test_candidates_without_a_finite_score_rank_last_and_the_rest_are_still_weighed_by_cost():
    """A NaN mean (a diverged ensemble, a candidate without its prior) or an infinite one
    scores last; the others are weighed by their own margin and cost, and explained."""
    heat = (np.array([1.0, 0.0, np.nan, -1.0, np.inf]), np.ones(5))  # minimised (BELOW)
    predictions = {"heat": heat, "gap": (np.full(5, 2.0), np.full(5, 0.1))}
    costs = np.array([1.0, 100.0, 1.0, 1000.0, 1.0])
    for name in ("ucb", "greedy"):
        plan = plan_batch(predictions, BELOW, AcquisitionSettings(function=name, cost_aware=True), size=4,
                          costs=costs, rng=np.random.default_rng(0))
        # Margins over the worst finite score (-mean, + 2 std for ucb): 0, 1, 2 per cost.
        np.testing.assert_allclose(plan.scores[[0, 1, 3]], [0.0, 0.01, 0.002])
        assert list(plan.scores[[2, 4]]) == [-np.inf, -np.inf]
        assert list(plan.order[:3]) == [1, 3, 0] and set(plan.order[3:]) == {2, 4}
        assert plan.reasons[0] == f"rank 1 of 5 by {name} per expected second"
        assert plan.reasons[3] == f"rank 4 of 5 by {name} per expected second, tied with 1 other"
        assert plan.note.startswith("2 candidates share a score with the batch's cut (-inf)")


def test_ties_are_broken_meaningfully_and_noted():
    # A model that learned nothing: every candidate has the same mean and spread.
    count = 12
    flat = {"gap": (np.full(count, 0.2), np.full(count, 0.3)), "heat": (np.full(count, 2.0), np.full(count, 0.3))}
    plan = plan_batch(flat, WINDOW, AcquisitionSettings(), size=3, rng=np.random.default_rng(0))
    assert plan.tied == count and plan.note.startswith(f"all {count} candidates score")
    assert "cannot tell them apart" in plan.note and "closeness of the means to the objective" in plan.note
    assert all("tied with 11 others" in reason for reason in plan.reasons)
    assert list(plan.chosen) != [0, 1, 2]  # not the lowest positions (ids), as before
    other = plan_batch(flat, WINDOW, AcquisitionSettings(), size=3, rng=np.random.default_rng(1))
    assert set(other.chosen) != set(plan.chosen)  # chance decides, not the list's order
    # Equal scores, different spreads: the tie-break (the spread, for greedy) decides.
    heat = (np.array([0.5, 0.5, 0.5, 0.9]), np.array([0.1, 0.3, 0.2, 0.1]))
    gap = (np.full(4, 2.0), np.full(4, 0.1))
    greedy_plan = plan_batch({"heat": heat, "gap": gap}, BELOW, AcquisitionSettings(function="greedy"), size=2)
    assert list(greedy_plan.order) == [1, 2, 0, 3] and greedy_plan.tied == 3
    assert "3 candidates share a score with the batch's cut (-0.5)" in greedy_plan.note
    assert "ordered by spread, then at random" in greedy_plan.note
    # Scores that tell the batch from the rest: no note, even with ties further down.
    clear = plan_batch({"heat": heat, "gap": gap}, BELOW, AcquisitionSettings(function="greedy"), size=3)
    assert clear.note is None and clear.tied == 0 and clear.reasons[0] == "rank 1 of 4 by greedy, tied with 2 others"


def test_diverse_batches_are_spread_over_clusters():
    rng = np.random.default_rng(1)
    # Ten near-copies score best; five distinct crystals score a little lower.
    embeddings = np.vstack([rng.normal(0, 0.01, (10, 4)), rng.normal(0, 1.0, (5, 4)) + 5])
    heat = (np.concatenate([np.linspace(0.7, 0.75, 10), np.linspace(0.8, 0.85, 5)]), np.full(15, 0.1))
    predictions = {"heat": heat, "gap": (np.full(15, 2.0), np.full(15, 0.1))}
    top = plan_batch(predictions, BELOW, AcquisitionSettings(diversity=0), size=4, embeddings=embeddings)
    assert set(top.chosen) == {0, 1, 2, 3}
    asked = []

    def embed(positions: np.ndarray) -> np.ndarray:  # lazily: only the shortlist is embedded
        asked.append(list(positions))
        return embeddings[positions]

    spread = plan_batch(predictions, BELOW, AcquisitionSettings(diversity=1), size=3, embeddings=embed)
    assert spread.chosen[0] == 0 and len(set(spread.chosen)) == 3
    assert sum(index >= 10 for index in spread.chosen) >= 1
    assert len(asked) == 1 and sorted(asked[0]) == list(range(15))  # a shortlist of 5 x 3
    assert any(reason.startswith("diversity pick: rank 1") for reason in spread.reasons)
    assert spread.reasons[0] == "rank 1 of 15 by probability"
    assert list(diverse_batch(embeddings[:4], 2, diversity=0)) == [0, 1]


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
    with session_scope(engine) as session:  # keys blocked besides, as a campaign's ledger's
        ledger = {session.get(Structure, ids["Al"]).dedup_key}
    assert eligible(engine, everything, ["other"], also_blocked=ledger) == [ids["Cu"], ids["Cu-twin"]]


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
    scale = ensemble.calibrate(data, enough=5, no_skill_error=1.0).std_scale  # 5 labels: fitted
    mean, std = ensemble.predict(data)
    y = np.arange(5.0)
    assert scale == pytest.approx(np.sqrt(np.mean(((y - raw_mean.numpy()) / raw_std.numpy()) ** 2)), rel=1e-5)
    torch.testing.assert_close(mean, raw_mean)
    torch.testing.assert_close(std, raw_std * scale)
    ensemble.save(tmp_path / "ensemble")
    torch.testing.assert_close(Ensemble.load(tmp_path / "ensemble").predict(data)[1], std)
    # As saved before the calibration was recorded: the scale alone, read as a calibration.
    torch.save({"std_scale": 2.5}, tmp_path / "ensemble" / CALIBRATION_FILE)
    assert Ensemble.load(tmp_path / "ensemble").calibration.std_scale == 2.5
    (tmp_path / "ensemble" / CALIBRATION_FILE).unlink()  # as saved before calibration existed
    assert Ensemble.load(tmp_path / "ensemble").std_scale == 1.0
