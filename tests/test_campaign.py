"""The campaign loop on real parts: EMT calculations in job processes, CGCNN ensembles
registered in an MLflow SQLite store, the ledger on SQLite and PostgreSQL; a campaign
process SIGKILLed in training and in DFT resumes without re-running finished DFT."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from sqlalchemy import func, select

from tests.dft_helpers import campaign_document, cu3au, store_crystals
from workbench.acquire.cost import PRIOR_SIZE_EXPONENT, expected_costs, fit_cost_model
from workbench.campaign import rounds
from workbench.campaign.config import config_from_document, load_config
from workbench.campaign.loop import (
    ingest,
    ledger_structures,
    open_campaign,
    progress,
    resume_round,
    run_campaign,
)
from workbench.campaign.report import ledger, write_report
from workbench.campaign.store import calculations_spent, campaign_id_of
from workbench.dashboard.figures import discovery
from workbench.dashboard.queries import campaign_view, ledger_points
from workbench.dft.presets import load_preset
from workbench.errors import InputError
from workbench.settings import Settings
from workbench.store.engine import session_scope
from workbench.store.schema import (
    Acquisition,
    AcquisitionStatus,
    Calculation,
    CalculationAttempt,
    CalculationStatus,
    Campaign,
    ModelVersion,
    Prediction,
    Round,
    RoundKind,
    TargetDefinition,
    TargetKind,
    TargetValue,
)


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(InputError, match=r"acquisition.batchsize: Extra inputs"):
        config_from_document(campaign_document("x", 10, acquisition={"batchsize": 4}))
    with pytest.raises(InputError, match="objective: cannot read constraint 'gap is small'"):
        config_from_document(campaign_document("x", 10, objective=["gap is small"]))
    with pytest.raises(InputError, match="candidates: .*give candidates.source"):
        config_from_document(campaign_document("x", 10, candidates={}))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed")
    with pytest.raises(InputError, match=f"{broken}: not valid YAML"):
        load_config(broken)


@pytest.mark.parametrize(("override", "message"), [
    ({"dft": {"preset": "gpaw-fsat"}}, r"dft.preset: unknown preset 'gpaw-fsat': use one of \[.*'gpaw-fast'"),
    ({"dft": {"preset": "missing.yaml"}}, "dft.preset: preset file missing.yaml does not exist"),
    ({"model": {"architecture": "cgcn"}}, "model.architecture: unknown architecture 'cgcn'; choose one of .*cgcnn"),
    ({"model": {"backbone": {"hiden": 64}}}, "model.backbone: cgcnn has no option 'hiden'; its options are .*hidden"),
    ({"model": {"device": "gpu"}}, "model.device: unknown device 'gpu'"),
])
def test_config_names_come_from_the_registries(override, message):
    with pytest.raises(InputError, match=message):
        config_from_document(campaign_document("x", 10, **override))


def test_a_bad_config_writes_nothing(engine, tmp_path, monkeypatch, database_url):
    """The flow's first task reads the file before it opens the campaign: no row, no DFT."""
    from flows.campaign import open_campaign_task

    monkeypatch.setenv("WORKBENCH_DATABASE_URL", database_url)
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(campaign_document("typo", 10, dft={"preset": "gpaw-fsat"})))
    with pytest.raises(InputError, match=f"{path}: dft.preset: unknown preset"):
        open_campaign_task.fn(str(path))
    with session_scope(engine) as session:
        assert session.scalar(select(func.count(Campaign.id))) == 0


def test_an_invalid_stored_config_gives_way_to_the_corrected_one(engine, alloys):
    """A campaign stored before its config was checked (unknown preset: it failed at
    dispatch) goes on under the same name with the corrected config; a valid stored
    config still refuses other settings."""
    stored = campaign_document("alloys", 10, dft={"preset": "gpaw-fsat"})
    with session_scope(engine) as session:
        session.add(Campaign(name="alloys", config=stored, status="active"))
    corrected = config_from_document(campaign_document("alloys", 10))
    campaign_id = open_campaign(engine, corrected)
    with session_scope(engine) as session:
        assert session.get(Campaign, campaign_id).config["dft"]["preset"] == "emt"
    with pytest.raises(InputError, match="exists with other settings for objective"):
        open_campaign(engine, config_from_document(campaign_document("alloys", 10, objective=["emt.energy_per_atom<=0"])))


