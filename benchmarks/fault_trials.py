"""Fault trials: a campaign process SIGKILLed at random moments, and the store's
PostgreSQL server restarted under a running campaign. After each fault the campaign is
started again and the store is checked: no result lost, none duplicated, the campaign
finished with its budget spent. Writes the reliability report.

    .venv/bin/python benchmarks/fault_trials.py --trials 20 --restarts 2 --out docs/reliability.md

Each trial: a fresh store (SQLite file, or a database on a private PostgreSQL cluster
started by this script so that restarting it disturbs nobody), the 42 EMT alloys of the
tests, a campaign of 10 random + 2 rounds of 3 (CGCNN, 1 member, 4 epochs), real EMT job
processes, a fresh MLflow SQLite store. Kills aim at DFT (shortly after a random job
started) and at the runner's ingest (just after a random job wrote its result); where
each landed is read from the store at the kill. Server restarts come at a random moment
of an uninterrupted reference run, timed like kills from the first queued calculation.
"""

import argparse
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from itertools import permutations
from pathlib import Path

import yaml
from sqlalchemy import func, select, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.dft_helpers import LATTICE, campaign_document, l12, store_crystals
from workbench.store import migrate
from workbench.store.engine import make_engine, session_scope
from workbench.store.schema import (
    Acquisition,
    AcquisitionStatus,
    Calculation,
    CalculationAttempt,
    CalculationStatus,
    Campaign,
    Round,
    TargetValue,
)

BIN = Path(sys.executable).parent
BUDGET = 16
# An EMT job's life (process start to result) and the runner's ingest after it, seconds.
EMT_JOB_S = 2.0
INGEST_WINDOW_S = 0.1
CAMPAIGN = campaign_document("faults", BUDGET, model={"members": 1, "epochs": 4, "patience": 4, "device": "cpu"},
                             acquisition={"batch": 3})
