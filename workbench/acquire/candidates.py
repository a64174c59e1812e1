"""Which structures may still be acquired.

A candidate is out when a structure with the same dedup key (formula, space group,
volume bin: the importer's notion of "maybe the same crystal") is labeled for one of the
objective's targets, or has a queued or running calculation, or was dispatched by a
campaign and not yet labeled. Matching by key, not by id, keeps a campaign from paying
twice for one crystal stored under two ids.
"""

from collections.abc import Collection

from sqlalchemy import Engine, or_, select

from workbench.store.bulk import one_of
from workbench.store.engine import session_scope
from workbench.store.schema import (
    Acquisition,
    AcquisitionStatus,
    Calculation,
    CalculationStatus,
    Structure,
    TargetDefinition,
    TargetValue,
)

IN_FLIGHT = (CalculationStatus.QUEUED, CalculationStatus.RUNNING)


def blocked_keys(engine: Engine, targets: list[str]) -> set[str]:
    """Dedup keys of structures labeled for ``targets`` or being computed."""
    labeled = (
        select(TargetValue.structure_id).join(TargetDefinition)
        .where(TargetDefinition.name.in_(targets))
    )
    computing = select(Calculation.structure_id).where(Calculation.status.in_(IN_FLIGHT))
    dispatched = select(Acquisition.structure_id).where(Acquisition.status == AcquisitionStatus.DISPATCHED)
    with session_scope(engine) as session:
        return set(session.scalars(
            select(Structure.dedup_key).distinct().where(or_(
                Structure.id.in_(labeled), Structure.id.in_(computing), Structure.id.in_(dispatched),
            ))
        ))


def eligible(engine: Engine, structure_ids: list[int], targets: list[str], *,
             also_blocked: Collection[str] = frozenset()) -> list[int]:
    """``structure_ids`` without the blocked ones, nor those with a dedup key in
    ``also_blocked`` (a campaign's ledger), order kept."""
    blocked = blocked_keys(engine, targets) | set(also_blocked)
    with session_scope(engine) as session:
        keys = dict(session.execute(
            select(Structure.id, Structure.dedup_key).where(one_of(session, Structure.id, structure_ids))
        ).all())
    return [structure_id for structure_id in structure_ids if keys.get(structure_id) not in blocked]