def test_the_steps_reach_every_status_in_order():
    table = rounds.steps()
    assert [step.name for step in table] == ["retrain", "predict", "rank", "relax", "dispatch", "compute", "ingest"]
    assert [rounds.step_at(status).reaches for status in list(rounds.RoundStatus)[:-1]] == list(rounds.RoundStatus)[1:]
    assert [step.name for step in table if not step.runs_for(RoundKind.RANDOM)] == ["retrain", "predict"]
    with pytest.raises(ValueError, match="done has no step"):
        rounds.step_at(rounds.RoundStatus.DONE)


def _round_row(engine, round_id: int) -> Round:
    with session_scope(engine) as session:
        return session.get(Round, round_id)


def test_a_random_round_passes_the_model_steps_without_work(engine, alloys, settings):
    campaign_id = open_campaign(engine, config_from_document(campaign_document("alloys", 12)))
    round_ref = resume_round(engine, campaign_id)
    assert (round_ref.number, round_ref.kind, round_ref.status) == (0, RoundKind.RANDOM, "started")
    events = []
    for status in ("trained", "predicted", "ranked", "relaxed", "dispatched"):
        round_ref = rounds.run_step(engine, settings, round_ref, on_event=events.append)
        assert round_ref.status == status and _round_row(engine, round_ref.round_id).status == status
    row = _round_row(engine, round_ref.round_id)
    assert row.kind is RoundKind.RANDOM and row.models is None and row.model_version_id is None
    acquisitions = _acquisitions(engine, campaign_id)
    assert len(acquisitions) == 10 and {a.acquisition_function for a in acquisitions} == {"random"}
    assert all(a.status is AcquisitionStatus.DISPATCHED and a.calculation_id for a in acquisitions)
    assert events == ["round 0: 10 of 42 candidates chosen by random",
                      "round 0: 10 calculations queued (emt)"]


def test_a_round_moved_meanwhile_is_refused_and_the_step_rolled_back(engine, alloys, settings):
    campaign_id = open_campaign(engine, config_from_document(campaign_document("alloys", 12)))
    stale = resume_round(engine, campaign_id)
    moved = rounds.run_step(engine, settings, stale)  # another process passes the retrain step
    assert moved.status == "trained"
    with (pytest.raises(rounds.RoundMoved, match="round 0 is 'trained', not 'started'"),
          session_scope(engine) as session):
        session.get(Round, stale.round_id).models = {"written": 1}
        rounds.advance(session, stale)
    row = _round_row(engine, stale.round_id)
    assert row.status == "trained" and row.models is None
    with pytest.raises(rounds.RoundMoved):
        rounds.run_step(engine, settings, stale)
    assert _round_row(engine, stale.round_id).status == "trained"


def test_screen_and_relax_run_espresso_with_the_settings(engine, tmp_path, database_url, mlflow_uri):
    """The screen and relax steps run their presets with the settings' pseudopotentials and
    pw.x command, as the dft step does (Cs: not in the packaged set they used instead)."""
    from ase.build import bulk

    from workbench.campaign.loop import screen

    store_crystals(engine, {"Cs": bulk("Cs", "bcc", a=6.05)})
    pseudo_dir = tmp_path / "pseudopotentials"
    settings = Settings(home=tmp_path / "home", database_url=database_url, mlflow_tracking_uri=mlflow_uri,
                        espresso_pseudo_dir=str(pseudo_dir))
    campaign_id = open_campaign(engine, config_from_document(campaign_document(
        "espresso", 1, screen={"preset": "espresso"}, relax={"preset": "espresso-relax"})))
    round_ref = resume_round(engine, campaign_id)
    screen(engine, settings, round_ref)
    for status in ("trained", "predicted", "ranked", "relaxed"):
        round_ref = rounds.run_step(engine, settings, round_ref)
        assert round_ref.status == status
    summary = _round_row(engine, round_ref.round_id).summary
    assert summary["screen"]["failed"] == summary["relax"]["failed"] == 1
    with session_scope(engine) as session:
        messages = dict(session.execute(select(Calculation.preset, CalculationAttempt.message).join(
            CalculationAttempt, CalculationAttempt.calculation_id == Calculation.id)).all())
    assert set(messages) == {"espresso", "espresso-relax"}
    for message in messages.values():
        assert f"espresso pseudopotential directory {str(pseudo_dir)!r} does not exist" in message


