"""Benchmark CGCNN training throughput: ours (``workbench``) beside the original CGCNN; and
how long a whole ensemble takes with the training defaults (``--only defaults``).

Run from the repository root:

    .venv/bin/python benchmarks/train_benchmark.py [--out benchmarks/train.md]

What is timed: full training epochs (forward + backward + optimizer step) on CPU with
``torch.set_num_threads(2)`` and ``num_workers=0``. Each configuration runs in its own
subprocess so that the peak resident memory (``resource.getrusage``) belongs to it alone.

Data sets (built before any timing, for ours):

- perovskites: the first 1,000 rows of ``perov5/labeled_val.csv`` in ``WORKBENCH_DATA_DIR``, target
  ``heat_ref``, batch size 64, scalar head with sum pooling;
- MOFs: the 150 smallest CIF members of ``mof_ddec/ddec_mofs_1000.tar.gz`` there,
  per-site DDEC charges, batch size 8 (ours only: the original CGCNN has no per-site head).

Ours: ``parse_structure_text`` -> ``Featurizer().graph_of`` -> ``graph_to_data`` with
``cgcnn_feature_table()``; ``CrystalModel(ModelConfig("cgcnn", ...))`` (64 hidden, 3
convolutions), AdamW (lr 1e-3), MSE loss, PyTorch Geometric ``DataLoader``. One warm-up
epoch, then ``--epochs`` timed epochs.

Peer: the original CGCNN (github txie-93/cgcnn, a checkout at ``--peer-dir``, imported from
there, never copied here), run from ``/tmp`` by a small timing script: its ``CIFData`` on a
data folder of one CIF per perovskite, ``id_prop.csv`` and its shipped ``atom_init.json``;
``collate_pool``; ``CrystalGraphConvNet`` with its defaults (atom_fea_len 64, n_conv 3,
h_fea_len 128); the loop of its ``main.py`` (target normalisation, MSE loss, its default
SGD with lr 0.01 and momentum 0.9, MAE of the denormalised output per batch). Timed:
(a) the first epoch, in which ``CIFData.__getitem__`` featurizes each crystal on the fly
(pymatgen parsing and neighbour search; its ``lru_cache`` keeps the result); (b) after all
items are collected into a list, ``--epochs`` epochs over the pre-featurized list.
"""

import argparse
import csv
import gzip
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from workbench.settings import Settings

REPO = Path(__file__).resolve().parent.parent
PEROV_CSV = Settings().data_dir / "perov5" / "labeled_val.csv"
MOF_TAR = Settings().data_dir / "mof_ddec" / "ddec_mofs_1000.tar.gz"
N_PEROV = 1000
N_MOF = 150
THREADS = 2

csv.field_size_limit(sys.maxsize)

PEER_SCRIPT = r'''
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
peer_dir, data_dir, batch_size, epochs, threads = sys.argv[1:6]
sys.path.insert(0, peer_dir)
import torch
from torch.utils.data import DataLoader
from cgcnn.data import CIFData, collate_pool
from cgcnn.model import CrystalGraphConvNet

torch.set_num_threads(int(threads))
torch.manual_seed(0)
batch_size, epochs = int(batch_size), int(epochs)
dataset = CIFData(data_dir)
structures, _, _ = dataset[0]
model = CrystalGraphConvNet(structures[0].shape[-1], structures[1].shape[-1],
                            atom_fea_len=64, n_conv=3, h_fea_len=128)
optimizer = torch.optim.SGD(model.parameters(), 0.01, momentum=0.9, weight_decay=0)
criterion = torch.nn.MSELoss()
targets = torch.tensor([float(t) for _, t in dataset.id_prop_data])
mean, std = targets.mean(), targets.std()


def epoch(items):
    loader = DataLoader(items, batch_size=batch_size, shuffle=True,
                        collate_fn=collate_pool, num_workers=0)
    model.train()
    crystals = atoms = 0
    for inputs, target, _ in loader:
        output = model(*inputs)
        loss = criterion(output, (target - mean) / std)
        _ = torch.mean(torch.abs(output.detach() * std + mean - target))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        crystals += target.shape[0]
        atoms += inputs[0].shape[0]
    return crystals, atoms


start = time.perf_counter()
first = epoch(dataset)
first_seconds = time.perf_counter() - start
items = [dataset[i] for i in range(len(dataset))]
start = time.perf_counter()
crystals = atoms = 0
for _ in range(epochs):
    c, a = epoch(items)
    crystals += c
    atoms += a
seconds = time.perf_counter() - start
print(json.dumps({
    "parameters": sum(p.numel() for p in model.parameters()),
    "first": {"crystals": first[0], "atoms": first[1], "seconds": first_seconds, "epochs": 1},
    "later": {"crystals": crystals, "atoms": atoms, "seconds": seconds, "epochs": epochs},
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "torch": torch.__version__,
}))
'''


