"""Run queued calculations: one process and folder per attempt, limits, retries, a ledger.

A calculation is one row per (structure, preset). Workers claim it atomically
(``queued`` -> ``running``), run attempts as child processes (:mod:`workbench.dft.job`)
in their own process group with a wall-time limit, record every attempt with its reason
of failure (``timeout``, ``scf``, ``crash``, ``parse``, ``lost``, ``refused``: a
relaxation ended in a structure the store refuses, ``conflict``: the store holds a value
of one of its targets from another origin), and ingest a result in one transaction that
also marks the calculation ``done``. SCF non-convergence climbs the preset's ladder of
changed settings; a crash is retried ``crash_retries`` times; a time-out is not retried
unless the preset says so. An error of the runner itself fails the calculations it had
claimed (``crash``) before it is raised, so that none stays ``running``; a database
error leaves them running, for :func:`requeue_lost` once the store is back.

A worker refreshes ``heartbeat_at`` while its job runs. A ``running`` calculation whose
worker process is gone (same host) or whose heartbeat is older than ``stale_after_s``
(any host) is re-queued by the next :func:`run_queued`; a result its job finished
before the worker died is ingested from the folder instead of being computed again.

A preset with ``batch_size`` above 1 (the universal potentials) runs :func:`run_batch`:
one process builds the calculator once and computes many structures, each still with
its own attempt row, folder and one-transaction ingest, so that a failed structure fails
alone and the wall-time limit applies to the batch.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import DBAPIError

from workbench.dft import job as job_protocol
from workbench.dft.ingest import IngestConflict, add_formation_energies, ingest_outputs
from workbench.dft.presets import Preset, calculator_path, initial_moments, resolve_parameters
from workbench.dft.references import reference_structure_ids
from workbench.dft.relaxation import RelaxedStructureRefused
from workbench.errors import InputError, NotFound
from workbench.settings import Settings
from workbench.store.bulk import insert_ignoring_duplicates
from workbench.store.engine import session_scope
from workbench.store.queries import structures_where
from workbench.store.schema import (
    Calculation,
    CalculationAttempt,
    CalculationStatus,
    Structure,
)
from workbench.structures.crystal import Crystal

REASONS = ("timeout", "scf", "crash", "parse", "lost", "refused", "conflict")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# Fortran programs (pw.x) buffer stdout and lose their error message when MPI aborts.
UNBUFFERED_FORTRAN = {"GFORTRAN_UNBUFFERED_PRECONNECTED": "y"}


@dataclass(frozen=True)
class RunOptions:
    """How a worker runs calculations.

    Attributes:
        workdir: root folder; a calculation works in ``workdir/<preset>/<structure id>``.
        threads: threads per calculation (OpenMP/BLAS variables of the job).
        jobs: calculations run at once by this worker.
        wall_time_s: limit per attempt; ``None`` takes the preset's.
        max_attempts: attempts per calculation and run; ``None`` takes the preset's.
        heartbeat_s: how often a running calculation's heartbeat is refreshed.
        stale_after_s: a heartbeat this old marks a calculation of another host as lost.
        espresso_pseudo_dir: pseudopotentials for the ``espresso`` calculator.
        espresso_command: the ``pw.x`` command line.
        batch_size: structures per worker process; ``None`` takes the preset's.
    """

    workdir: Path
    threads: int = 1
    jobs: int = 1
    wall_time_s: float | None = None
    max_attempts: int | None = None
    heartbeat_s: float = 10.0
    stale_after_s: float = 300.0
    espresso_pseudo_dir: str = ""
    espresso_command: str = "pw.x"
    batch_size: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, threads: int = 1, jobs: int = 1, wall_time_s: float | None = None,
                      max_attempts: int | None = None) -> "RunOptions":
        """The options of a worker under ``settings``: its DFT folder and ``espresso`` setup
        (which every preset that may run ``pw.x``, relaxations included, needs)."""
        return cls(workdir=settings.dft_dir, threads=threads, jobs=jobs, wall_time_s=wall_time_s,
                   max_attempts=max_attempts, espresso_pseudo_dir=settings.espresso_pseudo_dir,
                   espresso_command=settings.espresso_command)


@dataclass
class AttemptOutcome:
    reason: str | None  # None when the attempt succeeded
    message: str = ""
    exit_code: int | None = None
    results: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    wall_time_s: float = 0.0


@dataclass
class RunReport:
    done: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # calculation id -> reason
    requeued: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # claimed by another worker meanwhile
    references_missing: dict[str, str] = field(default_factory=dict)
    formation_energies: int = 0
    # The preset's hull (a HullReport, or why it has none), rewritten when new formation
    # energies reach a level that has one.
    hull: object | None = None


Events = Callable[[int, str], None]


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime | None) -> datetime | None:
    # SQLite hands timestamps back without a zone; they were written in UTC.
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


# -- choosing and queueing ---------------------------------------------------------------

def select_structures(engine: Engine, preset: str, *, ids: list[int] | None = None,
                      where: str | None = None, every: bool = False) -> list[int]:
    """Structure ids chosen by id list, an SQL condition on ``structures``, or ``every``
    structure without a done calculation for ``preset``."""
    chosen = [ids is not None, where is not None, every]
    if sum(chosen) != 1:
        raise ValueError("choose structures with exactly one of ids, where or every")
    if ids is not None:
        with session_scope(engine) as session:
            known = set(session.scalars(select(Structure.id).where(Structure.id.in_(ids))))
        unknown = sorted(set(ids) - known)
        if unknown:
            raise InputError(f"no structures with ids {unknown}", field="ids")
        return list(dict.fromkeys(ids))
    if where is not None:
        return structures_where(engine, where, option="--where")
    with session_scope(engine) as session:
        done = select(Calculation.structure_id).where(
            Calculation.preset == preset, Calculation.status == CalculationStatus.DONE)
        return list(session.scalars(select(Structure.id).where(Structure.id.not_in(done)).order_by(Structure.id)))


def queue_calculations(engine: Engine, structure_ids: list[int], preset: Preset, *,
                       starts: dict[int, dict] | None = None) -> list[int]:
    """Queue a calculation per structure unless one exists for the preset; returns the
    ids of the calculations of these structures (new or existing), in order.

    ``starts`` gives some structures another geometry to start from (a previous stage's
    relaxed cell, in the stored structure's site order): ``{"lattice", "frac_coords",
    "calculation_id"}``, kept in the new calculation's parameters as ``start``.
    """
    starts = starts or {}
    rows = [
        {"structure_id": structure_id, "preset": preset.name,
         "parameters": preset.to_dict() | ({"start": starts[structure_id]} if structure_id in starts else {}),
         "status": CalculationStatus.QUEUED}
        for structure_id in structure_ids
    ]
    with session_scope(engine) as session:
        # The unique (structure, preset) constraint makes concurrent queueing safe.
        insert_ignoring_duplicates(session, Calculation.__table__, rows)
        found = dict(session.execute(
            select(Calculation.structure_id, Calculation.id)
            .where(Calculation.preset == preset.name, Calculation.structure_id.in_(structure_ids))
        ).all())
    return [found[structure_id] for structure_id in structure_ids]


def retry_failed(engine: Engine, preset: str, *, ids: list[int] | None = None,
                 reasons: list[str] | None = None) -> list[int]:
    """Put failed calculations of ``preset`` (optionally only these calculation ids or
    failure reasons) back in the queue; returns their ids."""
    condition = (Calculation.preset == preset) & (Calculation.status == CalculationStatus.FAILED)
    if ids is not None:
        condition &= Calculation.id.in_(ids)
    if reasons is not None:
        unknown = sorted(set(reasons) - set(REASONS))
        if unknown:
            raise InputError(f"unknown reasons {unknown}; a failure's reason is one of {', '.join(REASONS)}",
                             field="--reason")
        condition &= Calculation.reason.in_(reasons)
    with session_scope(engine) as session:
        chosen = list(session.scalars(select(Calculation.id).where(condition)))
        if chosen:
            session.execute(update(Calculation).where(Calculation.id.in_(chosen))
                            .values(status=CalculationStatus.QUEUED, reason=None))
    return chosen


# -- lost workers ------------------------------------------------------------------------

def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    status = Path(f"/proc/{pid}/stat")
    if status.exists():
        try:
            return status.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return True
    return True


def requeue_lost(engine: Engine, *, stale_after_s: float) -> list[int]:
    """Re-queue running calculations whose worker is gone; returns their ids."""
    host = socket.gethostname()
    now = _now()
    with session_scope(engine) as session:
        running = session.execute(
            select(Calculation.id, Calculation.host, Calculation.pid, Calculation.heartbeat_at)
            .where(Calculation.status == CalculationStatus.RUNNING)
        ).all()
        lost = [
            calculation_id for calculation_id, worker_host, pid, heartbeat in running
            if (worker_host == host and pid is not None and not process_alive(pid))
            or heartbeat is None
            or (now - _aware(heartbeat)).total_seconds() > stale_after_s
        ]
        if lost:
            session.execute(
                update(CalculationAttempt)
                .where(CalculationAttempt.calculation_id.in_(lost),
                       CalculationAttempt.status == CalculationStatus.RUNNING)
                .values(status=CalculationStatus.FAILED, reason="lost", finished_at=now,
                        message="the worker running this attempt disappeared")
            )
            session.execute(
                update(Calculation)
                .where(Calculation.id.in_(lost), Calculation.status == CalculationStatus.RUNNING)
                .values(status=CalculationStatus.QUEUED, host=None, pid=None, heartbeat_at=None)
            )
    return lost


# -- running -----------------------------------------------------------------------------

def _claim(engine: Engine, calculation_id: int, threads: int) -> bool:
    now = _now()
    with session_scope(engine) as session:
        claimed = session.execute(
            update(Calculation)
            .where(Calculation.id == calculation_id, Calculation.status == CalculationStatus.QUEUED)
            .values(status=CalculationStatus.RUNNING, host=socket.gethostname(), pid=os.getpid(),
                    threads=threads, heartbeat_at=now,
                    started_at=func.coalesce(Calculation.started_at, now))
        )
        return claimed.rowcount == 1


def _heartbeat(engine: Engine, calculation_id: int) -> None:
    with session_scope(engine) as session:
        session.execute(update(Calculation).where(Calculation.id == calculation_id)
                        .values(heartbeat_at=_now()))


def _read_result(directory: Path) -> AttemptOutcome:
    try:
        results = json.loads((directory / job_protocol.RESULT_FILE).read_text())
        with np.load(directory / job_protocol.ARRAYS_FILE) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except (OSError, ValueError) as error:
        return AttemptOutcome("parse", f"unreadable result in {directory}: {error}")
    return AttemptOutcome(None, results=results, arrays=arrays)


def _read_error(directory: Path, exit_code: int) -> AttemptOutcome:
    try:
        error = json.loads((directory / job_protocol.ERROR_FILE).read_text())
        return AttemptOutcome(error["reason"], error["message"], exit_code)
    except (OSError, ValueError, KeyError):
        if exit_code < 0:
            message = f"killed by signal {signal.Signals(-exit_code).name}"
        else:
            message = f"exited with code {exit_code}; see stderr.log"
        return AttemptOutcome("crash", message, exit_code)


def _run_job_process(directory: Path, *, threads: int, wall_time_s: float, tick_s: float,
                     tick: Callable[[], None]) -> tuple[int | None, float]:
    """``python -m workbench.dft.job directory`` as a child process group, ``tick`` called
    every ``tick_s`` while it runs (the group is killed if ``tick`` raises); returns (exit
    code, or None if killed at the limit; seconds)."""
    environment = os.environ | UNBUFFERED_FORTRAN | {name: str(threads) for name in THREAD_VARIABLES}
    started = time.monotonic()
    deadline = started + wall_time_s
    with open(directory / "stdout.log", "wb") as stdout, open(directory / "stderr.log", "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "workbench.dft.job", str(directory)],
            cwd=directory, stdout=stdout, stderr=stderr, env=environment, start_new_session=True,
        )
        while True:
            remaining = deadline - time.monotonic()
            try:
                exit_code = process.wait(timeout=max(0.0, min(tick_s, remaining)))
                return exit_code, time.monotonic() - started
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    # The job's own children (MPI ranks, pw.x) share its process group.
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    return None, time.monotonic() - started
                try:
                    tick()
                except BaseException:
                    # The runner failed while the job ran (its store, an ingest): the job,
                    # in a session of its own, must not compute on beside its replacement.
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    raise


def run_attempt(directory: Path, job: dict, *, threads: int, wall_time_s: float,
                heartbeat_s: float, heartbeat: Callable[[], None]) -> AttemptOutcome:
    """Run one attempt in ``directory`` as a child process group, killed at the limit."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / job_protocol.JOB_FILE).write_text(json.dumps(job, indent=1))
    exit_code, elapsed = _run_job_process(directory, threads=threads, wall_time_s=wall_time_s,
                                          tick_s=heartbeat_s, tick=heartbeat)
    if exit_code is None:
        return AttemptOutcome("timeout", f"killed after the wall-time limit of {wall_time_s:g} s",
                              -signal.SIGKILL, wall_time_s=elapsed)
    outcome = _read_result(directory) if exit_code == 0 else _read_error(directory, exit_code)
    outcome.exit_code = exit_code
    outcome.wall_time_s = elapsed
    return outcome


