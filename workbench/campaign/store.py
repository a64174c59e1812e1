"""A campaign as the store keeps it, read without the loop's model and DFT stack (the
read-only dashboard imports this, not :mod:`workbench.campaign.loop`): its status, its
stored config, what a done round counts, and a row of its ledger."""

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, select

from workbench.campaign.config import CampaignConfig, config_from_document
from workbench.errors import NotFound
from workbench.store.engine import session_scope
from workbench.store.schema import Campaign


class CampaignStatus(enum.StrEnum):
    """``campaigns.status`` (a plain string column): rounds still to run, or stopped by its
    budget or a stopping rule (a resume that lifts them makes it active again)."""

    ACTIVE = "active"
    FINISHED = "finished"


class RoundCount(enum.StrEnum):
    """What a done round counts, under these keys of its summary: candidates acquired,
    hits, failed acquisitions and the seconds of its DFT (written by
    :func:`workbench.campaign.loop.ingest`; shown by ``workbench campaign status``, the
    report and the dashboard)."""

    ACQUIRED = "acquired"
    HITS = "hits"
    FAILED = "failed"
    DFT_SECONDS = "dft_seconds"

    @property
    def heading(self) -> str:
        """The column heading tables show it under."""
        return "DFT s" if self is RoundCount.DFT_SECONDS else self.value


@dataclass(frozen=True)
class LedgerRow:
    """One acquisition of the ledger, as the report and the dashboard show it."""

    round: int
    batch: int
    structure_id: int
    formula: str
    function: str
    score: float
    rank: int
    status: str
    predicted: dict
    outcome: dict
    calculation_id: int | None
    dft_seconds: float | None
    model_version: str | None


def campaign_config(engine: Engine, campaign_id: int) -> CampaignConfig:
    with session_scope(engine) as session:
        campaign = session.get(Campaign, campaign_id)
        return config_from_document(campaign.config, origin=f"campaign {campaign.name!r}")


def campaign_id_of(engine: Engine, name: str) -> int:
    with session_scope(engine) as session:
        campaign_id = session.scalar(select(Campaign.id).where(Campaign.name == name))
    if campaign_id is None:
        raise NotFound(f"no campaign named {name!r} in the store")
    return campaign_id


def calculations_spent(calculation_ids: Sequence[int | None]) -> list[int]:
    """The DFT calculations spent after each acquisition of a ledger, in its order: one
    more for each new calculation (an acquisition without one counts alone), none for an
    acquisition labeled by an earlier one's calculation (``duplicate_of``)."""
    seen: set = set()
    spent = []
    for position, calculation_id in enumerate(calculation_ids):
        seen.add(calculation_id if calculation_id is not None else f"acquisition {position}")
        spent.append(len(seen))
    return spent
