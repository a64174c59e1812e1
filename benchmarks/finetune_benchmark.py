"""Fine-tuning the pretrained SevenNet (``--arch sevennet``) against CGCNN trained from
scratch, at the same small budget, on the bundled perovskites.

Run from the repository root:

    .venv/bin/python benchmarks/finetune_benchmark.py [--out benchmarks/finetune.md]

The first ``--structures`` rows of workbench/examples/perovskites_labeled.csv.gz (target
``heat_ref``, heat of formation of the 5-atom cell, eV), split at random (seed 0) into 80 %
train, 10 % validation and 10 % test. Every case trains through the ensemble trainer
(``train_ensemble``): one member per seed, scalar head with sum pooling, the same
``TrainConfig`` (``--epochs`` epochs, or 60 for CGCNN in a second row, batch 16, AdamW at ``--learning-rate``, the best
validation epoch kept). Cases: SevenNet 7net-0 with ``finetune`` all, last and none,
and CGCNN at its default width; each on the graphs its featurizer builds
(``graph_for``: 96 neighbours for SevenNet, 12 for CGCNN), built before timing.
Reported: seconds per training epoch (the trainer's own timing, validation included),
the test MAE (mean and spread over seeds) and the MAE of the training mean. The load
average of the machine is printed beside the timings: they were taken on a shared machine.
"""

import argparse
import csv
import gzip
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PEROVSKITES = REPO / "workbench" / "examples" / "perovskites_labeled.csv.gz"
BATCH_SIZE = 16
CGCNN_EPOCHS = 60  # TrainConfig's default: CGCNN given about the seconds SevenNet's few epochs take
# (label, --arch, backbone options, epochs: None for --epochs)
CASES = (
    ("SevenNet 7net-0, finetune all", "sevennet", {"finetune": "all"}, None),
    ("SevenNet 7net-0, finetune last", "sevennet", {"finetune": "last"}, None),
    ("SevenNet 7net-0, finetune none (frozen)", "sevennet", {"finetune": "none"}, None),
    ("CGCNN from scratch", "cgcnn", {}, None),
    (f"CGCNN from scratch, {CGCNN_EPOCHS} epochs", "cgcnn", {}, CGCNN_EPOCHS),
)

csv.field_size_limit(sys.maxsize)


def load_graphs(architecture: str, rows: list[dict]) -> tuple[str, list, float]:
    import torch

    from workbench.featurize import Featurizer
    from workbench.featurize.data import graph_to_data
    from workbench.io.structure_text import parse_structure_text
    from workbench.models.model import graph_for

    featurizer = Featurizer(graph_for(architecture))
    table = featurizer.feature_table()
    start = time.perf_counter()
    data = []
    for row in rows:
        crystal, _ = parse_structure_text(row["cif"], "cif")
        item = graph_to_data(featurizer.graph_of(crystal), table)
        item.y = torch.tensor([float(row["heat_ref"])])
        data.append(item)
    return featurizer.key, data, time.perf_counter() - start