BUNDLED_PEROVSKITES = REPO / "workbench" / "examples" / "perovskites_labeled.csv.gz"
DEFAULTS_HEADING = "## Training with the defaults"


def run_defaults(workers: int) -> dict:
    """``train_ensemble`` with ``TrainConfig()`` on the 1,000 bundled perovskites (heat_ref,
    sum pooling; 80/10/10 split), its members in ``workers`` processes; wall time
    from the first member built to the calibrated ensemble, and the test MAE."""
    import numpy as np
    import torch

    from workbench.featurize import Featurizer
    from workbench.featurize.data import graph_to_data
    from workbench.io.structure_text import parse_structure_text
    from workbench.models import ModelConfig
    from workbench.store.schema import TargetKind
    from workbench.train.baselines import CompositionBaseline
    from workbench.train.config import TrainConfig
    from workbench.train.ensemble import train_ensemble
    from workbench.train.splits import grouped_split

    featurizer = Featurizer()
    table = featurizer.feature_table()
    with gzip.open(BUNDLED_PEROVSKITES, "rt", newline="") as handle:
        rows = list(csv.DictReader(handle))
    data = []
    for row in rows:
        item = graph_to_data(featurizer.graph_of(parse_structure_text(row["cif"], "cif")[0]), table)
        item.y = torch.tensor([float(row["heat_ref"])])
        data.append(item)
    ids = list(range(len(data)))
    split = grouped_split(ids, [row["formula"] for row in rows], validation=0.1, test=0.1, seed=0)
    train, validation, test = ([data[i] for i in part] for part in (split.train, split.validation, split.test))
    config = TrainConfig()
    model_config = ModelConfig("cgcnn", "scalar", "heat_ref", featurizer.key, head_options={"pooling": "sum"})
    start = time.perf_counter()
    ensemble, histories = train_ensemble(model_config, TargetKind.SCALAR, train, validation, config,
                                         device=torch.device("cpu"), workers=workers)
    seconds = time.perf_counter() - start
    y = np.array([item.y.item() for item in test])
    mean, _ = ensemble.predict(test)
    composition = CompositionBaseline(extensive=True).fit([item.atomic_numbers.numpy() for item in train],
                                                          np.array([item.y.item() for item in train]))
    return {
        "workers": workers, "sizes": [len(train), len(validation), len(test)], "seconds": seconds,
        "epochs": [len(history.train_loss) for history in histories],
        "member_seconds_per_epoch": [history.seconds / len(history.train_loss) for history in histories],
        "test_mae": float(np.mean(np.abs(mean.numpy() - y))),
        "composition_mae": float(np.mean(np.abs(composition.predict([item.atomic_numbers.numpy() for item in test])
                                                - y))),
    }


