"""Training throughput and memory peak of every architecture, on the same perovskites.

Run from the repository root:

    .venv/bin/python benchmarks/architectures_benchmark.py [--out benchmarks/architectures.md]

Each architecture trains in its own subprocess (so the peak resident memory is its own):
the first ``--structures`` rows of perov5/labeled_val.csv in ``WORKBENCH_DATA_DIR``, target
``heat_ref``, scalar head with sum pooling, batch 64, AdamW, MSE; one warm-up epoch, then
``--epochs`` timed epochs (forward, backward, step). Graphs (and, for ALIGNN, triplets;
for OCrystalNet and OGCNN, the OFM descriptors) are built before timing, and that build
time is reported apart. On CPU: ``torch.set_num_threads(--threads)``. With CUDA present
the same runs go to the GPU too, with ``torch.cuda.max_memory_allocated`` as the peak.
The original CGCNN beside ours is in benchmarks/train.md.
"""

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from workbench.settings import Settings

REPO = Path(__file__).resolve().parent.parent
PEROV_CSV = Settings().data_dir / "perov5" / "labeled_val.csv"
BATCH_SIZE = 64
# (label, --arch, atom features)
CASES = (
    ("CGCNN", "cgcnn", "cgcnn"),
    ("SchNet", "schnet", "cgcnn"),
    ("MEGNet", "megnet", "cgcnn"),
    ("ALIGNN", "alignn", "cgcnn"),
    ("OCrystalNet", "ocrystalnet", "ofm"),
    ("OGCNN", "cgcnn", "ofm"),
)

csv.field_size_limit(sys.maxsize)


def run_case(architecture: str, atom_features: str, structures: int, epochs: int, threads: int,
             device_name: str) -> dict:
    import torch
    from torch_geometric.loader import DataLoader

    from workbench.featurize import Featurizer
    from workbench.featurize.data import graph_to_data
    from workbench.io.structure_text import parse_structure_text
    from workbench.models import CrystalModel, ModelConfig, needs_triplets

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device(device_name)
    featurizer = Featurizer(atom_features=atom_features)
    table = featurizer.feature_table()
    triplets = needs_triplets(architecture)
    with PEROV_CSV.open() as handle:
        rows = [row for _, row in zip(range(structures), csv.DictReader(handle), strict=False)]
    start = time.perf_counter()
    data = []
    for row in rows:
        crystal, _ = parse_structure_text(row["cif"], "cif")
        item = graph_to_data(featurizer.graph_of(crystal), table, triplets=triplets)
        item.y = torch.tensor([float(row["heat_ref"])])
        data.append(item)
    build_seconds = time.perf_counter() - start
    config = ModelConfig(architecture, "scalar", "heat_ref", featurizer.key,
                         backbone={"atom_feature_size": featurizer.atom_feature_size}
                         if architecture != "schnet" else {},
                         head_options={"pooling": "sum"})
    model = CrystalModel(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.MSELoss()
    loader = DataLoader(data, batch_size=BATCH_SIZE, shuffle=True)

    def epoch() -> None:
        model.train()
        for batch in loader:
            batch = batch.to(device)
            optimizer.zero_grad()
            loss_fn(model(batch), batch.y).backward()
            optimizer.step()

    epoch()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(epochs):
        epoch()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "structures_per_s": len(data) * epochs / seconds,
        "epoch_s": seconds / epochs,
        "build_s": build_seconds,
        "peak_mb": peak,
        "n": len(data),
        "triplets": int(sum(item.triplet_index.shape[1] for item in data)) if triplets else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--structures", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case:
        architecture, atom_features, device = args.case.split(",")
        print(json.dumps(run_case(architecture, atom_features, args.structures, args.epochs,
                                  args.threads, device)))
        return

    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    lines = [
        "# Training throughput per architecture",
        "",
        (f"`benchmarks/architectures_benchmark.py`: {args.structures} perovskites (heat_ref, sum pooling), "
         f"batch {BATCH_SIZE}, {args.epochs} timed epochs after one warm-up, default widths, "
         f"{args.threads} CPU threads on {platform.machine()} ({os.cpu_count()} cores); torch {torch.__version__}. "
         "Peak: resident memory of the process on CPU, `max_memory_allocated` on CUDA."),
        "",
        "| architecture | device | parameters | structures/s | s per epoch | graph build (s) | triplets | peak (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for device in devices:
        for label, architecture, atom_features in CASES:
            result = subprocess.run(
                [sys.executable, __file__, "--case", f"{architecture},{atom_features},{device}",
                 "--structures", str(args.structures), "--epochs", str(args.epochs),
                 "--threads", str(args.threads)],
                cwd=REPO, capture_output=True, text=True, check=False,
            )
            if result.returncode != 0:
                raise RuntimeError(f"{label} on {device} failed:\n{result.stderr[-3000:]}")
            numbers = json.loads(result.stdout.strip().splitlines()[-1])
            lines.append(
                f"| {label} (`--arch {architecture}`, `{atom_features}` features) | {device} | "
                f"{numbers['parameters']:,} | {numbers['structures_per_s']:,.0f} | {numbers['epoch_s']:.2f} | "
                f"{numbers['build_s']:.1f} | {numbers['triplets']:,} | {numbers['peak_mb']:,.0f} |"
            )
            print(lines[-1], flush=True)
    if not torch.cuda.is_available():
        lines += ["", "No GPU on the machine of this run: CUDA rows are missing."]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
