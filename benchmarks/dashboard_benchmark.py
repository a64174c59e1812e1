"""Server time of the dashboard's heavy pages on a large store.

    .venv/bin/python benchmarks/dashboard_benchmark.py --out benchmarks/dashboard.md
    .venv/bin/python benchmarks/dashboard_benchmark.py --database-url postgresql://postgres@127.0.0.1/bench

The store: one real crystal (L1_2 Cu3Au) copied into ``--structures`` rows, ``--models``
model versions of one scalar target each predicting every structure (200,000 x 5 =
1,000,000 predictions by default), and a finished campaign whose ledger holds
``--ledger`` rows (rounds of 100, each with its model's prediction, the computed value
and the outcome), those structures labeled. Each page is requested ``--repeat`` times
through Starlette's TestClient in this process (template rendering included, no network);
the table gives the median and the slowest.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import insert, select

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.dft_helpers import campaign_document, cu3au, store_crystals
from workbench.campaign.config import config_from_document
from workbench.campaign.loop import open_campaign
from workbench.provenance import current
from workbench.store import migrate
from workbench.store.engine import make_engine, session_scope
from workbench.store.schema import (
    Acquisition,
    AcquisitionStatus,
    Campaign,
    ModelVersion,
    Prediction,
    Round,
    RoundKind,
    Structure,
    TargetDefinition,
    TargetKind,
    TargetValue,
)

TARGET = "emt.energy_per_atom"
ROUND_SIZE = 100
CHUNK = 20_000
THRESHOLD = -0.5


def _chunks(rows: list[dict]):
    for start in range(0, len(rows), CHUNK):
        yield rows[start:start + CHUNK]


def build(database_url: str, structures: int, models: int, ledger_rows: int) -> dict[str, float]:
    """Fill the store; returns how long each part took."""
    rng = np.random.default_rng(0)
    engine = make_engine(database_url)
    timings = {}
    started = time.perf_counter()
    migrate.upgrade(engine)
    [template_id] = store_crystals(engine, {"Cu3Au": cu3au()}).values()
    with session_scope(engine) as session:
        template = session.get(Structure, template_id)
        row = {column.key: getattr(template, column.key) for column in Structure.__table__.columns
               if column.key not in ("id", "created_at")}
    with engine.begin() as connection:
        for chunk in _chunks([row] * (structures - 1)):
            connection.execute(insert(Structure), chunk)
    with session_scope(engine) as session:
        ids = np.array(session.scalars(select(Structure.id).order_by(Structure.id)).all())
        definition = TargetDefinition(name=TARGET, kind=TargetKind.SCALAR, units="eV/atom")
        versions = [ModelVersion(name=f"bench-{TARGET}", registry_version=n + 1, targets=[TARGET],
                                 architecture="cgcnn", metrics={"mae": 0.1}) for n in range(models)]
        session.add_all([definition, *versions])
        session.flush()
        target_id, version_ids = definition.id, [version.id for version in versions]
    timings["structures"] = time.perf_counter() - started
    started = time.perf_counter()
    with engine.begin() as connection:
        for version_id in version_ids:
            mean, std = rng.normal(0, 1, len(ids)), rng.uniform(0, 1, len(ids))
            rows = [{"model_version_id": version_id, "structure_id": int(s), "target_id": target_id,
                     "mean": float(m), "std": float(d)} for s, m, d in zip(ids, mean, std, strict=True)]
            for chunk in _chunks(rows):
                connection.execute(insert(Prediction), chunk)
    timings["predictions"] = time.perf_counter() - started
    started = time.perf_counter()
    document = campaign_document("bench", ledger_rows, objective=[f"{TARGET}<={THRESHOLD}"])
    campaign_id = open_campaign(engine, config_from_document(document))
    chosen = rng.choice(ids, ledger_rows, replace=False)
    computed = rng.normal(0, 1, ledger_rows)
    with session_scope(engine) as session:
        rounds = [Round(campaign_id=campaign_id, number=n, kind=RoundKind.RANDOM if n == 0 else RoundKind.MODEL,
                        status="done", models=None if n == 0 else {TARGET: version_ids[-1]},
                        model_version_id=None if n == 0 else version_ids[-1],
                        summary={"acquired": ROUND_SIZE})
                  for n in range(-(-ledger_rows // ROUND_SIZE))]
        session.add_all(rounds)
        session.flush()
        round_ids = [r.id for r in rounds]
        session.get(Campaign, campaign_id).status = "finished"
    acquisitions, labels = [], []
    for n, (structure_id, value) in enumerate(zip(chosen, computed, strict=True)):
        number, batch = divmod(n, ROUND_SIZE)
        guided = number > 0
        acquisitions.append({
            "round_id": round_ids[number], "structure_id": int(structure_id),
            "model_version_id": version_ids[-1] if guided else None,
            "acquisition_function": "probability" if guided else "random", "score": float(rng.uniform()),
            "rank": batch + 1, "batch": batch + 1, "status": AcquisitionStatus.LABELED,
            "predicted": {TARGET: {"mean": float(value + rng.normal(0, 0.3)), "std": float(rng.uniform(0, 0.5))}}
            if guided else None,
            "outcome": {"computed": {TARGET: float(value)}, "hit": bool(value <= THRESHOLD)}})
        labels.append({"structure_id": int(structure_id), "target_id": target_id, "value": float(value)})
    with engine.begin() as connection:
        for chunk in _chunks(acquisitions):
            connection.execute(insert(Acquisition), chunk)
        for chunk in _chunks(labels):
            connection.execute(insert(TargetValue), chunk)
    timings["ledger"] = time.perf_counter() - started
    engine.dispose()
    return timings


def measure(database_url: str, repeat: int) -> list[tuple[str, list[float]]]:
    from starlette.testclient import TestClient

    from workbench.dashboard.app import Dashboard, create_app
    from workbench.store.engine import read_only_engine

    engine = read_only_engine(database_url)
    client = TestClient(create_app(Dashboard(engine)))
    pages = {
        "campaign, ledger page 1 (by round)": "/campaigns/bench",
        "campaign, ledger page 50 by predicted std": "/campaigns/bench?sort=std&desc=1&page=50",
        "campaign, ledger filtered to hits": "/campaigns/bench?outcome=hit",
        "candidates by std (search page)": f"/search?target={TARGET}&order=std&desc=1",
        "candidates by mean, page 100": f"/search?target={TARGET}&order=mean&desc=0&cpage=100",
        "search by elements": "/search?elements=Cu+Au",
        "overview": "/",
        "models": "/models",
        "model with its parity plot": "/models/5",
        "structure": "/structures/1",
    }
    results = []
    for name, path in pages.items():
        assert client.get(path).status_code == 200, path  # warm: templates compiled, caches filled
        seconds = []
        for _ in range(repeat):
            started = time.perf_counter()
            response = client.get(path)
            seconds.append(time.perf_counter() - started)
            assert response.status_code == 200, path
        results.append((f"{name}: `{path}`", seconds))
        print(f"{name}: median {statistics.median(seconds):.3f} s, max {max(seconds):.3f} s", flush=True)
    engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="", help="an empty database (default: a SQLite file in /tmp)")
    parser.add_argument("--structures", type=int, default=200_000)
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--ledger", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--built", action="store_true",
                        help="the store at --database-url was filled by an earlier run: only measure")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        url = args.database_url or f"sqlite:///{Path(scratch) / 'bench.db'}"
        if not args.built:
            timings = build(url, args.structures, args.models, args.ledger)
            print("built:", {key: round(value, 1) for key, value in timings.items()}, flush=True)
        results = measure(url, args.repeat)
        load = os.getloadavg()[0]
    backend = url.split(":", 1)[0]
    lines = [
        "# Dashboard server time", "",
        f"*{current().line()}*", "",
        (f"`benchmarks/dashboard_benchmark.py`, {backend}: {args.structures:,} structures, "
        f"{args.structures * args.models:,} predictions ({args.models} model versions of one target), "
        f"a finished campaign with a {args.ledger:,}-row ledger. Server time of one request through "
        f"Starlette's TestClient (query, sorting, template; no network), {args.repeat} requests per page "
        "after one to warm up. Pages show 50 rows. The machine's load average (1 min) at the end was "
        f"{load:.1f} on {os.cpu_count()} cores."), "",
        "| page | median s | slowest s |", "|---|---:|---:|",
        *[f"| {name} | {statistics.median(s):.3f} | {max(s):.3f} |" for name, s in results], "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
