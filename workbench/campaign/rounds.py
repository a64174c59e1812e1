"""A round's state machine, in one place: its statuses, its steps in order, and the one
function that moves a round on.

A round starts ``started``; each step runs from one status and leaves the round at the
next::

    started -retrain-> trained -predict-> predicted -rank-> ranked -relax-> relaxed
            -dispatch-> dispatched -compute-> computed -ingest-> done

A step declares the kinds of round it runs for. For a round of another kind it is passed
without work: a ``random`` round has no model to train or to predict with, so it goes
from ``started`` to ``predicted`` at once and is ranked at random. A step may also have
nothing to do under a campaign's config (``relax`` without a ``relax`` section): it then
only moves the round on.

:func:`advance` moves a round on by compare-and-set on ``rounds.status``
(``UPDATE rounds SET status = <next> WHERE id = ? AND status = <current>``), inside the
transaction of the step's last writes: a step's results and the status that says they
exist are committed together, and a step whose round another process moved meanwhile is
refused (:class:`RoundMoved`) with its writes rolled back.

:func:`workbench.campaign.loop.run_round` (``workbench campaign run``) and the Prefect
flow ``campaign`` (``flows/campaign.py``) both walk :func:`steps` with :func:`run_step`. A new step is one
status in :class:`RoundStatus` and one entry in :func:`steps`.
"""

import enum
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Protocol

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from workbench.errors import WorkbenchError
from workbench.settings import Settings
from workbench.store.engine import session_scope
from workbench.store.schema import Round, RoundKind

Events = Callable[[str], None]


class RoundStatus(enum.StrEnum):
    """Where a round is: ``started``, then the status each step of :func:`steps` leaves."""

    STARTED = "started"
    TRAINED = "trained"
    PREDICTED = "predicted"
    RANKED = "ranked"
    RELAXED = "relaxed"
    DISPATCHED = "dispatched"
    COMPUTED = "computed"
    DONE = "done"


@dataclass(frozen=True)
class RoundRef:
    """The round a step works on (ids only: what Prefect tasks pass around)."""

    campaign_id: int
    round_id: int
    number: int
    status: RoundStatus
    kind: RoundKind

    @classmethod
    def of(cls, row: Round) -> "RoundRef":
        return cls(row.campaign_id, row.id, row.number, RoundStatus(row.status), RoundKind(row.kind))


class StepFunction(Protocol):
    """What a step runs: it records its work in the store and, in the transaction of its
    last writes, calls :func:`advance`."""

    def __call__(self, engine: Engine, settings: Settings, round_ref: RoundRef, *,
                 on_event: Events | None = None) -> object: ...


@dataclass(frozen=True)
class Step:
    """One step of a round: it runs ``run`` from the status before it (``started`` for
    the first) and leaves the round at ``reaches``; rounds of other ``kinds`` pass it
    without work."""

    name: str
    run: StepFunction
    reaches: RoundStatus
    kinds: frozenset[RoundKind] = frozenset(RoundKind)

    def runs_for(self, kind: RoundKind) -> bool:
        return kind in self.kinds


MODEL_ROUNDS = frozenset({RoundKind.MODEL})


@cache
def steps() -> tuple[Step, ...]:
    """The steps of a round, in order (the step functions live in
    :mod:`workbench.campaign.loop`, which uses this module: imported here, when first asked)."""
    from workbench.campaign import loop

    table = (
        Step("retrain", loop.retrain, RoundStatus.TRAINED, kinds=MODEL_ROUNDS),
        Step("predict", loop.predict, RoundStatus.PREDICTED, kinds=MODEL_ROUNDS),
        Step("rank", loop.rank, RoundStatus.RANKED),
        Step("relax", loop.relax, RoundStatus.RELAXED),
        Step("dispatch", loop.dispatch, RoundStatus.DISPATCHED),
        Step("compute", loop.compute, RoundStatus.COMPUTED),
        Step("ingest", loop.ingest, RoundStatus.DONE),
    )
    reached = [RoundStatus.STARTED, *(step.reaches for step in table)]
    if reached != list(RoundStatus):
        raise AssertionError(f"the steps reach {reached}, not every status in order {list(RoundStatus)}")
    return table


def step_at(status: RoundStatus) -> Step:
    """The step that runs from ``status`` (a round that is ``done`` has none)."""
    order = list(RoundStatus)
    if status is RoundStatus.DONE:
        raise ValueError("a round that is done has no step left")
    return steps()[order.index(status)]


class RoundMoved(WorkbenchError):
    """A round was not where a step expected it: another process moved it meanwhile."""


def advance(session: Session, round_ref: RoundRef) -> RoundStatus:
    """Move the round from ``round_ref.status`` to the status its step reaches, by
    compare-and-set, in ``session``'s transaction; returns the new status.

    Raises :class:`RoundMoved` when the round is no longer at ``round_ref.status`` (the
    caller's transaction then rolls back, and the step's writes with it).
    """
    following = step_at(round_ref.status).reaches
    moved = session.execute(update(Round).where(
        Round.id == round_ref.round_id, Round.status == round_ref.status).values(status=following))
    if moved.rowcount != 1:
        now = session.scalar(select(Round.status).where(Round.id == round_ref.round_id))
        raise RoundMoved(f"round {round_ref.number} is {now!r}, not {round_ref.status.value!r}: "
                         "another process moved it on; run the campaign again to go on from there")
    return following


def current_round(engine: Engine, round_id: int) -> RoundRef:
    with session_scope(engine) as session:
        return RoundRef.of(session.get(Round, round_id))


def run_step(engine: Engine, settings: Settings, round_ref: RoundRef, *, on_event: Events | None = None,
             run: StepFunction | None = None) -> RoundRef:
    """Run the step at the round's status (``run`` in its place, if given: a flow spreads
    some steps over tasks), or move past it without work when it does not run for the
    round's kind; returns the round after it."""
    step = step_at(round_ref.status)
    if step.runs_for(round_ref.kind):
        (run or step.run)(engine, settings, round_ref, on_event=on_event)
    else:
        with session_scope(engine) as session:
            advance(session, round_ref)
    after = current_round(engine, round_ref.round_id)
    if after.status is not step.reaches:
        raise RoundMoved(f"round {round_ref.number} is {after.status.value!r} after step {step.name!r}, "
                         f"which leaves it {step.reaches.value!r}")
    return after
