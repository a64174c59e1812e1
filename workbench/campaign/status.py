"""Where a campaign stands: its rounds and what each found, spent budget, why it stopped."""

from dataclasses import dataclass

from sqlalchemy import Engine, select

from workbench.campaign.loop import campaign_config, campaign_id_of, progress, stop_reason
from workbench.store.engine import session_scope
from workbench.store.schema import Round


@dataclass(frozen=True)
class RoundLine:
    number: int
    status: str
    summary: dict  # what the round found (acquired, hits, failed, dft_seconds), once done


@dataclass(frozen=True)
class CampaignStatus:
    name: str
    rounds: list[RoundLine]
    spent: int  # calculations dispatched
    budget: int
    hits: int
    stopped_because: str | None  # None: more rounds to run


def campaign_status(engine: Engine, name: str) -> CampaignStatus:
    """The status of the campaign called ``name`` (NotFound if there is none)."""
    campaign_id = campaign_id_of(engine, name)
    config = campaign_config(engine, campaign_id)
    with session_scope(engine) as session:
        rounds = [RoundLine(row.number, str(row.status), dict(row.summary or {})) for row in session.scalars(
            select(Round).where(Round.campaign_id == campaign_id).order_by(Round.number))]
    state = progress(engine, campaign_id)
    return CampaignStatus(name=name, rounds=rounds, spent=state.spent, budget=config.budget, hits=state.hits,
                          stopped_because=stop_reason(engine, campaign_id, config))
