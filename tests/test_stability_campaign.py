"""A stability campaign on real parts: candidates generated from two fcc prototypes when
the campaign opens, each batch pre-relaxed with EMT before its EMT labels, the objective
on the energy above the EMT hull (the models learn the formation energy), the hull
rewritten as each round's energies arrive, and the report's hull figure."""

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from workbench.campaign import rounds
from workbench.campaign.config import config_from_document, load_config
from workbench.campaign.loop import open_campaign, run_campaign
from workbench.campaign.report import write_report
from workbench.errors import InputError
from workbench.settings import Settings
from workbench.stability.store import update_hull
from workbench.store.engine import session_scope
from workbench.store.schema import (
    Acquisition,
    AcquisitionStatus,
    Calculation,
    Round,
    RoundKind,
    StructureLineage,
    StructureSource,
    TargetDefinition,
    TargetValue,
)
from workbench.store.schema import Campaign as CampaignRow

EXAMPLE = Path(__file__).resolve().parents[1] / "workbench" / "examples" / "stability-campaign.yaml"


def stability_document(name: str = "stable", budget: int = 13, **overrides) -> dict:
    document = {
        "name": name,
        "candidates": {"source": "fcc-decorations"},
        "generate": [
            {"prototype": "aflow:AB3_cP4_221_a_c", "sites": {"Au": ["Cu", "Pd", "Au"], "Cu": ["Cu", "Pd", "Au"]}},
            {"prototype": "aflow:AB_tP2_123_a_d", "sites": {"Cu": ["Cu", "Pd"], "Au": ["Au", "Pd"]}},
        ],
        "objective": ["emt.e_above_hull<=0.02"],
        "initial": 10, "budget": budget, "seed": 0,
        "model": {"members": 2, "epochs": 8, "patience": 8, "device": "cpu"},
        "acquisition": {"batch": 3},
        "relax": {"preset": "emt-relax"},
        "dft": {"preset": "emt", "references": True},
    }
    return {**document, **overrides}


def test_config_of_a_stability_campaign():
    config = config_from_document(stability_document())
    assert config.learned_targets == config.modelled_targets == ["emt.formation_energy_per_atom"]
    with pytest.raises(InputError, match="relax.preset: preset 'emt' does not relax"):
        config_from_document(stability_document(relax={"preset": "emt"}))
    with pytest.raises(InputError, match="generate needs candidates.source"):
        config_from_document(stability_document(candidates={"where": "nsites < 5"}))
    with pytest.raises(InputError, match=r"generate.0.sites: unknown element 'Qq'"):
        config_from_document(stability_document(generate=[{"prototype": "1", "sites": {"Qq": ["Cu"]}}]))
    assert [step.name for step in rounds.steps()][2:5] == ["rank", "relax", "dispatch"]
    example = load_config(EXAMPLE)
    assert example.relax is not None and example.generate and example.learned_targets[0].endswith(
        ".formation_energy_per_atom")


def test_generate_runs_once_when_the_campaign_opens(engine):
    config = config_from_document(stability_document())
    open_campaign(engine, config)
    with session_scope(engine) as session:
        pool = set(session.scalars(select(StructureSource.structure_id).where(
            StructureSource.source == "fcc-decorations")))
        lineage = session.scalar(select(func.count()).select_from(StructureLineage))
    assert len(pool) >= 12 and lineage >= 10
    open_campaign(engine, config)  # resumed: nothing generated again
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(StructureLineage)) == lineage
    with pytest.raises(InputError, match="site 'Ni' is not an element of the prototype"):
        open_campaign(engine, config_from_document(stability_document(
            "other", generate=[{"prototype": "aflow:AB_tP2_123_a_d", "sites": {"Ni": ["Cu"]}}])))


@pytest.mark.slow
def test_stability_campaign_end_to_end(engine, tmp_path, database_url, mlflow_uri):
    settings = Settings(home=tmp_path / "home", database_url=database_url, mlflow_tracking_uri=mlflow_uri)
    config = config_from_document(stability_document())
    events = []
    outcome = run_campaign(engine, settings, config, on_event=events.append)
    assert outcome.spent == 13 and outcome.stopped_because == "budget of 13 calculations spent"
    with session_scope(engine) as session:
        round_rows = session.scalars(select(Round).order_by(Round.number)).all()
        acquisitions = session.scalars(select(Acquisition).join(Round).order_by(Round.number, Acquisition.batch)).all()
        static = {row.id: row for row in session.scalars(select(Calculation).where(Calculation.preset == "emt"))}
        relaxations = session.scalar(select(func.count()).select_from(Calculation).where(
            Calculation.preset == "emt-relax"))
        hull_values = dict(session.execute(select(TargetValue.structure_id, TargetValue.value).join(TargetDefinition)
                                           .where(TargetDefinition.name == "emt.e_above_hull")).all())
        campaign = session.scalar(select(CampaignRow))
    assert [row.kind for row in round_rows] == [RoundKind.RANDOM, RoundKind.MODEL]
    assert relaxations == 13  # outside the budget, noted per round
    for row in round_rows:
        assert row.summary["relax"]["preset"] == "emt-relax" and row.summary["relax"]["failed"] == 0
        assert isinstance(row.summary["hull"]["emt"], dict)  # rewritten as the round's energies arrived
    assert all(a.status is AcquisitionStatus.LABELED for a in acquisitions)
    # Labels computed from where the EMT relaxation ended (a structure computed before, such
    # as an elemental reference the relaxation landed on, keeps its calculation).
    assert sum("start" in static[a.calculation_id].parameters for a in acquisitions) >= 10
    for acquisition in acquisitions:
        calculation = static[acquisition.calculation_id]
        labeled_on = acquisition.outcome.get("structure_id", acquisition.structure_id)
        assert calculation.structure_id == labeled_on
        above = acquisition.outcome["computed"]["emt.e_above_hull"]
        assert acquisition.outcome["hit"] == (above <= 0.02)
    # The model round ranked on predicted energies above the hull, derived from the formation energy.
    guided = [a for a in acquisitions if a.acquisition_function == "probability"]
    assert len(guided) == 3
    for acquisition in guided:
        formation, above = (acquisition.predicted[t] for t in ("emt.formation_energy_per_atom", "emt.e_above_hull"))
        assert above["std"] == pytest.approx(formation["std"]) and above["mean"] >= formation["mean"] - 1e-9  # the hull lies at or below 0
    # The ledger's last round judged on the hull as it then was; the store's is the same now.
    last = [a for a in acquisitions if a.round_id == round_rows[-1].id]
    assert [a.outcome["computed"]["emt.e_above_hull"] for a in last] == pytest.approx(
        [hull_values[a.outcome.get("structure_id", a.structure_id)] for a in last])
    again = update_hull(engine, "emt")
    assert again.new == again.updated == 0
    assert campaign.status == "finished"
    assert any("relaxing 10 structures with emt-relax" in event for event in events)

    report = write_report(engine, campaign.id, tmp_path / "report")
    text = report.read_text()
    assert "![hull-emt](hull-emt.png)" in text and (tmp_path / "report" / "hull-emt.png").stat().st_size > 0
    assert "emt.e_above_hull predicted" in text
    assert np.isfinite([a.outcome["computed"]["emt.formation_energy_per_atom"] for a in acquisitions]).all()
