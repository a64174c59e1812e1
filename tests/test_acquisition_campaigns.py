"""Every registered acquisition function, the cost-aware mode and the stop rules in real
campaigns: EMT calculations of the 42 alloys, tiny CGCNN ensembles registered in an MLflow
SQLite store, the ledger on SQLite (the loop's store code runs on both backends in
test_campaign.py). Each campaign buys 10 random labels, then one guided batch of 4."""

import numpy as np
import pytest
import torch
from sqlalchemy import select

from tests.dft_helpers import campaign_document
from workbench.acquire.scores import SCORE_FUNCTIONS, ScoreInputs
from workbench.campaign import loop, replay
from workbench.campaign.config import config_from_document
from workbench.campaign.loop import run_campaign
from workbench.errors import InputError
from workbench.store.engine import session_scope
from workbench.store.schema import Acquisition, Prediction, Round, RoundKind
from workbench.train.ensemble import pick_device

TARGET = "emt.energy_per_atom"
TINY_MODEL = {"members": 2, "epochs": 4, "patience": 4, "device": "cpu", "backbone": {"hidden": 8, "layers": 1}}


def _config(name: str, budget: int, **overrides):
    return config_from_document(campaign_document(name, budget, model=TINY_MODEL, **overrides))


def test_config_names_come_from_the_registry():
    for name in SCORE_FUNCTIONS:
        assert _config("ok", 14, acquisition={"function": name}).acquisition.settings().function == name
    with pytest.raises(InputError, match=r"acquisition.function: unknown acquisition function 'pi'; "
                                         r"choose one of probability, ucb, ei, greedy, uncertainty, random"):
        _config("x", 14, acquisition={"function": "pi"})
    for name in (name for name, function in SCORE_FUNCTIONS.items() if function.one_sided):
        with pytest.raises(InputError, match=f"acquisition: function '{name}' needs a one-sided first objective"):
            _config("x", 14, objective=[f"-4<={TARGET}<=-3"], acquisition={"function": name})


def _rounds(engine, campaign_id: int) -> list[tuple[Round, list[Acquisition]]]:
    with session_scope(engine) as session:
        rounds = session.scalars(select(Round).where(Round.campaign_id == campaign_id).order_by(Round.number)).all()
        return [(round_row, list(session.scalars(select(Acquisition).where(Acquisition.round_id == round_row.id)
                                                 .order_by(Acquisition.batch)))) for round_row in rounds]


def _round_predictions(engine, model_version_id: int) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Every candidate the round's model predicted (those it ranked), with mean and std."""
    with session_scope(engine) as session:
        rows = session.execute(select(Prediction.structure_id, Prediction.mean, Prediction.std)
                               .where(Prediction.model_version_id == model_version_id)
                               .order_by(Prediction.structure_id)).all()
    return [row.structure_id for row in rows], np.array([row.mean for row in rows]), np.array([row.std for row in rows])


def _recomputed(config, function_name: str, mean, std, best: float) -> np.ndarray:
    function = SCORE_FUNCTIONS[function_name]
    return function.score(ScoreInputs(len(mean), {TARGET: (mean, std)}, config.parsed_objective,
                                      config.acquisition.kappa, best, np.random.default_rng(0)))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("function", list(SCORE_FUNCTIONS))