def test_cost_model_learns_from_past_calculations(engine, alloys):
    rng = np.random.default_rng(0)
    nsites = rng.integers(2, 40, 60)
    spin = rng.random(60) < 0.5
    seconds = 0.01 * nsites**2.0 * np.where(spin, 3.0, 1.0) * np.exp(rng.normal(0, 0.05, 60))
    model = fit_cost_model(nsites, spin, seconds)
    assert model.coefficients[1] == pytest.approx(2.0, abs=0.15)  # the cubic prior pulls a little
    assert np.exp(model.coefficients[2]) == pytest.approx(3.0, rel=0.15)
    # No past calculation: the prior's cubic growth with the number of sites.
    prior = fit_cost_model(np.array([]), np.array([], bool), np.array([]))
    assert prior.coefficients[1] == pytest.approx(PRIOR_SIZE_EXPONENT)
    costs = expected_costs(engine, load_preset("gpaw-fast"), [alloys["Cu3Ni"], alloys["Cu3Au"]])
    assert costs[0] > costs[1]  # Ni is in the Materials Project's magnetic table: spin doubles the work


def _acquisitions(engine, campaign_id: int) -> list[Acquisition]:
    with session_scope(engine) as session:
        return list(session.scalars(select(Acquisition).join(Round).where(Round.campaign_id == campaign_id)
                                    .order_by(Round.number, Acquisition.batch)))


@pytest.mark.slow
def test_campaign_runs_to_its_budget_with_a_full_ledger(engine, alloys, settings, tmp_path, run_cli):
    config = config_from_document(campaign_document("alloys", 18))
    outcome = run_campaign(engine, settings, config)
    assert (outcome.spent, outcome.rounds) == (18, 3)  # 10 random, then 2 model-guided batches of 4
    acquisitions = _acquisitions(engine, outcome.campaign_id)
    assert len({a.structure_id for a in acquisitions}) == 18
    assert all(a.status is AcquisitionStatus.LABELED for a in acquisitions)
    guided = [a for a in acquisitions if a.acquisition_function == "probability"]
    assert len(guided) == 8 and all(a.model_version_id is not None for a in guided)
    target = "emt.energy_per_atom"
    threshold = float(config.objective[0].split("<=")[1])
    for a in acquisitions:
        assert a.outcome["hit"] == (a.outcome["computed"][target] <= threshold)
    for a in guided:
        assert set(a.predicted[target]) == {"mean", "std"} and a.predicted[target]["std"] >= 0
        assert a.score <= 0 and a.rank >= 1  # the log of the probability
    assert sorted(a.batch for a in guided) == [1, 1, 2, 2, 3, 3, 4, 4]
    with session_scope(engine) as session:
        assert session.scalar(select(Campaign.status)) == "finished"
        rounds = session.scalars(select(Round).order_by(Round.number)).all()
        assert [r.status for r in rounds] == ["done"] * 3
        assert rounds[0].models is None and set(rounds[2].models) == {target}
        assert session.scalar(select(func.count(Calculation.id))) == 18
    # The champion is the model of the last round.
    champion = MlflowClient(settings.mlflow_tracking_uri).get_model_version_by_alias(f"alloys-{target}", "champion")
    assert int(champion.version) == 2
    assert outcome.hits == sum(a.outcome["hit"] for a in acquisitions)
    # Running it again spends nothing more.
    again = run_campaign(engine, settings, config)
    assert (again.spent, again.rounds) == (18, 0)
    report = write_report(engine, outcome.campaign_id, tmp_path / "report")
    text = report.read_text()
    assert "**" + str(outcome.hits) + " hits**" in text and "![discovery](discovery.png)" in text
    # The report says where and when it was made, and how long the campaign took.
    assert " cores (" in text and "workbench commit " in text and "; wall time " in text
    assert (tmp_path / "report" / f"parity-{target}.png").stat().st_size > 0
    assert len(ledger(engine, outcome.campaign_id)) == 18
    status = run_cli("campaign", "status", "alloys").output
    assert f"18 of 18 calculations spent, {outcome.hits} hits; budget of 18 calculations spent" in status
    run_cli("campaign", "report", "alloys", "--out", tmp_path / "cli-report")
    # 8 rows of the ledger and the 2 guided rounds in the rounds table
    assert (tmp_path / "cli-report" / "report.md").read_text().count("| probability |") == 10
    run_cli("campaign", "status", "nonesuch", expect=1)