POSTGRES_BIN = max(Path("/usr/lib/postgresql").glob("*/bin")) if Path("/usr/lib/postgresql").exists() else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivatePostgres:
    """A throw-away cluster on a free port, run as the ``postgres`` user."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="wb-faults-pg-"))
        shutil.chown(self.folder, "postgres", "postgres")
        self.port = _free_port()
        self._as_postgres(POSTGRES_BIN / "initdb", "-D", str(self.folder / "data"), "-A", "trust", "-U", "postgres")

    def _as_postgres(self, *command) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *map(str, command)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _ctl(self, action: str) -> None:
        self._as_postgres(POSTGRES_BIN / "pg_ctl", "-D", self.folder / "data", "-w", "-m", "fast", "-l",
                          self.folder / "log", "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1",
                          action)

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        self._ctl("restart")

    def stop(self) -> None:
        self._ctl("stop")
        shutil.rmtree(self.folder, ignore_errors=True)

    def new_database(self, name: str) -> str:
        admin = make_engine(f"postgresql://postgres@127.0.0.1:{self.port}/postgres")
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text(f"CREATE DATABASE {name}"))
        admin.dispose()
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


@dataclass
class Trial:
    number: int
    backend: str
    fault: str
    at_s: float
    landed: str = ""
    first_exit: str = ""
    lost: int = 0
    duplicated: int = 0
    resumed: bool = False
    recovered: int = 0
    resume_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def _prepare(database_url: str, folder: Path, mlflow_template: Path) -> dict:
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    store_crystals(engine, {f"{a}3{b}": l12(a, b) for a, b in permutations(LATTICE, 2)})
    engine.dispose()
    shutil.copy(mlflow_template, folder / "mlflow.db")
    (folder / "campaign.yaml").write_text(yaml.safe_dump(CAMPAIGN))
    return dict(os.environ, WORKBENCH_DATABASE_URL=database_url, WORKBENCH_HOME=str(folder / "home"),
                MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}", OMP_NUM_THREADS="1")


def _campaign_process(environment: dict, folder: Path) -> subprocess.Popen:
    log = (folder / "campaign.log").open("a")
    return subprocess.Popen([str(BIN / "workbench"), "campaign", "run", str(folder / "campaign.yaml")],
                            env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _where(engine) -> str:
    """Which step the campaign is in, read from the store."""
    with session_scope(engine) as session:
        current = session.execute(select(Round.number, Round.status).where(Round.status != "done")
                                  .order_by(Round.number.desc())).first()
        running = session.scalar(select(func.count(Calculation.id)).where(
            Calculation.status == CalculationStatus.RUNNING))
    if current is None:
        with session_scope(engine) as session:
            started = session.scalar(select(func.count(Round.id)))
        return "between rounds" if started else "start-up (no round yet)"
    number, status = current
    step = {"started": "training", "trained": "predicting", "predicted": "ranking", "ranked": "dispatching",
            "dispatched": "DFT" if running else "DFT (claiming/ingesting)", "computed": "ledger ingest"}[status]
    return f"round {number}: {step}" + (f", {running} calculations running" if running else "")


def _dispatched(engine) -> bool:
    with session_scope(engine) as session:
        return session.scalar(select(func.count(Calculation.id))) > 0


def _check(engine, trial: Trial) -> None:
    with session_scope(engine) as session:
        campaign = session.scalar(select(Campaign))
        acquisitions = session.scalars(select(Acquisition)).all()
        done_attempts = dict(session.execute(
            select(CalculationAttempt.calculation_id, func.count()).where(
                CalculationAttempt.status == CalculationStatus.DONE).group_by(CalculationAttempt.calculation_id)
        ).all())
        done = session.scalars(select(Calculation.id).where(Calculation.status == CalculationStatus.DONE)).all()
        without_targets = [c for c in done if not session.scalar(
            select(func.count(TargetValue.id)).where(TargetValue.calculation_id == c))]
        duplicate_targets = session.scalar(select(func.count()).select_from(
            select(TargetValue.structure_id, TargetValue.target_id).group_by(
                TargetValue.structure_id, TargetValue.target_id).having(func.count() > 1).subquery()))
        trial.recovered = session.scalar(select(func.count(CalculationAttempt.id)).where(
            CalculationAttempt.reason == "lost"))
    unlabeled = [a for a in acquisitions if a.status is not AcquisitionStatus.LABELED]
    trial.lost = len(unlabeled) + len(without_targets) + sum(1 for c in done if c not in done_attempts)
    structures = [a.structure_id for a in acquisitions]
    trial.duplicated = (len(structures) - len(set(structures)) + duplicate_targets
                        + sum(count - 1 for count in done_attempts.values()))
    trial.resumed = campaign is not None and campaign.status == "finished" and len(acquisitions) == BUDGET
    if unlabeled:
        trial.notes.append(f"{len(unlabeled)} acquisitions not labeled")


def _resume(environment: dict, folder: Path, engine, trial: Trial) -> None:
    started = time.perf_counter()
    process = _campaign_process(environment, folder)
    process.wait(timeout=900)
    trial.resume_s = time.perf_counter() - started
    if process.returncode != 0:
        trial.notes.append(f"resume exited {process.returncode}")
    _check(engine, trial)


def _last_error(folder: Path) -> str:
    lines = [line for line in (folder / "campaign.log").read_text().splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line and not line.startswith("(Background")]
    return (errors or lines or [""])[-1][:160]


def _attempts(engine) -> int:
    with session_scope(engine) as session:
        return session.scalar(select(func.count(CalculationAttempt.id)))


def _done(engine) -> int:
    with session_scope(engine) as session:
        return session.scalar(select(func.count(Calculation.id)).where(Calculation.status == CalculationStatus.DONE))


def _results_written(folder: Path) -> int:
    return len(list((folder / "home" / "dft").glob("*/*/attempt-*/result.json")))


def kill_trial(trial: Trial, database_url: str, folder: Path, mlflow_template: Path, calculation: int) -> Trial:
    """SIGKILL the campaign ``trial.at_s`` after its ``calculation``-th job started (a kill
    in DFT) or after that job wrote its result (a kill in the runner's ingest)."""
    environment = _prepare(database_url, folder, mlflow_template)
    engine = make_engine(database_url)
    process = _campaign_process(environment, folder)
    in_dft = trial.fault == "SIGKILL in DFT"
    while process.poll() is None and (_attempts(engine) if in_dft else _results_written(folder)) < calculation:
        time.sleep(0.005)
    deadline = time.perf_counter() + trial.at_s
    while time.perf_counter() < deadline and process.poll() is None:
        time.sleep(0.002)
    if process.poll() is None:
        written = _results_written(folder)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        trial.first_exit = "SIGKILL"
        trial.landed = f"{_where(engine)}; {written} results written, {_done(engine)} ingested"
    else:
        trial.landed, trial.first_exit = "after the end (no kill)", f"exit {process.returncode}"
    _resume(environment, folder, engine, trial)
    engine.dispose()
    return trial


def restart_trial(trial: Trial, server: PrivatePostgres, folder: Path, mlflow_template: Path) -> Trial:
    database_url = server.new_database(f"faults_{trial.number}")
    environment = _prepare(database_url, folder, mlflow_template)
    engine = make_engine(database_url)
    process = _campaign_process(environment, folder)
    while process.poll() is None and not _dispatched(engine):
        time.sleep(0.02)
    time.sleep(trial.at_s)
    trial.landed = _where(engine) if process.poll() is None else "after the end"
    server.restart()
    process.wait(timeout=900)
    trial.first_exit = f"exit {process.returncode}"
    if process.returncode != 0:
        trial.notes.append(f"stopped with: {_last_error(folder)}")
    _resume(environment, folder, engine, trial)
    engine.dispose()
    return trial


def reference_run(database_url: str, folder: Path, mlflow_template: Path) -> float:
    """Seconds an uninterrupted campaign runs from its first queued calculation on."""
    environment = _prepare(database_url, folder, mlflow_template)
    engine = make_engine(database_url)
    process = _campaign_process(environment, folder)
    while process.poll() is None and not _dispatched(engine):
        time.sleep(0.02)
    started = time.perf_counter()
    if process.wait(timeout=900) != 0:
        sys.exit(f"the reference campaign failed: {_last_error(folder)}")
    engine.dispose()
    return time.perf_counter() - started


def report(trials: list[Trial], reference_s: float, args) -> str:
    kills = [t for t in trials if t.fault.startswith("SIGKILL")]
    lines = [
        "# Reliability: fault trials", "",
        (f"`benchmarks/fault_trials.py --trials {args.trials} --restarts {args.restarts}` on {platform.machine()}, "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}. Each trial runs an EMT campaign of {BUDGET} "
        "calculations (10 random, 2 rounds of 3 chosen by a CGCNN model) in its own store, applies one fault, "
        "starts `workbench campaign run` again, and checks the store:"), "",
        ("- **lost**: acquisitions not labeled at the end + done calculations without targets or without a "
        "successful attempt;"),
        ("- **duplicated**: structures acquired twice + (structure, target) values stored twice + calculations "
        "with more than one successful attempt (a finished DFT run done again);"),
        "- **resumed**: the campaign finished with its budget spent;",
        "- **recovered**: attempts whose worker died, re-queued (reason `lost`).", "",
        (f"An uninterrupted run takes {reference_s:.0f} s from its first queued calculation. A kill in DFT "
         f"comes a random 0-{EMT_JOB_S:g} s after the start of a random one of the {BUDGET} jobs; a kill at "
         f"ingest a random 0-{INGEST_WINDOW_S:g} s after a random job wrote its result file, while the "
         "runner reads it into the store. 'landed in' is the campaign's step at the kill, with how many job "
         "results were on disk and how many calculations the store had as done."), "",
        ("| # | store | fault | at (s) | landed in | first run | lost | duplicated | resumed | recovered | "
        "resume (s) | notes |"),
        "|---:|---|---|---:|---|---|---:|---:|---|---:|---:|---|",
    ]
    for t in trials:
        lines.append(f"| {t.number} | {t.backend} | {t.fault} | {t.at_s:.2f} | {t.landed} | {t.first_exit} | "
                     f"{t.lost} | {t.duplicated} | {'yes' if t.resumed else '**no**'} | {t.recovered} | "
                     f"{t.resume_s:.0f} | {'; '.join(t.notes)} |")
    ok = sum(t.lost == 0 and t.duplicated == 0 and t.resumed for t in trials)
    landed = sum(t.first_exit == "SIGKILL" for t in kills)
    lines += ["", (f"**{ok} of {len(trials)} trials** ended with nothing lost, nothing duplicated and the campaign "
              f"finished; {landed} of {len(kills)} kills landed before the campaign's end."), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="SIGKILL trials (half SQLite, half PostgreSQL)")
    parser.add_argument("--restarts", type=int, default=2, help="PostgreSQL restart trials")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="wb-faults-"))
    from mlflow import MlflowClient

    mlflow_template = scratch / "mlflow-template.db"
    MlflowClient(f"sqlite:///{mlflow_template}").search_experiments()
    server = PrivatePostgres()
    server.start()
    try:
        (scratch / "reference").mkdir()
        reference_s = reference_run(f"sqlite:///{scratch / 'reference' / 'store.db'}", scratch / "reference",
                                    mlflow_template)
        print(f"reference run: {reference_s:.1f} s", flush=True)
        trials = []
        for number in range(1, args.trials + 1):
            folder = scratch / f"trial-{number}"
            folder.mkdir()
            backend = "sqlite" if number % 2 else "postgresql"
            url = f"sqlite:///{folder / 'store.db'}" if backend == "sqlite" else server.new_database(f"kill_{number}")
            # Odd pairs kill in DFT (up to one EMT job's length after the job started), even
            # pairs right after a job wrote its result, while the runner ingests it.
            fault, delay = (("SIGKILL in DFT", rng.uniform(0.0, EMT_JOB_S)) if (number - 1) // 2 % 2 == 0
                            else ("SIGKILL at ingest", rng.uniform(0.0, INGEST_WINDOW_S)))
            trial = kill_trial(Trial(number, backend, fault, delay), url, folder, mlflow_template,
                               calculation=rng.randint(1, BUDGET))
            trials.append(trial)
            print(trial, flush=True)
        for number in range(args.trials + 1, args.trials + args.restarts + 1):
            folder = scratch / f"trial-{number}"
            folder.mkdir()
            trial = restart_trial(Trial(number, "postgresql", "server restart", rng.uniform(0.0, reference_s * 0.8)),
                                  server, folder, mlflow_template)
            trials.append(trial)
            print(trial, flush=True)
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    text_report = report(trials, reference_s, args)
    print(text_report)
    if args.out:
        args.out.write_text(text_report)


if __name__ == "__main__":
    main()