def structure_record(crystal: Crystal, preset: Preset) -> dict:
    """A structure as the job reads it, with the preset's initial moments."""
    moments = initial_moments(crystal.to_ase(), preset.spin)
    return {
        "symbols": list(crystal.species),
        "cell": np.asarray(crystal.lattice).tolist(),
        "frac_coords": np.asarray(crystal.frac_coords).tolist(),
        "initial_magmoms": None if moments is None else moments.tolist(),
    }


def calculator_record(preset: Preset, atoms, rung: int, options: RunOptions) -> dict:
    """The calculator part of a job (or batch) record: which calculator, set up how."""
    module, class_name = calculator_path(preset)
    return {
        "calculator_path": f"{module}:{class_name}",
        "parameters": resolve_parameters(preset, atoms, rung),
        "properties": list(preset.properties),
        "dos": preset.dos,
        "relax": None if preset.relax is None else asdict(preset.relax),
        "runner_pid": os.getpid(),
        "espresso_pseudo_dir": options.espresso_pseudo_dir,
        "espresso_command": options.espresso_command,
    }


def starting_crystal(calculation: Calculation, structure: Structure) -> Crystal:
    """The geometry a calculation starts from: its ``start`` (see :func:`queue_calculations`)
    or the stored structure's."""
    start = (calculation.parameters or {}).get("start")
    lattice, frac_coords = (start["lattice"], start["frac_coords"]) if start else (
        structure.lattice, structure.frac_coords)
    return Crystal.from_stored(lattice, structure.species, frac_coords)