def test_each_function_chooses_a_campaign_batch(engine, alloys, settings, function):
    config = _config(f"by-{function}", 14, acquisition={"function": function, "batch": 4, "diversity": 0})
    outcome = run_campaign(engine, settings, config)
    assert (outcome.spent, outcome.rounds, outcome.stopped_because) == (14, 2, "budget of 14 calculations spent")
    (first, initial), (guided_round, guided) = _rounds(engine, outcome.campaign_id)
    assert first.kind is RoundKind.RANDOM and {a.acquisition_function for a in initial} == {"random"}
    assert guided_round.kind is RoundKind.MODEL and [a.batch for a in guided] == [1, 2, 3, 4]
    plan = guided_round.summary["acquisition"]
    assert plan["function"] == function and len(plan["reasons"]) == 4
    assert {a.acquisition_function for a in guided} == {function}
    if not SCORE_FUNCTIONS[function].needs_model:
        assert plan["reasons"] == ["random pick"] * 4
        return
    # The ledger's scores and the batch are the registry's function of the stored predictions.
    ids, mean, std = _round_predictions(engine, guided_round.model_version_id)
    best = min(a.outcome["computed"][TARGET] for a in initial)  # the labels when the round ranked
    scores = _recomputed(config, function, mean, std, best)
    by_id = dict(zip(ids, scores, strict=True))
    for a in guided:
        assert a.score == pytest.approx(by_id[a.structure_id], rel=1e-6, abs=1e-9)
        assert a.predicted[TARGET] == pytest.approx({"mean": mean[ids.index(a.structure_id)],
                                                     "std": std[ids.index(a.structure_id)]})
    assert {a.structure_id for a in guided} == {ids[i] for i in np.argsort(-scores, kind="stable")[:4]}
    assert [a.rank for a in guided] == [1, 2, 3, 4] and plan["reasons"][0] == f"rank 1 of {len(ids)} by {function}"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_cost_aware_campaign_weighs_probability_by_expected_seconds(engine, alloys, settings):
    config = _config("cheap", 14, acquisition={"batch": 4, "cost_aware": True}, dft={"preset": "emt", "jobs": 2})
    outcome = run_campaign(engine, settings, config)
    (_, initial), (guided_round, guided) = _rounds(engine, outcome.campaign_id)
    assert all(a.expected_cost_s > 0 for a in initial + guided)
    ids, mean, std = _round_predictions(engine, guided_round.model_version_id)
    log_probability = _recomputed(config, "probability", mean, std, 0.0)
    by_id = dict(zip(ids, log_probability, strict=True))
    for a in guided:
        assert a.score == pytest.approx(by_id[a.structure_id] - np.log(a.expected_cost_s), rel=1e-6)
    assert guided_round.summary["acquisition"]["reasons"][0].endswith("by probability per expected second")
    # The random round is a baseline: its costs are recorded, never weighed.
    assert all(a.acquisition_function == "random" and 0 <= a.score <= 1 for a in initial)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(("stop", "reason"), [({"hits": 1}, "hits found"),
                                               ({"rounds": 1}, "1 model-guided rounds run")])
def test_stop_rules_end_a_campaign_before_its_budget(engine, alloys, settings, stop, reason):
    outcome = run_campaign(engine, settings, _config(f"stop-{next(iter(stop))}", 30, stop=stop,
                                                     acquisition={"batch": 4}))
    assert outcome.stopped_because.endswith(reason) and outcome.spent < 30
    if "hits" in stop:
        assert outcome.hits >= 1
    else:
        assert (outcome.spent, outcome.rounds) == (14, 2)
    again = run_campaign(engine, settings, _config(f"stop-{next(iter(stop))}", 30, stop=stop,
                                                   acquisition={"batch": 4}))
    assert again.spent == outcome.spent and again.rounds == 0  # a finished campaign stays finished


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_diverse_batch_is_embedded_by_the_replays_helper_on_the_configured_device(engine, alloys, settings):
    """A diverse round embeds its shortlist with the replay's helper, on the config's
    ``model.device``. A CPU-only machine cannot tell ``cpu`` from ``auto``: the round runs
    end to end, and the helper is shown to compute on the device it is given."""
    config = _config("spread", 14, acquisition={"batch": 4, "diversity": 1})
    outcome = run_campaign(engine, settings, config)
    (_, _), (guided_round, guided) = _rounds(engine, outcome.campaign_id)
    assert len(guided) == 4 and len(guided_round.summary["acquisition"]["reasons"]) == 4
    assert loop.embed is replay.embed
    ids = [a.structure_id for a in guided]
    embedded = loop._embeddings(engine, settings, guided_round.model_version_id, ids,
                                pick_device(config.model.device))
    assert embedded.shape[0] == 4 and np.isfinite(embedded).all()
    # A device nothing can be computed on: the helper fails there rather than pick its own.
    with pytest.raises(RuntimeError, match="meta tensors"):
        loop._embeddings(engine, settings, guided_round.model_version_id, ids, torch.device("meta"))
