"""Pretrained atom features: embeddings per second on CPU, beside the crystal-graph rate.

For the first ``--count`` perovskites of the bundled pool (workbench/examples/perovskites_pool.json.gz,
real 5-atom cells), times: the CGCNN graph (``Featurizer().graph_of``); each pretrained
model's embeddings of the whole set, batched as ``featurize_structures`` does and one
structure per forward pass; loading each model; and ``featurize_structures`` into a fresh
SQLite store end to end (graphs, model load, embeddings, writes). Each timed path gets one
untimed warm-up call on 4 structures. Writes the markdown page given by ``--out``.

    .venv/bin/python benchmarks/pretrained_features_benchmark.py --out benchmarks/pretrained_features.md
"""

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from workbench.featurize import Featurizer, featurize_structures
from workbench.featurize.pretrained import ATOMS_PER_PASS, PRETRAINED_MODELS
from workbench.io.importer import import_file
from workbench.io.readers import ReadOptions, read_entries
from workbench.io.structure_text import parse_structure_text
from workbench.provenance import current
from workbench.store import migrate
from workbench.store.engine import make_engine

REPO = Path(__file__).resolve().parents[1]
POOL = REPO / "workbench" / "examples" / "perovskites_pool.json.gz"
WARM_UP = 4
REPEATS = 2  # batched paths: the faster of two runs, as other jobs share the machine
ONE_PER_PASS = 20  # structures timed one per forward pass (slow; enough for a rate)


def load_pool(count: int, folder: Path) -> tuple[list, Path]:
    """The first ``count`` crystals of the pool, and a JSON file of just those to import."""
    with gzip.open(POOL, "rt") as handle:
        subset = dict(list(json.load(handle).items())[:count])
    path = folder / "pool.json"
    path.write_text(json.dumps(subset))
    return [parse_structure_text(entry.text, entry.text_format)[0] for entry in read_entries(path, ReadOptions())], path


def timed(function, *args) -> tuple[float, float]:
    """Wall and CPU seconds (this process, all its threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def one_per_pass(featurizer: Featurizer, crystals: list, graphs: list) -> None:
    for crystal, graph in zip(crystals, graphs, strict=False):
        featurizer.with_embeddings([crystal], [graph])


def row(path: str, structures: int, atoms: int, wall: float, cpu: float, load: float, note: str) -> dict:
    return {"path": path, "structures": structures, "atoms": atoms, "seconds": wall, "per_second": structures / wall,
            "atoms_per_second": atoms / wall, "cpu_per_wall": cpu / wall, "load": load, "note": note}


def measure(crystals: list, pool: Path, store_url: str) -> list[dict]:
    atoms = sum(crystal.nsites for crystal in crystals)
    rows = []
    cgcnn = Featurizer()
    [cgcnn.graph_of(crystal) for crystal in crystals[:WARM_UP]]
    wall, cpu = min(timed(lambda: [cgcnn.graph_of(crystal) for crystal in crystals]) for _ in range(REPEATS))
    rows.append(row("cgcnn graph", len(crystals), atoms, wall, cpu, os.getloadavg()[0],
                    f"`Featurizer().graph_of(crystal)`, one by one; faster of {REPEATS}"))
    for name, model in PRETRAINED_MODELS.items():
        featurizer = Featurizer(atom_features=name)
        graphs = [featurizer.structure_graph(crystal) for crystal in crystals]
        wall, cpu = timed(model.load, "cpu")
        rows.append(row(f"{name}: load the model", 1, 0, wall, cpu, os.getloadavg()[0],
                        f"{model.package} {model.model}, weights from the wheel"))
        featurizer.with_embeddings(crystals[:WARM_UP], graphs[:WARM_UP])  # loads it, warms up
        wall, cpu = min(timed(featurizer.with_embeddings, crystals, graphs) for _ in range(REPEATS))
        rows.append(row(f"{name}: embeddings, batched", len(crystals), atoms, wall, cpu, os.getloadavg()[0],
                        f"`with_embeddings` on all, passes of up to {ATOMS_PER_PASS} atoms; faster of {REPEATS}"))
        few = crystals[:ONE_PER_PASS]
        wall, cpu = timed(one_per_pass, featurizer, few, graphs)
        rows.append(row(f"{name}: embeddings, one per pass", len(few), sum(c.nsites for c in few), wall, cpu,
                        os.getloadavg()[0], f"`with_embeddings` per structure, the first {len(few)}"))
    for name in ["cgcnn", *PRETRAINED_MODELS]:
        engine = make_engine(store_url.format(name=name))
        migrate.upgrade(engine)
        import_file(engine, pool, source="pool", options=ReadOptions())
        wall, cpu = timed(featurize_structures, engine, Featurizer(atom_features=name))
        engine.dispose()
        rows.append(row(f"{name}: featurize_structures, store", len(crystals), atoms, wall, cpu, os.getloadavg()[0],
                        "fresh SQLite store, one process; model load included" if name != "cgcnn"
                        else "fresh SQLite store, one process"))
    return rows


def render(rows: list[dict], count: int, load_before: tuple, seconds: float, command: str) -> str:
    provenance = current()
    lines = [
        "# Pretrained atom features: throughput",
        "",
        f"{provenance.line(wall_seconds=seconds)}",
        "",
        f"- Command: `{command}`",
        f"- Data: the first {count} structures of workbench/examples/perovskites_pool.json.gz (5-atom cells)",
        f"- torch {torch.__version__}, {torch.get_num_threads()} intra-op threads; CPU only",
        (f"- Load average at the start: {' / '.join(f'{value:.2f}' for value in load_before)} "
         "(column Load: the 1-min average after each path). **Measured under load** from other "
         "people's jobs on this 2-core machine: rates are lower bounds of an idle machine's."),
        "",
        "| Path | Structures | Seconds | Structures/s | Atoms/s | CPU/wall | Load | Notes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for item in rows:
        lines.append(f"| {item['path']} | {item['structures']:,} | {item['seconds']:.2f} | "
                     f"{item['per_second']:,.1f} | {item['atoms_per_second']:,.0f} | {item['cpu_per_wall']:.2f} | "
                     f"{item['load']:.2f} | {item['note']} |")
    by_path = {item["path"]: item for item in rows}
    graph = by_path["cgcnn graph"]["per_second"]
    lines += ["", "## Reading", ""]
    for name in PRETRAINED_MODELS:
        batched = by_path[f"{name}: embeddings, batched"]["per_second"]
        single = by_path[f"{name}: embeddings, one per pass"]["per_second"]
        lines.append(f"- {name}: {batched:,.0f} structures/s batched ({single:,.0f} one per pass, "
                     f"x{batched / single:.1f} from batching), {graph / batched:,.0f} times slower than the "
                     "CGCNN graph; computed once per structure and cached, so only the first featurization pays it.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="structures of the pool (default 100)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "pretrained_features.md")
    arguments = parser.parse_args()
    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pretrained-benchmark-") as folder:
        crystals, pool = load_pool(arguments.count, Path(folder))
        rows = measure(crystals, pool, f"sqlite:///{folder}/{{name}}.db")
    for item in rows:
        print(item, flush=True)
    command = "python " + " ".join([Path(sys.argv[0]).relative_to(REPO).as_posix() if Path(sys.argv[0]).is_absolute()
                                    else sys.argv[0], *sys.argv[1:]])
    arguments.out.write_text(render(rows, arguments.count, load_before, time.perf_counter() - started, command))
    print(f"wrote {arguments.out}")


if __name__ == "__main__":
    main()