def job_record(preset: Preset, crystal: Crystal, rung: int, options: RunOptions) -> dict:
    """What :mod:`workbench.dft.job` reads from ``job.json`` for one attempt."""
    return calculator_record(preset, crystal.to_ase(), rung, options) | {
        "structure": structure_record(crystal, preset)}


def _retry_rung(preset: Preset, reasons: list[str]) -> int | None:
    """The ladder rung of the next attempt after failures ``reasons`` (this run), or None."""
    last = reasons[-1]
    scf_failures = reasons.count("scf")
    if last == "scf":
        return scf_failures if scf_failures <= len(preset.scf_ladder) else None
    rung = min(scf_failures, len(preset.scf_ladder))
    if last == "crash":
        return rung if reasons.count("crash") <= preset.crash_retries else None
    if last == "timeout":
        return rung if preset.retry_timeouts else None
    return None


def _finished_result(directory: Path | None) -> AttemptOutcome | None:
    # A job that wrote its result before its worker died needs no second run.
    if directory is None or not (directory / job_protocol.RESULT_FILE).is_file():
        return None
    outcome = _read_result(directory)
    outcome.wall_time_s = outcome.results.get("compute_s", 0.0)
    return outcome if outcome.reason is None else None


def run_calculation(engine: Engine, calculation_id: int, preset: Preset, options: RunOptions,
                    on_event: Events | None = None) -> str | None:
    """Claim and run one queued calculation; returns ``done``, ``failed`` or ``None`` if
    another worker had it."""
    if not _claim(engine, calculation_id, options.threads):
        return None
    try:
        return _run_claimed(engine, calculation_id, preset, options, on_event or (lambda _id, _message: None))
    except DBAPIError:
        raise  # the store went away for a while: left running, the claim is re-queued as lost
    except Exception as error:
        _abandon(engine, [calculation_id], error)
        raise