def defaults_section(results: list[dict]) -> str:
    """The markdown section of the defaults runs."""
    from dataclasses import asdict

    from workbench.train.config import TrainConfig

    config = asdict(TrainConfig())
    lines = [DEFAULTS_HEADING, "",
             (f"`train_ensemble` with `TrainConfig()` = {config} on the 1,000 bundled perovskites "
             f"(`workbench/examples/perovskites_labeled.csv.gz`, `heat_ref` in eV per cell, sum pooling, "
             f"split 80/10/10 by formula: {results[0]['sizes'][0]} / {results[0]['sizes'][1]} / "
             f"{results[0]['sizes'][2]}), CGCNN at its default size, CPU. Wall time from building the "
             "members to the calibrated ensemble (featurizing not included)."), "",
             ("| members trained in | wall time | epochs run per member | s per epoch per member | "
             "test MAE (eV/cell) | composition baseline MAE |"),
             "|---|---:|---|---:|---:|---:|"]
    for result in results:
        where = ("this process (torch threads: all cores)" if result["workers"] == 1
                 else f"{result['workers']} worker processes (1 torch thread each on 2 cores)")
        lines.append(f"| {where} | {result['seconds'] / 60:.1f} min | "
                     f"{', '.join(str(epochs) for epochs in result['epochs'])} | "
                     f"{sum(result['member_seconds_per_epoch']) / len(result['member_seconds_per_epoch']):.2f} | "
                     f"{result['test_mae']:.3f} | {result['composition_mae']:.3f} |")
    return "\n".join(lines) + "\n"


def perovskite_rows() -> list[dict]:
    with PEROV_CSV.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return [row for _, row in zip(range(N_PEROV), reader)]


def smallest_mofs() -> list[tuple[str, str]]:
    with tarfile.open(MOF_TAR) as archive:
        members = [m for m in archive.getmembers() if m.isfile() and m.name.endswith(".cif")]
        members.sort(key=lambda m: (m.size, m.name))
        return [(m.name, archive.extractfile(m).read().decode()) for m in members[:N_MOF]]


def build_ours(data_set: str) -> tuple[list, object, int, float]:
    """PyG data, model config, batch size and the seconds the build took (not a training time)."""
    import torch

    from workbench.featurize import Featurizer
    from workbench.featurize.atom_features import cgcnn_feature_table
    from workbench.featurize.data import graph_to_data
    from workbench.io.structure_text import parse_structure_text
    from workbench.models import ModelConfig

    featurizer = Featurizer()
    table = cgcnn_feature_table()
    start = time.perf_counter()
    data = []
    if data_set == "perovskites":
        for row in perovskite_rows():
            crystal, _ = parse_structure_text(row["cif"], "cif")
            d = graph_to_data(featurizer.graph_of(crystal), table)
            d.y = torch.tensor([float(row["heat_ref"])])
            data.append(d)
        config = ModelConfig("cgcnn", "scalar", "heat_ref", featurizer.key,
                             head_options={"pooling": "sum"})
        batch_size = 64
    else:
        for _, text in smallest_mofs():
            crystal, columns = parse_structure_text(text, "cif")
            d = graph_to_data(featurizer.graph_of(crystal), table)
            d.y = torch.tensor(columns["charges"], dtype=torch.float32)
            data.append(d)
        config = ModelConfig("cgcnn", "per_site", "charges", featurizer.key)
        batch_size = 8
    return data, config, batch_size, time.perf_counter() - start