@pytest.mark.slow
def test_campaign_with_other_settings_is_refused(engine, alloys, settings):
    run_campaign(engine, settings, config_from_document(campaign_document("alloys", 10)))
    with pytest.raises(InputError, match="exists with other settings for objective"):
        run_campaign(engine, settings, config_from_document(
            campaign_document("alloys", 10, objective=["emt.energy_per_atom<=0"])))
    # The budget may grow: the campaign goes on from its ledger.
    grown = run_campaign(engine, settings, config_from_document(campaign_document("alloys", 14)))
    assert (grown.spent, grown.rounds) == (14, 1)


def test_the_dos_figure_shows_relaxed_candidates(engine, tmp_path):
    """A relaxed candidate's spectrum is computed on the structure its relaxation ended in;
    the prediction it was chosen on is the candidate's. The report pairs the two."""
    relaxed = cu3au()
    relaxed.set_cell(relaxed.cell * 1.02, scale_atoms=True)
    ids = store_crystals(engine, {"candidate": cu3au(), "relaxed": relaxed})
    campaign_id = open_campaign(engine, config_from_document(campaign_document(
        "relaxed", 10, targets=["emt.dos"], relax={"preset": "emt-relax"})))
    grid = np.linspace(-5.0, 5.0, 20)
    with session_scope(engine) as session:
        definition = TargetDefinition(name="emt.dos", kind=TargetKind.SPECTRUM, length=len(grid), grid=grid)
        version = ModelVersion(name="relaxed-emt.dos", registry_version=1, targets=["emt.dos"], architecture="cgcnn")
        calculation = Calculation(structure_id=ids["relaxed"], preset="emt", parameters={},
                                  status=CalculationStatus.DONE)
        session.add_all([definition, version, calculation])
        session.flush()
        round_row = Round(campaign_id=campaign_id, number=1, kind=RoundKind.MODEL, status="done",
                          models={"emt.dos": version.id})
        session.add(round_row)
        session.flush()
        session.add_all([
            Acquisition(round_id=round_row.id, structure_id=ids["candidate"], model_version_id=version.id,
                        acquisition_function="probability", score=0.0, rank=1, batch=1,
                        status=AcquisitionStatus.LABELED, calculation_id=calculation.id,
                        outcome={"computed": {}, "hit": False, "structure_id": ids["relaxed"]}),
            TargetValue(structure_id=ids["relaxed"], target_id=definition.id, value_array=np.exp(-grid**2),
                        calculation_id=calculation.id),
            Prediction(model_version_id=version.id, structure_id=ids["candidate"], target_id=definition.id,
                       mean_array=np.exp(-grid**2), std_array=np.full(len(grid), 0.1)),
        ])
    text = write_report(engine, campaign_id, tmp_path / "report").read_text()
    assert "![spectra-emt.dos](spectra-emt.dos.png)" in text
    assert (tmp_path / "report" / "spectra-emt.dos.png").stat().st_size > 0