def _run_claimed(engine: Engine, calculation_id: int, preset: Preset, options: RunOptions,
                 notify: Events) -> str:
    """:func:`run_calculation` of a claimed calculation."""
    with session_scope(engine) as session:
        calculation = session.get(Calculation, calculation_id)
        structure = session.get(Structure, calculation.structure_id)
        crystal = starting_crystal(calculation, structure)
        previous = session.scalars(
            select(CalculationAttempt).where(CalculationAttempt.calculation_id == calculation_id)
            .order_by(CalculationAttempt.number)
        ).all()
        number = len(previous)
        scf_before = [attempt.reason for attempt in previous if attempt.reason == "scf"]
        last_workdir = Path(previous[-1].workdir) if previous and previous[-1].workdir else None
        root = options.workdir / preset.name / str(calculation.structure_id)
        calculation.workdir = str(root)

    finished = _finished_result(last_workdir)
    if finished is not None:
        refused = _ingest(engine, calculation_id, finished, number)
        if refused is None:
            notify(calculation_id, "done (result recovered from a finished job)")
            return "done"
        _close_attempt(engine, calculation_id, number, refused)
        _fail(engine, calculation_id, refused.reason)
        notify(calculation_id, f"failed: {refused.reason}: {refused.message}")
        return "failed"

    wall_time = options.wall_time_s or preset.wall_time_s
    max_attempts = options.max_attempts or preset.max_attempts
    reasons: list[str] = list(scf_before)
    rung = min(len(scf_before), len(preset.scf_ladder))
    for _ in range(max_attempts):
        number += 1
        record = job_record(preset, crystal, rung, options)
        directory = root / f"attempt-{number}"
        with session_scope(engine) as session:
            session.add(CalculationAttempt(
                calculation_id=calculation_id, number=number, status=CalculationStatus.RUNNING,
                parameters={"calculator": record["calculator_path"], "parameters": record["parameters"],
                            "initial_magmoms": record["structure"]["initial_magmoms"], "rung": rung},
                workdir=str(directory), started_at=_now(),
            ))
        notify(calculation_id, f"attempt {number} running (ladder rung {rung})")
        outcome = run_attempt(directory, record, threads=options.threads, wall_time_s=wall_time,
                              heartbeat_s=options.heartbeat_s,
                              heartbeat=lambda: _heartbeat(engine, calculation_id))
        if outcome.reason is None:
            refused = _ingest(engine, calculation_id, outcome, number)
            if refused is None:
                notify(calculation_id, f"done in {outcome.wall_time_s:.1f} s")
                return "done"
            outcome = refused
        _close_attempt(engine, calculation_id, number, outcome)
        notify(calculation_id, f"attempt {number} failed: {outcome.reason}: {outcome.message}")
        reasons.append(outcome.reason)
        next_rung = _retry_rung(preset, reasons)
        if next_rung is None:
            break
        rung = next_rung
    _fail(engine, calculation_id, reasons[-1])
    notify(calculation_id, f"failed: {reasons[-1]}")
    return "failed"