def run_ours(data_set: str, epochs: int) -> dict:
    import torch
    from torch_geometric.loader import DataLoader

    from workbench.models import CrystalModel

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    data, config, batch_size, build_seconds = build_ours(data_set)
    model = CrystalModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.MSELoss()
    loader = DataLoader(data, batch_size=batch_size, shuffle=True)

    def epoch() -> tuple[int, int]:
        model.train()
        crystals = atoms = 0
        for batch in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(batch), batch.y)
            loss.backward()
            optimizer.step()
            crystals += batch.num_graphs
            atoms += batch.num_nodes
        return crystals, atoms

    epoch()  # warm-up
    start = time.perf_counter()
    crystals = atoms = 0
    for _ in range(epochs):
        c, a = epoch()
        crystals += c
        atoms += a
    seconds = time.perf_counter() - start
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "timed": {"crystals": crystals, "atoms": atoms, "seconds": seconds, "epochs": epochs},
        "build_seconds": build_seconds,
        "n": len(data),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def prepare_peer_data(peer_dir: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "id_prop.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        for row in perovskite_rows():
            (folder / f"{row['material_id']}.cif").write_text(row["cif"])
            writer.writerow([row["material_id"], row["heat_ref"]])
    atom_init = peer_dir / "data" / "sample-regression" / "atom_init.json"
    (folder / "atom_init.json").write_text(atom_init.read_text())


def run_peer(peer_dir: Path, epochs: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="cgcnn-train-bench-"))
    data_dir = work / "perovskites"
    prepare_peer_data(peer_dir, data_dir)
    script = work / "time_cgcnn.py"
    script.write_text(PEER_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(peer_dir), str(data_dir), "64", str(epochs),
         str(THREADS)],
        cwd=work, capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"peer failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_case(case: str, epochs: int) -> dict:
    """One configuration in a fresh interpreter: the peak RSS is its own."""
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--case", case, "--epochs", str(epochs)],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def machine() -> tuple[int, str]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return os.cpu_count() or 0, model


def versions() -> str:
    import numpy
    import pymatgen.core
    import torch
    import torch_geometric

    return (f"Python {platform.python_version()}, torch {torch.__version__}, "
            f"torch-geometric {torch_geometric.__version__}, numpy {numpy.__version__}, "
            f"pymatgen {pymatgen.core.__version__}")


def git_short(path: Path) -> str:
    result = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


def row(data_set: str, implementation: str, timed: str, numbers: dict, rss: float,
        parameters: int) -> list[str]:
    seconds = numbers["seconds"]
    return [data_set, implementation, timed,
            f"{numbers['crystals'] / seconds:,.0f}", f"{numbers['atoms'] / seconds:,.0f}",
            f"{seconds / numbers['epochs']:.3f}", f"{rss:,.0f}", f"{parameters:,}"]


