"""Replay benchmark: how many structures meeting an objective a campaign finds at a
budget, against random selection, on a real labeled pool.

    .venv/bin/python benchmarks/replay_benchmark.py --out benchmarks/replay.md

Pool: shared/data/perov5/labeled_val.csv (3,787 perovskites; 43 meet
``1.5<=dir_gap<=3`` and ``heat_ref<1.0``), imported into a fresh SQLite store. Per seed,
50 random structures are revealed, then batches of 25 chosen by the probability of
meeting the objective under CGCNN ensembles (one per target, retrained every round) until
400 are revealed. Seeds run in ``--processes`` worker processes (one torch thread each).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
POOL = REPO.parent / "shared" / "data" / "perov5" / "labeled_val.csv"
OBJECTIVE = ["1.5<=dir_gap<=3", "heat_ref<1.0"]


def run_seeds(database_url: str, first_seed: int, seeds: int, args) -> dict:
    import torch

    from workbench.acquire.objective import parse_objective
    from workbench.campaign.replay import ReplayConfig, replay
    from workbench.store.engine import make_engine
    from workbench.train.config import TrainConfig

    torch.set_num_threads(1)
    config = ReplayConfig(source="perov5", objective=parse_objective(OBJECTIVE), initial=args.initial,
                          batch=args.batch, budget=args.budget, seeds=seeds, first_seed=first_seed,
                          device="cpu", train=TrainConfig(members=args.members, epochs=args.epochs,
                                                          patience=args.patience))
    return replay(make_engine(database_url), config).to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--initial", type=int, default=50)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--budget", type=int, default=400)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=8)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)  # database url, first seed, seeds
    args = parser.parse_args()
    if args.worker:
        url, first, count = args.worker
        print(json.dumps(run_seeds(url, int(first), int(count), args)))
        return

    import numpy as np

    from workbench.campaign.replay import ReplayResult, discovery_plot

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite:///{scratch}/store.db"
        environment = os.environ | {"WORKBENCH_DATABASE_URL": url, "WORKBENCH_HOME": scratch}
        workbench = str(Path(sys.executable).parent / "workbench")
        for command in ([workbench, "init"],
                        [workbench, "import", str(POOL), "--source", "perov5", "--target", "dir_gap=dir_gap",
                         "--target", "heat_ref=heat_ref"],
                        [workbench, "featurize"]):
            subprocess.run(command, env=environment, check=True, capture_output=True)
        shares = np.array_split(np.arange(args.seeds), args.processes)
        options = [f"--{name}={getattr(args, name)}" for name in
                   ("initial", "batch", "budget", "members", "epochs", "patience")]
        workers = [subprocess.Popen([sys.executable, __file__, "--worker", url, str(share[0]), str(len(share)), *options],
                                    cwd=REPO, stdout=subprocess.PIPE, text=True)
                   for share in shares if len(share)]
        parts = [json.loads(worker.communicate()[0].strip().splitlines()[-1]) for worker in workers]
    merged = ReplayResult(parts[0]["objective"], parts[0]["pool"], parts[0]["hits_in_pool"], parts[0]["revealed"],
                          [curve for part in parts for curve in part["hits"]],
                          [curve for part in parts for curve in part["random_hits"]])
    minutes = (time.perf_counter() - started) / 60
    plot = args.out.with_suffix(".png") if args.out else REPO / "benchmarks" / "replay.png"
    discovery_plot(merged, plot)
    hits, random_hits = merged.hits_at_budget, merged.random_hits_at_budget
    lines = [
        "# Replay: a campaign against random selection on a real labeled pool",
        "",
        (f"`benchmarks/replay_benchmark.py` on {platform.machine()} ({os.cpu_count()} cores, "
         f"{args.processes} worker processes with one torch thread each), {minutes:.0f} min in all. "
         f"Pool: perov5 labeled_val, {merged.pool} structures, {merged.hits_in_pool} meet "
         f"`{merged.objective}`. Start {args.initial} random, batches of {args.batch}, budget {args.budget}; "
         f"CGCNN ensembles of {args.members} per target, at most {args.epochs} epochs (patience {args.patience}), "
         "retrained every round; acquisition: probability of meeting the objective, top of batch."),
        "",
        f"| seed | campaign hits at {args.budget} | random hits at {args.budget} |",
        "|---:|---:|---:|",
    ]
    lines += [f"| {seed} | {h} | {r} |" for seed, (h, r) in enumerate(zip(hits, random_hits, strict=True))]
    lines += [f"| median | {np.median(hits):g} | {np.median(random_hits):g} |", "",
              (f"Expected for random: {args.budget} × {merged.hits_in_pool} / {merged.pool} = "
               f"{args.budget * merged.hits_in_pool / merged.pool:.1f}."), "",
              "Hits after each batch (median over seeds):", "",
              "| revealed | " + " | ".join(str(count) for count in merged.revealed) + " |",
              "|---|" + "---:|" * len(merged.revealed),
              "| campaign | " + " | ".join(f"{value:g}" for value in np.median(merged.hits, axis=0)) + " |",
              "| random | " + " | ".join(f"{value:g}" for value in np.median(merged.random_hits, axis=0)) + " |",
              "", f"![discovery curve]({plot.name})"]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)
        (args.out.with_suffix(".json")).write_text(json.dumps(merged.to_dict(), indent=1))


if __name__ == "__main__":
    main()
