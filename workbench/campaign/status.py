"""Where a campaign stands: its rounds and what each found, spent budget, why it stopped."""

from dataclasses import dataclass

from sqlalchemy import Engine, select

from workbench.campaign.loop import progress, stop_reason
from workbench.campaign.store import campaign_config, campaign_id_of
from workbench.store.engine import session_scope
from workbench.store.schema import Round


@dataclass(frozen=True)
class RoundLine:
    number: int
    status: str
    summary: dict  # what the round found (its RoundCount keys), once done


@dataclass(frozen=True)
class CampaignStanding:
    name: str
    rounds: list[RoundLine]
    spent: int  # calculations dispatched
    budget: int
    hits: int
    stopped_because: str | None  # None: more rounds to run


def campaign_status(engine: Engine, name: str) -> CampaignStanding:
    """The status of the campaign called ``name`` (NotFound if there is none)."""
    campaign_id = campaign_id_of(engine, name)
    config = campaign_config(engine, campaign_id)
    with session_scope(engine) as session:
        rounds = [RoundLine(row.number, str(row.status), dict(row.summary or {})) for row in session.scalars(
            select(Round).where(Round.campaign_id == campaign_id).order_by(Round.number))]
    state = progress(engine, campaign_id)
    return CampaignStanding(name=name, rounds=rounds, spent=state.spent, budget=config.budget, hits=state.hits,
                            stopped_because=stop_reason(engine, campaign_id, config))