def markdown(rows: list[list[str]], header: list[str], notes: list[str]) -> str:
    columns = ["data set", "implementation", "what is timed", "crystals/s", "atoms/s",
               "s/epoch", "peak RSS MB", "parameters"]
    lines = ["# CGCNN training throughput", ""]
    lines += [f"- {item}" for item in header]
    lines += ["", "| " + " | ".join(columns) + " |",
              "|" + "|".join(["---"] * 3 + ["---:"] * 5) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up")
    parser.add_argument("--peer-dir", type=Path, default=Path("/tmp/cgcnn"),
                        help="checkout of github txie-93/cgcnn")
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 1],
                        help="defaults part: the worker processes of each run (1: members in this process)")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=["throughput", "defaults"], default=None,
                        help="run one part; --out then keeps the other part of the file")
    args = parser.parse_args()

    if args.case:
        if args.case.startswith("defaults-"):
            print(json.dumps(run_defaults(int(args.case.removeprefix("defaults-")))))
        else:
            print(json.dumps(run_ours(args.case.removeprefix("ours-"), args.epochs)))
        return
    previous = args.out.read_text() if args.out and args.out.exists() else ""
    throughput_part, _, defaults_part = previous.partition(DEFAULTS_HEADING)
    defaults_part = DEFAULTS_HEADING + defaults_part if defaults_part else ""
    if args.only != "throughput":
        load_before = os.getloadavg()
        results = [run_case(f"defaults-{workers}", 0) for workers in args.workers]
        load_after = os.getloadavg()
        defaults_part = defaults_section(results) + (
            f"\nLoad average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}; after: "
            f"{', '.join(f'{v:.2f}' for v in load_after)} on {machine()[0]} CPUs ({machine()[1]}); "
            f"workbench commit {git_short(REPO)}; command: "
            "`.venv/bin/python benchmarks/train_benchmark.py --only defaults --workers "
            f"{' '.join(map(str, args.workers))} --out benchmarks/train.md`.\n")
        print(defaults_part)
    if args.only == "defaults":
        if args.out:
            args.out.write_text(throughput_part.rstrip("\n") + "\n\n" + defaults_part)
        return

    load_before = os.getloadavg()
    timed = f"{args.epochs} epochs after 1 warm-up"
    perov = run_case("ours-perovskites", args.epochs)
    print(f"ours, perovskites: {perov['timed']}", flush=True)
    mofs = run_case("ours-mofs", args.epochs)
    print(f"ours, MOFs: {mofs['timed']}", flush=True)
    rows = [
        row(f"perovskites ({perov['n']}, bs 64)", "ours (workbench)", timed, perov["timed"],
            perov["peak_rss_mb"], perov["parameters"]),
    ]
    notes = [
        (f"ours, data build before training (parse + graph + PyG data, not in the timings): "
        f"{perov['build_seconds']:.1f} s for {perov['n']} perovskites, "
        f"{mofs['build_seconds']:.1f} s for {mofs['n']} MOFs."),
    ]
    peer_commit = "not fetched"
    if (args.peer_dir / "cgcnn" / "model.py").exists():
        peer_commit = git_short(args.peer_dir)
        peer = run_peer(args.peer_dir, args.epochs)
        print(f"peer: {peer['first']} / {peer['later']}", flush=True)
        rows += [
            row(f"perovskites ({N_PEROV}, bs 64)", "original CGCNN", "(a) epoch 1, "
                "featurizing on the fly", peer["first"], peer["peak_rss_mb"], peer["parameters"]),
            row(f"perovskites ({N_PEROV}, bs 64)", "original CGCNN", f"(b) {args.epochs} "
                "epochs, pre-featurized list", peer["later"], peer["peak_rss_mb"],
                peer["parameters"]),
        ]
        notes += [
            ("original CGCNN: one process for (a) and (b), so both rows show the same peak RSS; "
            "(a) also serves as the warm-up of (b). Its loop follows its main.py (SGD, lr "
            "0.01, momentum 0.9, normalised targets); ours uses AdamW - the optimizer step "
            "is a negligible share of either."),
            ("original CGCNN's model has a 128-wide hidden layer after pooling (h_fea_len) "
            "and ours a different head, so parameter counts differ slightly."),
        ]
    else:
        notes.append("peer not available: no checkout of txie-93/cgcnn at "
                     f"{args.peer_dir}.")
    rows.append(row(f"MOFs ({mofs['n']} smallest, bs 8)", "ours (workbench)", timed,
                    mofs["timed"], mofs["peak_rss_mb"], mofs["parameters"]))
    notes.append("MOFs: per-site DDEC charges; the original CGCNN has no per-site head, so "
                 "only ours is run.")

    load_after = os.getloadavg()
    cpus, cpu_model = machine()
    command = ".venv/bin/python benchmarks/train_benchmark.py" + (
        f" --out {shlex.quote(str(args.out))}" if args.out else "")
    header = [
        (f"machine: {cpus} CPUs (nproc), {cpu_model}; torch.set_num_threads({THREADS}), "
        "DataLoader num_workers=0"),
        (f"load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}; "
         f"after: {', '.join(f'{v:.2f}' for v in load_after)} - above {cpus} means other "
         "processes shared the CPUs and the figures are lower than on an idle machine"),
        f"libraries: {versions()}",
        (f"workbench commit: {git_short(REPO)}; original CGCNN (txie-93/cgcnn) commit: "
        f"{peer_commit}"),
        f"command: `{command}`",
        ("GPU: none available for this run (the benchmark asks for GPU figures whenever one "
        "is available; there was none), so all figures are CPU figures."),
        ("throughput = crystals (atoms) trained per second over full epochs: forward + "
        "backward + optimizer step; peak RSS from resource.getrusage of each process."),
    ]
    text = markdown(rows, header, notes)
    print(text)
    if args.out:
        args.out.write_text(text + ("\n" + defaults_part if defaults_part else ""))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