@pytest.mark.parametrize("backend", ["sqlite"])
def test_candidates_relaxed_into_one_structure_are_counted_once(engine, settings):
    """Two candidates whose relaxations ended in the same structure share its calculation:
    the round counts one calculation's seconds and one hit, and the budget one calculation."""
    strained = cu3au()
    strained.set_cell(strained.cell * 1.02, scale_atoms=True)
    relaxed = cu3au()
    relaxed.set_cell(relaxed.cell * 0.98, scale_atoms=True)
    ids = store_crystals(engine, {"first": cu3au(), "second": strained, "relaxed": relaxed})
    campaign_id = open_campaign(engine, config_from_document(campaign_document(
        "converged", 10, objective=["emt.energy_per_atom<=0"], relax={"preset": "emt-relax"})))
    with session_scope(engine) as session:
        definition = TargetDefinition(name="emt.energy_per_atom", kind=TargetKind.SCALAR, units="eV/atom")
        calculation = Calculation(structure_id=ids["relaxed"], preset="emt", parameters={},
                                  status=CalculationStatus.DONE, wall_time_s=10.0)
        session.add_all([definition, calculation])
        session.flush()
        round_row = Round(campaign_id=campaign_id, number=1, kind=RoundKind.MODEL, status="computed", models={})
        session.add_all([round_row, TargetValue(structure_id=ids["relaxed"], target_id=definition.id, value=-1.0,
                                                calculation_id=calculation.id)])
        session.flush()
        session.add_all([Acquisition(round_id=round_row.id, structure_id=ids[name], acquisition_function="probability",
                                     score=0.0, rank=rank, batch=1, status=AcquisitionStatus.DISPATCHED,
                                     calculation_id=calculation.id)
                         for rank, name in enumerate(("first", "second"), start=1)])
        session.flush()
        round_ref = rounds.RoundRef.of(round_row)
    summary = ingest(engine, settings, round_ref)
    assert (summary["acquired"], summary["hits"], summary["dft_seconds"]) == (2, 1, 10.0)
    with session_scope(engine) as session:
        first, second = session.scalars(select(Acquisition).order_by(Acquisition.id)).all()
        assert first.outcome["hit"] and "duplicate_of" not in first.outcome
        assert (second.outcome["hit"], second.outcome["duplicate_of"]) == (False, first.id)
    assert (progress(engine, campaign_id).spent, progress(engine, campaign_id).hits) == (1, 1)
    view = campaign_view(engine, "converged")  # the dashboard counts in SQL what progress counts
    assert (view.spent, view.hits) == (1, 1)
    curve = discovery(ledger_points(engine, view), "t")["data"][0]  # and plots hits against it
    assert (curve["x"], curve["y"]) == ([1, 1], [1, 1])
    assert calculations_spent([4, 4, None, 5, None]) == [1, 1, 2, 3, 4]


def _wait_for(engine, condition, process, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition(engine):
            return
        if process.poll() is not None:
            pytest.fail(f"campaign process ended (exit {process.returncode}) before the kill point")
        time.sleep(0.05)
    pytest.fail("kill point not reached")


def _round_training(engine) -> bool:
    with session_scope(engine) as session:
        return session.scalar(select(func.count(Round.id)).where(Round.number == 1, Round.status == "started")) > 0


def _round_computing(engine) -> bool:
    with session_scope(engine) as session:
        return session.scalar(
            select(func.count(Calculation.id))
            .join(Acquisition, Acquisition.calculation_id == Calculation.id).join(Round)
            .where(Round.number == 2, Round.status == "dispatched", Calculation.status == CalculationStatus.DONE)
        ) > 0


@pytest.mark.slow
def test_killed_campaign_resumes_without_rerunning_dft(engine, alloys, settings, database_url, tmp_path):
    config_path = tmp_path / "campaign.yaml"
    config_path.write_text(yaml.safe_dump(campaign_document("alloys", 22)))
    environment = dict(os.environ, WORKBENCH_DATABASE_URL=database_url, WORKBENCH_HOME=str(settings.home),
                       MLFLOW_TRACKING_URI=settings.mlflow_tracking_uri, OMP_NUM_THREADS="1")
    command = [str(Path(sys.executable).parent / "workbench"), "campaign", "run", str(config_path)]

    def start() -> subprocess.Popen:
        return subprocess.Popen(command, env=environment, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    for kill_point in (_round_training, _round_computing):
        process = start()
        _wait_for(engine, kill_point, process)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finished = start()
    _, errors = finished.communicate(timeout=600)
    assert finished.returncode == 0, errors.decode()[-3000:]

    campaign_id = campaign_id_of(engine, "alloys")
    acquisitions = _acquisitions(engine, campaign_id)
    assert len(acquisitions) == 22 and len(ledger_structures(engine, campaign_id)) == 22
    assert all(a.status is AcquisitionStatus.LABELED for a in acquisitions)
    with session_scope(engine) as session:
        done_attempts = session.execute(
            select(CalculationAttempt.calculation_id, func.count()).where(
                CalculationAttempt.status == CalculationStatus.DONE).group_by(CalculationAttempt.calculation_id)
        ).all()
        assert len(done_attempts) == 22 and all(count == 1 for _, count in done_attempts)
        assert [r.status for r in session.scalars(select(Round).order_by(Round.number))] == ["done"] * 4
