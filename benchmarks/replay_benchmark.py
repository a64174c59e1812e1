"""Replay benchmark: how many structures meeting an objective a campaign finds at a
budget, against random selection, on a real labeled pool.

    .venv/bin/python benchmarks/replay_benchmark.py --out benchmarks/replay.md

Pool: shared/data/perov5/labeled_val.csv (3,787 perovskites), imported into a fresh
SQLite store. Two objectives: ``1.5<=dir_gap<=3`` and ``heat_ref<1.0`` (43 hits), and the
lowest 1 % of ``heat_ref`` (``heat_ref<=q``, q its 1 % quantile in the pool: 38 hits). Per
seed, 50 random structures are revealed, then batches of 25 chosen by the replay's
defaults (``ReplayConfig``) until 400 are revealed. Seeds run in ``--processes`` worker
processes (one torch thread each); ``--first-seed`` picks other seeds (100 for tuning).
"""

import argparse
import dataclasses
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
GAP_OBJECTIVE = ["1.5<=dir_gap<=3", "heat_ref<1.0"]
# The "lowest 1 % of heat_ref" objective: below this quantile of the pool.
HEAT_QUANTILE = 0.01


def replay_config(objective: list[str], first_seed: int, seeds: int, args):
    from workbench.acquire.objective import parse_objective
    from workbench.campaign.replay import ReplayConfig

    default = ReplayConfig(source="perov5", objective=parse_objective(objective))
    overrides = {name: getattr(args, name) for name in ("members", "epochs", "patience") if getattr(args, name)}
    return dataclasses.replace(default, initial=args.initial, batch=args.batch, budget=args.budget, seeds=seeds,
                               first_seed=first_seed, device="cpu",
                               train=dataclasses.replace(default.train, **overrides))


def run_seeds(database_url: str, objective: list[str], first_seed: int, seeds: int, args) -> dict:
    import torch

    from workbench.campaign.replay import replay
    from workbench.store.engine import make_engine

    torch.set_num_threads(1)
    return replay(make_engine(database_url), replay_config(objective, first_seed, seeds, args)).to_dict()


def run_objective(url: str, objective: list[str], args):
    """Both strategies for ``objective`` on every seed, split over the worker processes."""
    import numpy as np

    from workbench.campaign.replay import ReplayResult

    shares = np.array_split(np.arange(args.first_seed, args.first_seed + args.seeds), args.processes)
    options = [f"--{name}={getattr(args, name)}" for name in
               ("initial", "batch", "budget", "members", "epochs", "patience") if getattr(args, name)]
    workers = [subprocess.Popen([sys.executable, __file__, "--worker", url, json.dumps(objective), str(share[0]),
                                 str(len(share)), *options], cwd=REPO, stdout=subprocess.PIPE, text=True)
               for share in shares if len(share)]
    parts = [json.loads(worker.communicate()[0].strip().splitlines()[-1]) for worker in workers]
    return ReplayResult(parts[0]["objective"], parts[0]["pool"], parts[0]["hits_in_pool"], parts[0]["revealed"],
                        [curve for part in parts for curve in part["hits"]],
                        [curve for part in parts for curve in part["random_hits"]])


def section(title: str, result, plot: Path, args) -> list[str]:
    import numpy as np

    hits, random_hits = result.hits_at_budget, result.random_hits_at_budget
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    lines = [f"## {title}: `{result.objective}`", "",
             f"{result.hits_in_pool} of the {result.pool} structures are hits.", "",
             f"| seed | campaign hits at {args.budget} | random hits at {args.budget} |", "|---:|---:|---:|"]
    lines += [f"| {seed} | {h} | {r} |" for seed, h, r in zip(seeds, hits, random_hits, strict=True)]
    lines += [f"| median | {np.median(hits):g} | {np.median(random_hits):g} |", "",
              (f"Expected for random: {args.budget} × {result.hits_in_pool} / {result.pool} = "
               f"{args.budget * result.hits_in_pool / result.pool:.1f}."), "",
              "Hits after each batch (median over seeds):", "",
              "| revealed | " + " | ".join(str(count) for count in result.revealed) + " |",
              "|---|" + "---:|" * len(result.revealed),
              "| campaign | " + " | ".join(f"{value:g}" for value in np.median(result.hits, axis=0)) + " |",
              "| random | " + " | ".join(f"{value:g}" for value in np.median(result.random_hits, axis=0)) + " |",
              "", f"![discovery curve]({plot.name})", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--only", choices=["gap", "heat"], help="run one of the two objectives")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--initial", type=int, default=50)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--budget", type=int, default=400)
    parser.add_argument("--members", type=int, help="ensemble members (default: the replay's)")
    parser.add_argument("--epochs", type=int, help="most epochs per member (default: the replay's)")
    parser.add_argument("--patience", type=int, help="early stopping patience (default: the replay's)")
    # database url, objective (JSON list), first seed, seeds
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        url, objective, first, count = args.worker
        print(json.dumps(run_seeds(url, json.loads(objective), int(first), int(count), args)))
        return

    import numpy as np
    import pandas as pd

    from workbench.campaign.replay import discovery_plot

    started = time.perf_counter()
    quantile = float(np.quantile(pd.read_csv(POOL)["heat_ref"], HEAT_QUANTILE))
    objectives = {"gap": ("Band gap window and stability", GAP_OBJECTIVE),
                  "heat": ("Lowest 1 % of heat_ref", [f"heat_ref<={quantile:.4f}"])}
    if args.only:
        objectives = {args.only: objectives[args.only]}
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite:///{scratch}/store.db"
        environment = os.environ | {"WORKBENCH_DATABASE_URL": url, "WORKBENCH_HOME": scratch}
        workbench = str(Path(sys.executable).parent / "workbench")
        for command in ([workbench, "init"],
                        [workbench, "import", str(POOL), "--source", "perov5", "--target", "dir_gap=dir_gap",
                         "--target", "heat_ref=heat_ref"],
                        [workbench, "featurize"]):
            subprocess.run(command, env=environment, check=True, capture_output=True)
        for key, (_, objective) in objectives.items():
            results[key] = run_objective(url, objective, args)
    minutes = (time.perf_counter() - started) / 60

    config = replay_config(GAP_OBJECTIVE, args.first_seed, args.seeds, args)
    train = config.train
    out = args.out or REPO / "benchmarks" / "replay.md"
    lines = [
        "# Replay: a campaign against random selection on a real labeled pool",
        "",
        (f"`benchmarks/replay_benchmark.py` on {platform.machine()} ({os.cpu_count()} cores, "
         f"{args.processes} worker processes with one torch thread each), {minutes:.0f} min in all. "
         f"Pool: perov5 labeled_val, {next(iter(results.values())).pool} structures. Seeds {args.first_seed} to "
         f"{args.first_seed + args.seeds - 1}. Start {args.initial} random, batches of {args.batch}, "
         f"budget {args.budget}; {config.architecture.upper()} ensembles of {train.members} per target, "
         f"at most {train.epochs} epochs (patience {train.patience}), batches of {train.batch_size} at "
         f"learning rate {train.learning_rate:g}, retrained every round, spread calibrated on the held-out "
         "tenth; acquisition: probability of meeting the objective, top of batch."),
        "",
    ]
    for key, (title, _) in objectives.items():
        plot = out.with_name(f"{out.stem}{'' if key == 'gap' else '-' + key}.png")
        discovery_plot(results[key], plot)
        lines += section(title, results[key], plot, args)
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table)
        args.out.with_suffix(".json").write_text(json.dumps({key: result.to_dict() for key, result in results.items()},
                                                            indent=1))


if __name__ == "__main__":
    main()