def run_case(architecture: str, backbone: dict, epochs: int, rows: list[dict], parts: dict[str, np.ndarray],
             args: argparse.Namespace) -> dict:
    import torch

    from workbench.models import ModelConfig
    from workbench.store.schema import TargetKind
    from workbench.train.config import TrainConfig
    from workbench.train.ensemble import train_ensemble

    key, data, build_seconds = load_graphs(architecture, rows)
    train, validation, test = ([data[index] for index in parts[name]] for name in ("train", "validation", "test"))
    y = torch.cat([item.y for item in test]).numpy()
    config = ModelConfig(architecture, "scalar", "heat_ref", key, backbone=backbone, head_options={"pooling": "sum"})
    maes, epoch_seconds, best_epochs = [], [], []
    for seed in range(args.seeds):
        train_config = TrainConfig(members=1, epochs=epochs, patience=epochs, batch_size=BATCH_SIZE,
                                   learning_rate=args.learning_rate, seed=seed)
        ensemble, (history,) = train_ensemble(config, TargetKind.SCALAR, train, validation, train_config,
                                              device=torch.device("cpu"), calibrate=False)
        mean, _ = ensemble.predict(test)
        maes.append(float(np.mean(np.abs(mean.numpy() - y))))
        epoch_seconds.append(history.seconds / len(history.train_loss))
        best_epochs.append(history.best_epoch)
        print(f"  seed {seed}: MAE {maes[-1]:.3f}, {epoch_seconds[-1]:.1f} s/epoch, best epoch {history.best_epoch}, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
    trainable = sum(p.numel() for p in ensemble.members[0].parameters() if p.requires_grad)
    total = sum(p.numel() for p in ensemble.members[0].parameters())
    return {"maes": maes, "epoch_s": float(np.mean(epoch_seconds)), "build_s": build_seconds,
            "trainable": trainable, "parameters": total, "best_epochs": best_epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--structures", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)  # 2 threads on a loaded 2-core machine: 5x slower
    args = parser.parse_args()

    import torch

    from workbench.provenance import current

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_before = os.getloadavg()
    with gzip.open(PEROVSKITES, "rt", newline="") as handle:
        rows = [row for _, row in zip(range(args.structures), csv.DictReader(handle), strict=False)]
    order = np.random.default_rng(0).permutation(len(rows))
    n_test = n_validation = len(rows) // 10
    parts = {"test": order[:n_test], "validation": order[n_test:n_test + n_validation],
             "train": order[n_test + n_validation:]}
    y_train = np.array([float(rows[index]["heat_ref"]) for index in parts["train"]])
    y_test = np.array([float(rows[index]["heat_ref"]) for index in parts["test"]])
    mean_mae = float(np.mean(np.abs(y_test - y_train.mean())))

    lines = [
        "# Fine-tuning SevenNet against CGCNN from scratch",
        "",
        (f"`benchmarks/finetune_benchmark.py --structures {args.structures} --epochs {args.epochs} "
         f"--seeds {args.seeds} --learning-rate {args.learning_rate:g} --threads {args.threads}`: "
         f"the first {len(rows)} bundled perovskites (heat_ref, eV per 5-atom cell), "
         f"{len(parts['train'])} train / {len(parts['validation'])} validation / {len(parts['test'])} test "
         f"(random, seed 0); one member per seed through `train_ensemble`, sum pooling, batch {BATCH_SIZE}, "
         f"AdamW at {args.learning_rate:g}, {args.epochs} epochs (unless the row says), best validation epoch kept; "
         f"{args.threads} torch threads on CPU; torch {torch.__version__}."),
        "",
        "| model | parameters (trainable) | graph build (s) | s per epoch | test MAE (eV), mean ± std over seeds | per seed |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for label, architecture, backbone, epochs in CASES:
        print(label, flush=True)
        result = run_case(architecture, backbone, epochs or args.epochs, rows, parts, args)
        maes = np.array(result["maes"])
        lines.append(
            f"| {label} | {result['parameters']:,} ({result['trainable']:,}) | {result['build_s']:.1f} | "
            f"{result['epoch_s']:.1f} | {maes.mean():.3f} ± {maes.std():.3f} | "
            f"{', '.join(f'{mae:.3f}' for mae in maes)} |")
        print(lines[-1], flush=True)
    load_after = os.getloadavg()
    lines += [
        f"| training mean (no model) | | | | {mean_mae:.3f} | |",
        "",
        (f"Measured under load: load average {load_before[0]:.1f} / {load_before[1]:.1f} / {load_before[2]:.1f} "
         f"at the start and {load_after[0]:.1f} / {load_after[1]:.1f} / {load_after[2]:.1f} at the end "
         "(other jobs shared the cores), so the seconds are upper bounds."),
        "",
        current().line(wall_seconds=time.perf_counter() - started),
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