def _fail(engine: Engine, calculation_id: int, reason: str) -> None:
    with session_scope(engine) as session:
        session.execute(update(Calculation).where(Calculation.id == calculation_id).values(
            status=CalculationStatus.FAILED, reason=reason, finished_at=_now()))


def _abandon(engine: Engine, calculation_ids: list[int], error: Exception) -> None:
    """Fail those of ``calculation_ids`` still running, and their running attempts, as
    ``crash``: the runner raised ``error`` while it had them claimed.

    Left running, they would be re-queued as lost and fail the same way on every run. (An
    interrupted worker leaves its claims running: they are re-queued once it is gone.)
    """
    now = _now()
    with session_scope(engine) as session:
        running = list(session.scalars(select(Calculation.id).where(
            Calculation.id.in_(calculation_ids), Calculation.status == CalculationStatus.RUNNING)))
        session.execute(
            update(CalculationAttempt)
            .where(CalculationAttempt.calculation_id.in_(running),
                   CalculationAttempt.status == CalculationStatus.RUNNING)
            .values(status=CalculationStatus.FAILED, reason="crash", finished_at=now,
                    message=f"the runner failed: {type(error).__name__}: {error}")
        )
        session.execute(update(Calculation).where(Calculation.id.in_(running)).values(
            status=CalculationStatus.FAILED, reason="crash", finished_at=now))


def _ingest(engine: Engine, calculation_id: int, outcome: AttemptOutcome, number: int) -> AttemptOutcome | None:
    """Ingest a computed result; returns None, or the attempt's failure when the store
    refuses the structure a relaxation ended in, or holds a value of one of its targets
    from another origin (nothing is written then)."""
    try:
        ingest_outputs(engine, calculation_id, outcome.results, outcome.arrays,
                       wall_time_s=outcome.wall_time_s, attempt=_attempt_values(number, outcome))
    except RelaxedStructureRefused as error:
        return AttemptOutcome("refused", str(error), outcome.exit_code, wall_time_s=outcome.wall_time_s)
    except IngestConflict as error:
        return AttemptOutcome("conflict", str(error), outcome.exit_code, wall_time_s=outcome.wall_time_s)
    return None


def _attempt_values(number: int, outcome: AttemptOutcome) -> dict:
    return {"number": number, "reason": outcome.reason, "message": outcome.message or None,
            "exit_code": outcome.exit_code, "wall_time_s": outcome.wall_time_s}


def _close_attempt(engine: Engine, calculation_id: int, number: int, outcome: AttemptOutcome) -> None:
    """Record a failed attempt (a successful one is closed by its ingest)."""
    values = _attempt_values(number, outcome)
    with session_scope(engine) as session:
        session.execute(
            update(CalculationAttempt)
            .where(CalculationAttempt.calculation_id == calculation_id, CalculationAttempt.number == number)
            .values(status=CalculationStatus.FAILED, finished_at=_now(),
                    **{key: value for key, value in values.items() if key != "number"})
        )


# -- batches: many structures in one worker process ------------------------------------

# How often a batch's runner looks for finished structures to ingest.
BATCH_POLL_S = 1.0


@dataclass
class BatchItem:
    """One calculation of a batch: its attempts so far and its outcome in this run."""

    calculation_id: int
    structure_id: int
    structure: dict  # as the job reads it
    root: Path
    number: int  # attempts recorded so far
    last_workdir: Path | None
    reasons: list[str] = field(default_factory=list)  # failures in this run
    status: str | None = None  # done or failed once settled

    @property
    def directory(self) -> Path:
        return self.root / f"attempt-{self.number}"


def batch_chunks(calculation_ids: list[int], batch_size: int, jobs: int) -> list[list[int]]:
    """``calculation_ids`` in order, cut into batches of at most ``batch_size`` and
    small enough that ``jobs`` workers all get one."""
    size = max(1, min(batch_size, -(-len(calculation_ids) // max(jobs, 1))))
    return [calculation_ids[start:start + size] for start in range(0, len(calculation_ids), size)]


def _claim_batch(engine: Engine, calculation_ids: list[int], threads: int) -> list[int]:
    now = _now()
    with session_scope(engine) as session:
        return list(session.scalars(
            update(Calculation)
            .where(Calculation.id.in_(calculation_ids), Calculation.status == CalculationStatus.QUEUED)
            .values(status=CalculationStatus.RUNNING, host=socket.gethostname(), pid=os.getpid(),
                    threads=threads, heartbeat_at=now, started_at=func.coalesce(Calculation.started_at, now))
            .returning(Calculation.id)
            .execution_options(synchronize_session=False)
        ))


def _batch_items(engine: Engine, calculation_ids: list[int], preset: Preset, options: RunOptions) -> list[BatchItem]:
    with session_scope(engine) as session:
        calculations = session.scalars(
            select(Calculation).where(Calculation.id.in_(calculation_ids)).order_by(Calculation.id)).all()
        structures = {structure.id: structure for structure in session.scalars(
            select(Structure).where(Structure.id.in_([c.structure_id for c in calculations])))}
        attempts: dict[int, list[CalculationAttempt]] = {}
        for attempt in session.scalars(select(CalculationAttempt).where(
                CalculationAttempt.calculation_id.in_(calculation_ids)).order_by(CalculationAttempt.number)):
            attempts.setdefault(attempt.calculation_id, []).append(attempt)
        items = []
        for calculation in calculations:
            structure = structures[calculation.structure_id]
            crystal = starting_crystal(calculation, structure)
            previous = attempts.get(calculation.id, [])
            root = options.workdir / preset.name / str(calculation.structure_id)
            calculation.workdir = str(root)
            items.append(BatchItem(
                calculation.id, calculation.structure_id, structure_record(crystal, preset), root, len(previous),
                Path(previous[-1].workdir) if previous and previous[-1].workdir else None))
    return items


def run_batch(engine: Engine, calculation_ids: list[int], preset: Preset, options: RunOptions,
              on_event: Events | None = None) -> dict[int, str | None]:
    """Claim the queued ``calculation_ids`` and compute them in worker processes that each
    build the calculator once (:func:`workbench.dft.job.run_batch`).

    Each structure is ingested as soon as its result is written, with the same attempt
    records and one-transaction ingest as :func:`run_calculation`. A structure that fails
    is recorded alone; a batch killed by a crash fails the structure it was computing, and
    one killed at ``wall_time_s`` too if that was its first: the limit is the batch's, so
    a structure that others left without time goes to the next batch without an attempt,
    as do the structures a batch never started. Returns ``{calculation id: done | failed
    | None}`` (None: another worker had it).
    """
    statuses: dict[int, str | None] = dict.fromkeys(calculation_ids)
    claimed = _claim_batch(engine, calculation_ids, options.threads)
    if not claimed:
        return statuses
    try:
        statuses.update(_run_claimed_batch(engine, claimed, preset, options,
                                           on_event or (lambda _id, _message: None)))
    except DBAPIError:
        raise  # as in run_calculation
    except Exception as error:
        _abandon(engine, claimed, error)
        raise
    return statuses


def _run_claimed_batch(engine: Engine, claimed: list[int], preset: Preset, options: RunOptions,
                       notify: Events) -> dict[int, str | None]:
    """:func:`run_batch` of the claimed calculations."""
    items = _batch_items(engine, claimed, preset, options)
    for item in items:
        finished = _finished_result(item.last_workdir)
        if finished is not None:
            refused = _ingest(engine, item.calculation_id, finished, item.number)
            if refused is None:
                item.status = "done"
                notify(item.calculation_id, "done (result recovered from a finished job)")
            else:
                _close_attempt(engine, item.calculation_id, item.number, refused)
                _fail(engine, item.calculation_id, refused.reason)
                item.status = "failed"
                notify(item.calculation_id, f"failed: {refused.reason}: {refused.message}")
    max_attempts = options.max_attempts or preset.max_attempts
    pending = [item for item in items if item.status is None]
    while pending:
        _run_one_batch(engine, pending, preset, options, notify, max_attempts)
        pending = [item for item in pending if item.status is None]
    return {item.calculation_id: item.status for item in items}


def _run_one_batch(engine: Engine, items: list[BatchItem], preset: Preset, options: RunOptions,
                   notify: Events, max_attempts: int) -> None:
    """One worker process over ``items``; settles each item it computed or was computing."""
    for item in items:
        item.number += 1
    first = items[0].structure
    atoms = job_protocol.atoms_from_record(first)
    record = calculator_record(preset, atoms, 0, options)
    stamp = _now().strftime("%Y%m%dT%H%M%S%f")
    folder = options.workdir / preset.name / "batches" / f"{stamp}-{os.getpid()}-{items[0].calculation_id}"
    folder.mkdir(parents=True)
    (folder / job_protocol.BATCH_FILE).write_text(json.dumps(record | {"items": [
        {"calculation_id": item.calculation_id, "directory": str(item.directory), "structure": item.structure}
        for item in items]}))
    now = _now()
    with session_scope(engine) as session:
        session.add_all(CalculationAttempt(
            calculation_id=item.calculation_id, number=item.number, status=CalculationStatus.RUNNING,
            parameters={"calculator": record["calculator_path"], "parameters": record["parameters"],
                        "initial_magmoms": item.structure["initial_magmoms"], "rung": 0, "batch": str(folder)},
            workdir=str(item.directory), started_at=now) for item in items)
    wall_time = options.wall_time_s or preset.wall_time_s
    notify(items[0].calculation_id, f"batch of {len(items)} running in {folder}")
    unsettled = deque(items)  # in the order the job computes them
    last_heartbeat = time.monotonic()

    def settle_finished() -> None:
        while unsettled:
            outcome = _item_outcome(unsettled[0].directory)
            if outcome is None:
                return
            _settle(engine, unsettled.popleft(), outcome, preset, notify, max_attempts)

    def tick() -> None:
        nonlocal last_heartbeat
        settle_finished()
        if unsettled and time.monotonic() - last_heartbeat >= options.heartbeat_s:
            _heartbeat_many(engine, [item.calculation_id for item in unsettled])
            last_heartbeat = time.monotonic()

    exit_code, elapsed = _run_job_process(folder, threads=options.threads, wall_time_s=wall_time,
                                          tick_s=min(BATCH_POLL_S, options.heartbeat_s), tick=tick)
    settle_finished()
    if unsettled:
        blamed, never_started = _blame(folder, list(unsettled), exit_code, wall_time,
                                       settled_any=len(unsettled) < len(items))
        for item, outcome in blamed:
            _settle(engine, item, outcome, preset, notify, max_attempts)
        _forget_attempts(engine, never_started)
    notify(items[0].calculation_id, f"batch of {len(items)} ended after {elapsed:.1f} s: "
                                    f"{sum(item.status == 'done' for item in items)} done, "
                                    f"{sum(item.status == 'failed' for item in items)} failed")


def _item_outcome(directory: Path) -> AttemptOutcome | None:
    """What a batch wrote for one structure, or None while it has written nothing."""
    if (directory / job_protocol.RESULT_FILE).is_file():
        outcome = _read_result(directory)
        outcome.wall_time_s = outcome.results.get("compute_s", 0.0)
        return outcome
    if (directory / job_protocol.ERROR_FILE).is_file():
        outcome = _read_error(directory, job_protocol.EXIT_CRASH)
        outcome.exit_code = None  # the batch process goes on: the structure has no exit code
        return outcome
    return None


def _blame(folder: Path, unsettled: list["BatchItem"], exit_code: int | None, wall_time_s: float, *,
           settled_any: bool) -> tuple[list[tuple["BatchItem", AttemptOutcome]], list["BatchItem"]]:
    """Which structures a batch that ended early failed, and which go to the next batch
    without an attempt (``settled_any``: the batch settled some of its structures)."""
    if exit_code is not None and (folder / job_protocol.ERROR_FILE).is_file():
        # The calculator could not be built: no structure can be computed.
        outcome = _read_error(folder, exit_code)
        return [(item, outcome) for item in unsettled], []
    if exit_code is None and settled_any:
        # The structures settled before it used part of the limit: the one in progress is
        # not blamed. A batch that settles none blames it, so every batch settles one.
        return [], unsettled
    if exit_code is None:
        outcome = AttemptOutcome("timeout", f"the batch was killed at its wall-time limit of {wall_time_s:g} s "
                                            "while computing this structure", -signal.SIGKILL)
    elif exit_code == 0:
        outcome = AttemptOutcome("parse", f"the batch in {folder} ended without a result for this structure", 0)
    else:
        outcome = _read_error(folder, exit_code)
        outcome.message = f"the batch process died while computing this structure: {outcome.message}"
    return [(unsettled[0], outcome)], unsettled[1:]


def _settle(engine: Engine, item: BatchItem, outcome: AttemptOutcome, preset: Preset, notify: Events,
            max_attempts: int) -> None:
    """Ingest a computed structure, or record its failed attempt and whether it is tried again."""
    if outcome.reason is None:
        refused = _ingest(engine, item.calculation_id, outcome, item.number)
        if refused is None:
            item.status = "done"
            return
        outcome = refused
    _close_attempt(engine, item.calculation_id, item.number, outcome)
    notify(item.calculation_id, f"attempt {item.number} failed: {outcome.reason}: {outcome.message}")
    item.reasons.append(outcome.reason)
    if len(item.reasons) < max_attempts and _retry_rung(preset, item.reasons) is not None:
        return  # in the next batch
    _fail(engine, item.calculation_id, outcome.reason)
    item.status = "failed"
    notify(item.calculation_id, f"failed: {outcome.reason}")


def _heartbeat_many(engine: Engine, calculation_ids: list[int]) -> None:
    with session_scope(engine) as session:
        session.execute(update(Calculation).where(Calculation.id.in_(calculation_ids)).values(heartbeat_at=_now()))


def _forget_attempts(engine: Engine, items: list[BatchItem]) -> None:
    """Remove the attempts of structures a batch never started: they go to the next batch."""
    if not items:
        return
    with session_scope(engine) as session:
        for item in items:
            session.execute(delete(CalculationAttempt).where(
                CalculationAttempt.calculation_id == item.calculation_id,
                CalculationAttempt.number == item.number))
            item.number -= 1


def _queued(engine: Engine, preset: str, calculation_ids: list[int] | None) -> list[int]:
    condition = (Calculation.preset == preset) & (Calculation.status == CalculationStatus.QUEUED)
    if calculation_ids is not None:
        condition &= Calculation.id.in_(calculation_ids)
    with session_scope(engine) as session:
        return list(session.scalars(select(Calculation.id).where(condition).order_by(Calculation.id)))


def _elements(engine: Engine, calculation_ids: list[int]) -> set[str]:
    with session_scope(engine) as session:
        species = session.scalars(
            select(Structure.elements).join(Calculation, Calculation.structure_id == Structure.id)
            .where(Calculation.id.in_(calculation_ids))
        ).all()
    return {element for elements in species for element in elements}


@dataclass
class RunPlan:
    """What a run will do: calculation ids in stages (references first), and why."""

    stages: list[list[int]]
    requeued: list[int]
    references_missing: dict[str, str]


def plan_run(engine: Engine, preset: Preset, options: RunOptions, *,
             calculation_ids: list[int] | None = None, references: bool = True) -> RunPlan:
    """Re-queue lost calculations, then order the queued ones of ``preset`` (or only
    ``calculation_ids``): with ``references``, the elemental references of every element
    involved are queued and come first."""
    requeued = requeue_lost(engine, stale_after_s=options.stale_after_s)
    if calculation_ids is not None:
        calculation_ids = list(dict.fromkeys([*calculation_ids, *requeued]))
    work = _queued(engine, preset.name, calculation_ids)
    if not (references and work):
        return RunPlan([work], requeued, {})
    reference_ids, missing = reference_structure_ids(engine, _elements(engine, work))
    first = _queued(engine, preset.name, queue_calculations(engine, sorted(reference_ids.values()), preset))
    return RunPlan([first, [calculation_id for calculation_id in work if calculation_id not in first]],
                   requeued, missing)


def run_queued(engine: Engine, preset: Preset, options: RunOptions, *,
               calculation_ids: list[int] | None = None, references: bool = True,
               on_event: Events | None = None) -> RunReport:
    """Run the queued calculations of ``preset`` (or only ``calculation_ids``), stage by
    stage of :func:`plan_run`, ``options.jobs`` at once (processes of one calculation, or
    of a batch when the preset's or the options' ``batch_size`` is above 1); with
    ``references``, formation energies are added at the end."""
    if options.batch_size is not None:
        # Checked as the preset's own: its settings must not depend on the structure.
        preset = replace(preset, batch_size=options.batch_size)
    plan = plan_run(engine, preset, options, calculation_ids=calculation_ids, references=references)
    report = RunReport(requeued=plan.requeued, references_missing=plan.references_missing)

    def record(calculation_id: int, status: str | None) -> None:
        if status == "done":
            report.done.append(calculation_id)
        elif status == "failed":
            report.failed[calculation_id] = _reason(engine, calculation_id)
        else:
            report.skipped.append(calculation_id)

    with ThreadPoolExecutor(max_workers=options.jobs) as pool:
        if preset.batch_size > 1:
            # References lead the first batch; formation energies are added at the end anyway.
            work = [calculation_id for stage in plan.stages for calculation_id in stage]
            for statuses in pool.map(lambda chunk: run_batch(engine, chunk, preset, options, on_event),
                                     batch_chunks(work, preset.batch_size, options.jobs)):
                for calculation_id, status in statuses.items():
                    record(calculation_id, status)
        else:
            for stage in plan.stages:
                statuses = pool.map(
                    lambda calculation_id: run_calculation(engine, calculation_id, preset, options, on_event), stage)
                for calculation_id, status in zip(stage, statuses, strict=True):
                    record(calculation_id, status)
    if references:
        report.formation_energies = add_formation_energies(engine, preset.name)
        if report.formation_energies:
            report.hull = _refresh_hull(engine, preset.name)
    return report


def _refresh_hull(engine: Engine, level: str):
    """Rewrite ``level``'s energies above the hull if the store has them (``workbench hull``
    or a campaign wrote them), so they never lag the energies: its ``HullReport`` (or why
    it has none), or None when the level has no hull."""
    from workbench.stability.store import HullConflict, levels_with_hull, refresh_hulls

    try:
        with session_scope(engine) as session:
            return refresh_hulls(session, levels_with_hull(session, [level])).get(level)
    except HullConflict as error:
        # The run's results are stored already: say why the hull stays as it is (rolled
        # back whole), not fail the run.
        return str(error)


def _reason(engine: Engine, calculation_id: int) -> str:
    with session_scope(engine) as session:
        return session.get(Calculation, calculation_id).reason or ""


def status_counts(engine: Engine, preset: str | None = None) -> list[tuple[str, str, str | None, int]]:
    """``(preset, status, reason, count)`` rows, for ``workbench dft status``."""
    query = select(Calculation.preset, Calculation.status, Calculation.reason, func.count()).group_by(
        Calculation.preset, Calculation.status, Calculation.reason).order_by(Calculation.preset, Calculation.status)
    if preset is not None:
        query = query.where(Calculation.preset == preset)
    with session_scope(engine) as session:
        return [(name, status.value, reason, count) for name, status, reason, count in session.execute(query)]


def attempts_of(engine: Engine, calculation_id: int) -> tuple[Calculation, list[CalculationAttempt]]:
    """A calculation and its attempts, oldest first (``workbench dft show``)."""
    with session_scope(engine) as session:
        calculation = session.get(Calculation, calculation_id)
        if calculation is None:
            raise NotFound(f"no calculation with id {calculation_id}")
        attempts = session.scalars(select(CalculationAttempt).where(
            CalculationAttempt.calculation_id == calculation_id).order_by(CalculationAttempt.number)).all()
        return calculation, list(attempts)
