"""Benchmark building crystal graphs (8 Å cutoff, 12 nearest neighbours) against CGCNN's
and ALIGNN's ways of doing it, on perovskites and on MOFs.

Run from the repository root:

    .venv/bin/python benchmarks/featurize_benchmark.py [--out benchmarks/featurize.md]

Data sets, parsed with pymatgen (``Structure.from_str(text, fmt="cif")``) before any timing:

(a) perovskites: the first 2,000 rows of ``perov5/labeled_val.csv`` in ``WORKBENCH_DATA_DIR``
    (column ``cif``; 5 atoms each);
(b) MOFs: the first 200 CIFs, in archive order, of
    ``mof_ddec/ddec_mofs_1000.tar.gz`` there (the provenance line before the
    first ``data_`` line is stripped; files that fail to parse are skipped and counted).

Paths timed on the same parsed structures, one process (one thread) unless stated:

1. ours, graph only: ``Featurizer().graph_of(Crystal.from_pymatgen(s))`` (the conversion to
   ``Crystal`` is done before timing);
2. ours, graph + ``bond_angle_triplets``;
3. ours, graph + ``graph_to_data(graph, cgcnn_feature_table(), triplets=True)`` (which builds
   the triplets itself) - PyTorch Geometric data ready for a model;
4. ours through the store: ``featurize_structures`` on a fresh SQLite store with a
   ``ProcessPoolExecutor(2)`` (pool start-up, reading structures and writing graphs
   included; the import into the store beforehand is not timed);
5. CGCNN's reference path, written here from the description of CGCNN's ``data.py``:
   ``get_all_neighbors(8.0)``, the 12 nearest per atom, index/distance arrays, Gaussian
   expansion of the distances (centres 0..8 Å, step 0.2 Å, width 0.2 Å);
6. ALIGNN's reference path with jarvis-tools, in a separate virtual environment (created
   under ``/tmp`` if missing; jarvis-tools is no dependency of this repository) run as a
   subprocess: ``Graph.atom_dgl_multigraph`` if DGL can be imported, otherwise
   ``nearest_neighbor_edges`` + ``build_undirected_edgedata``.

Each path is run on the whole set, repeated until it has run ``--min-seconds``, or stopped
after ``--budget`` seconds of timing (then on fewer structures, reported). One untimed
warm-up call on the first structure precedes each path.
"""

import os

# One thread per process: the numbers are per core.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse
import csv
import json
import math
import platform
import re
import resource
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Self

import numpy as np
import sqlalchemy as sa
import torch
from pymatgen.core import Structure

from workbench.featurize import Featurizer, bond_angle_triplets, featurize_structures
from workbench.featurize.atom_features import cgcnn_feature_table
from workbench.featurize.data import graph_to_data
from workbench.io.importer import ImportFailed, import_file
from workbench.io.readers import ReadOptions
from workbench.settings import Settings
from workbench.store import migrate
from workbench.store.engine import make_engine
from workbench.structures.crystal import Crystal

REPO = Path(__file__).resolve().parent.parent
PEROV_CSV = Settings().data_dir / "perov5" / "labeled_val.csv"
MOF_TAR = Settings().data_dir / "mof_ddec" / "ddec_mofs_1000.tar.gz"
PEROV_COUNT = 2_000
MOF_COUNT = 200
CUTOFF = 8.0
MAX_NEIGHBORS = 12
GAUSS_CENTRES = np.arange(0.0, CUTOFF + 0.2, 0.2)  # CGCNN's GaussianDistance(0, 8, 0.2)
GAUSS_WIDTH = 0.2
AIM_PER_CORE = 400.0
CHECK_COUNT = 20
CHECK_TOLERANCE = 1e-6
WORKERS = 2
DEFAULT_JARVIS_VENV = Path("/tmp/jarvis-venv")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    """One line of the throughput table."""

    dataset: str
    path: str
    processes: int
    crystals: int  # crystals timed, all passes together
    atoms: int
    seconds: float
    cpu_seconds: float
    distinct: int  # distinct structures timed
    passes: int = 1
    notes: str = ""
    others: float = float("nan")  # CPU cores used by other processes on the machine meanwhile

    @property
    def rate(self) -> float:
        return self.crystals / self.seconds if self.seconds else float("nan")

    @property
    def per_core(self) -> float:
        return self.rate / self.processes

    @property
    def atom_rate(self) -> float:
        return self.atoms / self.seconds if self.seconds else float("nan")


@dataclass
class DataSet:
    name: str
    structures: list[Structure]
    crystals: list[Crystal]
    labels: list[str]  # material_id / file name
    texts: list[str]  # the CIF text each structure was parsed from
    notes: list[str] = field(default_factory=list)

    @property
    def atoms(self) -> list[int]:
        return [crystal.nsites for crystal in self.crystals]


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    sizes: list[tuple[str, str, str]] = field(default_factory=list)  # dataset, what, value
    checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    jarvis_versions: str = ""


# --------------------------------------------------------------------------- data


def load_perovskites() -> DataSet:
    with PEROV_CSV.open(newline="") as handle:
        rows = [row for _, row in zip(range(PEROV_COUNT), csv.DictReader(handle))]
    structures, crystals, labels, texts, failed = [], [], [], [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row in rows:
            try:
                structure = Structure.from_str(row["cif"], fmt="cif")
                crystal = Crystal.from_pymatgen(structure)
            except Exception:  # noqa: BLE001 - count and skip, as for the MOFs
                failed += 1
                continue
            structures.append(structure)
            crystals.append(crystal)
            labels.append(row["material_id"])
            texts.append(row["cif"])
    data = DataSet("perovskites", structures, crystals, labels, texts)
    data.notes.append(f"first {len(rows):,} rows of {PEROV_CSV}; {failed} failed to parse")
    return data


def load_mofs() -> DataSet:
    structures, crystals, labels, texts = [], [], [], []
    failed: list[str] = []
    taken = 0
    with tarfile.open(MOF_TAR) as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for member in archive:
            if taken == MOF_COUNT:
                break
            if not member.isfile() or not member.name.endswith(".cif"):
                continue
            taken += 1
            lines = archive.extractfile(member).read().decode().splitlines(keepends=True)
            start = next((i for i, line in enumerate(lines) if line.startswith("data_")), None)
            if start is None:
                failed.append(f"{member.name} (no data_ line)")
                continue
            text = "".join(lines[start:])
            try:
                structure = Structure.from_str(text, fmt="cif")
                crystal = Crystal.from_pymatgen(structure)
            except Exception as error:  # noqa: BLE001 - skipped and reported
                failed.append(f"{member.name} ({type(error).__name__}: {str(error)[:80]})")
                continue
            structures.append(structure)
            crystals.append(crystal)
            labels.append(Path(member.name).name)
            texts.append(text)
    data = DataSet("MOFs", structures, crystals, labels, texts)
    data.notes.append(
        f"first {taken} CIFs of {MOF_TAR} (archive order); {len(failed)} failed to parse and were "
        f"skipped{': ' + '; '.join(failed) if failed else ''}"
    )
    return data


# --------------------------------------------------------------------------- timing


class CpuMeter:
    """CPU seconds of this process and its reaped children, and of everything else on the
    machine (busy time in /proc/stat minus ours), over a section: to tell a slow path from
    a busy machine."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> Self:
        self.wall0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.own = self._own() - self.own0
        self.others = max(0.0, self._busy() - self.busy0 - self.own) / self.wall

    @classmethod
    def _busy(cls) -> float:
        with open("/proc/stat") as handle:
            fields = [int(value) for value in handle.readline().split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        return (user + nice + system + irq + softirq + steal) / cls.TICK

    @staticmethod
    def _own() -> float:
        me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class Timing:
    calls: int  # calls timed, all passes together
    passes: int
    seconds: float  # sum of the per-call wall times
    cpu_seconds: float
    others: float
    outputs: list  # of the first pass


def time_path(items: Sequence, work: Callable, *, budget: float, min_seconds: float) -> Timing:
    """Run ``work`` on ``items`` (after one untimed warm-up) in passes until ``min_seconds``
    of timing have accumulated, stopping early after ``budget`` seconds."""
    work(items[0])
    outputs: list = []
    calls = passes = 0
    wall = 0.0
    with CpuMeter() as meter:
        while passes == 0 or (wall < min_seconds and calls % len(items) == 0):
            passes += 1
            for item in items:
                start = time.perf_counter()
                result = work(item)
                wall += time.perf_counter() - start
                calls += 1
                if passes == 1:
                    outputs.append(result)
                if wall > budget:
                    break
    return Timing(calls, passes, wall, meter.own, meter.others, outputs)


def atoms_of(data: DataSet, calls: int) -> int:
    """Atoms in the first ``calls`` structures, going round the set as the passes do."""
    atoms = data.atoms
    full, rest = divmod(calls, len(atoms))
    return full * sum(atoms) + sum(atoms[:rest])


def bench_ours(data: DataSet, report: Report, args) -> list:
    featurizer = Featurizer()
    table = cgcnn_feature_table()

    def graph_only(crystal):
        return featurizer.graph_of(crystal)

    def with_triplets(crystal):
        graph = featurizer.graph_of(crystal)
        triplet_index, _ = bond_angle_triplets(graph.edge_index, graph.edge_vector)
        return graph.num_edges, triplet_index.shape[1]

    def with_data(crystal):
        return graph_to_data(featurizer.graph_of(crystal), table, triplets=True)

    paths = (
        ("1. ours: graph", graph_only,
         "`Featurizer().graph_of(crystal)`"),
        ("2. ours: graph + triplets", with_triplets,
         "+ `bond_angle_triplets(edge_index, edge_vector)`"),
        ("3. ours: graph + triplets + PyG data", with_data,
         ("`graph_of` + `graph_to_data(graph, cgcnn_feature_table(), triplets=True)` "
          "(triplets built inside `graph_to_data`)")),
    )
    graphs = []
    for name, work, notes in paths:
        log(f"{data.name}: {name}")
        timing = time_path(data.crystals, work, budget=args.budget, min_seconds=args.min_seconds)
        outputs = timing.outputs
        report.rows.append(Row(data.name, name, 1, timing.calls, atoms_of(data, timing.calls),
                               timing.seconds, timing.cpu_seconds, min(timing.calls, len(data.crystals)),
                               timing.passes, notes, timing.others))
        if work is graph_only:
            graphs = outputs
        if work is with_triplets:
            atoms = sum(data.atoms[: len(outputs)])
            edges = sum(edge_count for edge_count, _ in outputs)
            triplets = sum(triplet_count for _, triplet_count in outputs)
            report.sizes.append((data.name, "ours: edges per atom", f"{edges / atoms:.2f}"))
            report.sizes.append((data.name, "ours: triplets per atom", f"{triplets / atoms:.2f}"))
    return graphs


def cgcnn_features(structure: Structure) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """What CGCNN's data.py computes from one structure's neighbours: the indices and
    distances of each atom's 12 nearest neighbours within 8 Å (padded with index 0 and
    distance ``cutoff + 1`` when there are fewer) and their Gaussian expansion."""
    all_neighbors = structure.get_all_neighbors(CUTOFF, include_index=True)
    all_neighbors = [sorted(neighbors, key=lambda x: x[1])[:MAX_NEIGHBORS] for neighbors in all_neighbors]
    indices, distances, short = [], [], 0
    for neighbors in all_neighbors:
        missing = MAX_NEIGHBORS - len(neighbors)
        if missing:
            short += 1
        indices.append([neighbor[2] for neighbor in neighbors] + [0] * missing)
        distances.append([neighbor[1] for neighbor in neighbors] + [CUTOFF + 1.0] * missing)
    indices, distances = np.array(indices), np.array(distances)
    expanded = np.exp(-((distances[..., np.newaxis] - GAUSS_CENTRES) ** 2) / GAUSS_WIDTH**2)
    return indices, distances, expanded, short


def bench_cgcnn(data: DataSet, report: Report, args) -> list:
    log(f"{data.name}: 5. CGCNN reference")
    timing = time_path(data.structures, cgcnn_features, budget=args.budget, min_seconds=args.min_seconds)
    outputs = timing.outputs
    short_atoms = sum(output[3] for output in outputs)
    stopped = (f"stopped by the {args.budget:g} s budget after {len(outputs)} of {len(data.structures)}; "
               if len(outputs) < len(data.structures) else "")
    report.rows.append(Row(
        data.name, "5. CGCNN reference (pymatgen)", 1, timing.calls, atoms_of(data, timing.calls),
        timing.seconds, timing.cpu_seconds, min(timing.calls, len(data.structures)), timing.passes,
        f"{stopped}`Structure.get_all_neighbors(8.0, include_index=True)`, sort, 12 nearest, arrays, "
        f"Gaussian expansion ({len(GAUSS_CENTRES)} centres); no triplets (CGCNN has none); "
        f"{short_atoms} atoms had < 12 neighbours within 8 Å (padded)",
        timing.others,
    ))
    return outputs


def check_agreement(data: DataSet, graphs: list, cgcnn: list, count: int | None) -> str:
    """Our 12-neighbour distances against CGCNN's, sorted per atom."""
    count = min(len(graphs), len(cgcnn)) if count is None else min(count, len(graphs), len(cgcnn))
    worst, bad = 0.0, []
    for index in range(count):
        graph, (_, distances, _, short) = graphs[index], cgcnn[index]
        if short:
            bad.append(f"{data.labels[index]}: CGCNN padded {short} atoms")
            continue
        targets = graph.edge_index[1]
        counts = np.bincount(targets, minlength=graph.num_nodes)
        if not (counts == MAX_NEIGHBORS).all():
            bad.append(f"{data.labels[index]}: ours has {counts.min()}..{counts.max()} edges per atom")
            continue
        ours = np.sort(graph.edge_distance.reshape(graph.num_nodes, MAX_NEIGHBORS), axis=1)
        theirs = np.sort(distances, axis=1)
        difference = float(np.abs(ours - theirs).max())
        worst = max(worst, difference)
        if difference > CHECK_TOLERANCE:
            bad.append(f"{data.labels[index]}: max |Δd| = {difference:.2e} Å")
    verdict = "**ok**" if not bad else "**FAILED**"
    detail = f"; {len(bad)} disagree: {'; '.join(bad[:5])}" if bad else ""
    return (f"{data.name}, first {count} structures: ours vs the CGCNN path, 12-neighbour distances "
            f"sorted per atom: {verdict}, max |Δd| = {worst:.1e} Å (tolerance {CHECK_TOLERANCE:g} Å)"
            f"{detail}. Both end in pymatgen's `find_points_in_spheres`, hence bit-identical distances")


def brute_force_distances(crystal: Crystal) -> np.ndarray:
    """The 12 nearest-neighbour distances of every atom, sorted, by plain enumeration of
    periodic images (no neighbour-search code shared with pymatgen or ours)."""
    lattice = crystal.lattice
    cartesian = crystal.frac_coords @ lattice
    spacing = 1.0 / np.linalg.norm(np.linalg.inv(lattice).T, axis=1)  # between lattice planes
    reach = np.ceil(CUTOFF / spacing).astype(int) + 1
    ranges = [np.arange(-n, n + 1) for n in reach]
    images = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3) @ lattice
    points = (cartesian[None, :, :] + images[:, None, :]).reshape(-1, 3)
    distances = np.linalg.norm(points[None, :, :] - cartesian[:, None, :], axis=2)
    distances = np.where(distances < 1e-8, np.inf, distances)  # the atom itself
    return np.sort(distances, axis=1)[:, :MAX_NEIGHBORS]


def check_brute_force(data: DataSet, graphs: list, count: int) -> str:
    worst, bad = 0.0, []
    for index in range(min(count, len(graphs))):
        graph = graphs[index]
        ours = np.sort(graph.edge_distance.reshape(graph.num_nodes, MAX_NEIGHBORS), axis=1)
        difference = float(np.abs(ours - brute_force_distances(data.crystals[index])).max())
        worst = max(worst, difference)
        if difference > CHECK_TOLERANCE:
            bad.append(f"{data.labels[index]}: max |Δd| = {difference:.2e} Å")
    verdict = "**ok**" if not bad else f"**FAILED** ({'; '.join(bad[:5])})"
    return (f"{data.name}, first {min(count, len(graphs))} structures: ours vs brute-force enumeration "
            f"of periodic images (numpy), 12-neighbour distances sorted per atom: {verdict}, "
            f"max |Δd| = {worst:.1e} Å")


# --------------------------------------------------------------------------- store


def bench_store(data: DataSet, report: Report, workdir: Path) -> None:
    log(f"{data.name}: 4. ours through the store, {WORKERS} processes")
    folder = workdir / f"store-{data.name}"
    folder.mkdir()
    engine = make_engine(f"sqlite:///{folder / 'store.db'}")
    migrate.upgrade(engine)
    import_notes = []
    t0 = time.perf_counter()
    if data.name == "perovskites":
        path = folder / "perovskites.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["material_id", "cif"])
            writer.writerows(zip(data.labels, data.texts))
        result = import_file(engine, path, source="bench", options=ReadOptions())
        import_notes.append(f"1 CSV, {result.new_structures} new structures, {len(result.skipped)} skipped")
    else:
        cifs = folder / "cifs"
        cifs.mkdir()
        new, failed = 0, []
        for label, text in zip(data.labels, data.texts):
            path = cifs / label
            path.write_text(text)
            try:
                new += import_file(engine, path, source="bench", options=ReadOptions()).new_structures
            except ImportFailed as error:
                message = " ".join(str(error).split())
                same = re.search(r"field '(\w+)': .*?\(from (?:\S*/)?([^/,\s]+), block", message)
                failed.append(f"`{label}` (same structure as `{same[2]}`, different `{same[1]}`)" if same
                              else f"`{label}`: {message.replace(str(cifs) + '/', '')}")
        import_notes.append(f"{len(data.texts)} CIF files one by one, {new} new structures, "
                            f"{len(failed)} files refused (see notes)")
        if failed:
            report.notes.append(
                f"{data.name}: `import_file` refused {len(failed)} of {len(data.texts)} files, so the store "
                "path ran on fewer structures. The importer matched each to a structure an earlier file "
                "had already stored and refused the file because the per-site label it carries differs: "
                + "; ".join(failed))
    import_seconds = time.perf_counter() - t0
    with engine.connect() as connection:
        stored = connection.execute(sa.text("SELECT count(*) FROM structures")).scalar_one()

    with CpuMeter() as meter, ProcessPoolExecutor(WORKERS) as executor:
        result = featurize_structures(engine, Featurizer(), executor=executor)
    with engine.connect() as connection:
        graphs, atoms = connection.execute(
            sa.text("SELECT count(*), coalesce(sum(num_nodes), 0) FROM graphs")
        ).one()
    engine.dispose()
    if graphs != stored or result.failed:
        report.problems.append(f"{data.name}: store has {stored} structures but {graphs} graphs; "
                               f"{len(result.failed)} failed: {result.failed[:3]}")
    report.rows.append(Row(
        data.name, f"4. ours: featurize_structures, store, {WORKERS} processes", WORKERS,
        result.featurized, int(atoms), meter.wall, meter.own, result.featurized, 1,
        f"SQLite store; graphs written; pool start-up included; {stored} structures in the store "
        f"(untimed import: {import_notes[0]}, {import_seconds:.1f} s); {len(result.failed)} failed",
        meter.others,
    ))


# --------------------------------------------------------------------------- jarvis

JARVIS_HELPER = r'''
"""Time ALIGNN's graph construction with jarvis-tools (run by featurize_benchmark.py)."""
import json, os, sys, time, types, traceback
from importlib.metadata import version

args = json.loads(sys.argv[1])


def busy():
    """Busy CPU seconds of the whole machine (/proc/stat)."""
    with open("/proc/stat") as handle:
        user, nice, system, _, _, irq, softirq, steal = map(int, handle.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

out = {"versions": {}, "sets": {}, "notes": []}
for name in ("jarvis-tools", "numpy", "torch", "pandas"):
    try:
        out["versions"][name] = version(name)
    except Exception:
        out["versions"][name] = "absent"
out["versions"]["python"] = sys.version.split()[0]
try:
    import dgl  # noqa: F401
    have_dgl = True
except Exception as error:
    have_dgl = False
    out["notes"].append(f"import dgl: {type(error).__name__}: {error}")

    class _NoDGL(types.ModuleType):
        """Stands in for dgl so that jarvis.core.graphs (which imports it at the top) loads;
        anything actually taken from it raises."""

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)

            def missing(*_, **__):
                raise ModuleNotFoundError(f"dgl is not installed (dgl.{name})")

            return type(name, (), {"__init__": missing, "__call__": missing})

    sys.modules["dgl"] = _NoDGL("dgl")
import numpy as np
import torch
torch.set_num_threads(1)
t0 = time.perf_counter()
from jarvis.core.atoms import Atoms
from jarvis.core.graphs import Graph, nearest_neighbor_edges, build_undirected_edgedata
out["import_seconds"] = time.perf_counter() - t0

for name, path in args["sets"].items():
    with open(path) as handle:
        records = json.load(handle)
    atoms_list = [Atoms(lattice_mat=r["lattice"], coords=r["cart"], elements=r["species"],
                        cartesian=True) for r in records]
    mode = "nearest_neighbor_edges + build_undirected_edgedata"
    try:
        Graph.atom_dgl_multigraph(atoms_list[0], cutoff=8.0, max_neighbors=12,
                                  atom_features="cgcnn", compute_line_graph=True,
                                  use_canonize=True)
        mode = "Graph.atom_dgl_multigraph"
    except Exception as error:
        out["notes"].append(f"{name}: Graph.atom_dgl_multigraph(...) failed: "
                            f"{type(error).__name__}: {error}")

    def work(atoms):
        if mode == "Graph.atom_dgl_multigraph":
            g, lg = Graph.atom_dgl_multigraph(atoms, cutoff=8.0, max_neighbors=12,
                                              atom_features="cgcnn", compute_line_graph=True,
                                              use_canonize=True)
            return g.edges()[0].numpy(), g.edges()[1].numpy()
        edges = nearest_neighbor_edges(atoms=atoms, cutoff=8, max_neighbors=12, use_canonize=True)
        u, v, r = build_undirected_edgedata(atoms, edges)
        return u.numpy(), v.numpy()

    work(atoms_list[0])  # warm-up, untimed
    wall, calls, atoms_done, edges, line_edges = 0.0, 0, 0, 0, 0
    cpu0, busy0, loop0 = time.process_time(), busy(), time.perf_counter()
    for atoms in atoms_list:
        start = time.perf_counter()
        u, v = work(atoms)
        wall += time.perf_counter() - start
        calls += 1
        atoms_done += atoms.num_atoms
        # untimed: sizes of ALIGNN's graph and of the line graph DGL would build from it
        # (g.line_graph(shared=True), backtracking on: every pair a->b, b->c)
        degree = np.bincount(u, minlength=atoms.num_atoms)
        edges += len(u)
        line_edges += int((degree[v] if len(v) else np.zeros(0, int)).sum())
        if wall > args["budget"]:
            break
    cpu = time.process_time() - cpu0
    others = max(0.0, busy() - busy0 - cpu) / (time.perf_counter() - loop0)
    out["sets"][name] = {"mode": mode, "crystals": calls, "atoms": atoms_done, "seconds": wall,
                         "cpu_seconds": cpu, "others": others, "edges": edges,
                         "line_edges": line_edges, "available": len(atoms_list)}
print("JSON:" + json.dumps(out))
'''


def jarvis_python(args, report: Report) -> str | None:
    """The interpreter of the jarvis-tools venv, made (once) if it is missing."""
    if args.jarvis_python:
        return args.jarvis_python
    python = DEFAULT_JARVIS_VENV / "bin" / "python"
    if python.exists():
        return str(python)
    log(f"creating {DEFAULT_JARVIS_VENV} with jarvis-tools (one-off, about a minute)")
    # torch pinned to the repository's (CPU) build: jarvis.core.graphs imports torch and pandas.
    torch_pin = f"torch=={torch.__version__}"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(DEFAULT_JARVIS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "jarvis-tools", "numpy", "pandas",
                        "tqdm", torch_pin], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    except subprocess.CalledProcessError as error:
        report.problems.append(f"jarvis-tools could not be installed into {DEFAULT_JARVIS_VENV}: "
                               f"{(error.stderr or '').strip()[-300:]}")
        return None
    report.notes.append(f"created {DEFAULT_JARVIS_VENV}: pip install jarvis-tools numpy pandas tqdm {torch_pin}")
    return str(python)


def bench_jarvis(datasets: list[DataSet], report: Report, args, workdir: Path) -> None:
    log("6. ALIGNN reference (jarvis-tools), subprocess")
    python = jarvis_python(args, report)
    if python is None:
        for data in datasets:
            report.rows.append(Row(data.name, "6. ALIGNN reference (jarvis-tools)", 1, 0, 0, 0.0, 0.0, 0,
                                   0, "not run: jarvis-tools could not be installed (see problems)"))
        return
    sets = {}
    for data in datasets:
        path = workdir / f"jarvis-{data.name}.json"
        path.write_text(json.dumps([
            {"lattice": s.lattice.matrix.tolist(), "cart": s.cart_coords.tolist(),
             "species": [site.specie.symbol for site in s]}
            for s in data.structures
        ]))
        sets[data.name] = str(path)
    helper = workdir / "jarvis_helper.py"
    helper.write_text(JARVIS_HELPER)
    environment = dict(os.environ, PYTHONWARNINGS="ignore")
    completed = subprocess.run(
        [python, str(helper), json.dumps({"sets": sets, "budget": args.budget})],
        check=False, capture_output=True, text=True, env=environment,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("JSON:")]
    if completed.returncode or not lines:
        message = (completed.stderr or completed.stdout).strip()[-400:]
        report.problems.append(f"jarvis helper failed (exit {completed.returncode}): {message}")
        for data in datasets:
            report.rows.append(Row(data.name, "6. ALIGNN reference (jarvis-tools)", 1, 0, 0, 0.0, 0.0, 0,
                                   0, "failed to run (see problems)"))
        return
    result = json.loads(lines[-1][5:])
    report.jarvis_versions = ", ".join(f"{name} {value}" for name, value in result["versions"].items())
    report.notes.extend(f"jarvis: {note}" for note in result["notes"])
    report.notes.append(f"jarvis: importing jarvis.core.graphs took {result['import_seconds']:.1f} s "
                        "(not timed)")
    for data in datasets:
        stats = result["sets"][data.name]
        if stats["mode"] == "Graph.atom_dgl_multigraph":
            timed = "`Graph.atom_dgl_multigraph(atoms, cutoff=8, max_neighbors=12, compute_line_graph=True)`"
        else:
            timed = ("`nearest_neighbor_edges(atoms, cutoff=8, max_neighbors=12, use_canonize=True)` + "
                     "`build_undirected_edgedata(atoms, edges)`; no line graph (needs DGL)")
        stopped = (f"stopped by the {args.budget:g} s budget after {stats['crystals']} of "
                   f"{stats['available']}" if stats["crystals"] < stats["available"] else "all")
        report.rows.append(Row(
            data.name, "6. ALIGNN reference (jarvis-tools)", 1, stats["crystals"], stats["atoms"],
            stats["seconds"], stats["cpu_seconds"], stats["crystals"], 1,
            f"{timed}; structures: {stopped}", stats["others"],
        ))
        if stats["atoms"]:
            report.sizes.append((data.name, "ALIGNN (jarvis): edges per atom (ties kept, both directions)",
                                 f"{stats['edges'] / stats['atoms']:.2f}"))
            report.sizes.append((data.name, "ALIGNN (jarvis): line-graph edges per atom (what DGL would build)",
                                 f"{stats['line_edges'] / stats['atoms']:.2f}"))


# --------------------------------------------------------------------------- report


def machine() -> dict[str, str]:
    model = "unknown"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            check=False, capture_output=True, text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "workbench"],
                           check=False, capture_output=True, text=True).stdout.strip()
    return {
        # GNU nproc honours OMP_NUM_THREADS, which this script sets to 1
        "nproc": subprocess.run(["nproc"], check=False, capture_output=True, text=True, env={
            name: value for name, value in os.environ.items() if not name.startswith("OMP_")
        }).stdout.strip(),
        "cpu": model,
        "load": " / ".join(f"{value:.2f}" for value in os.getloadavg()),
        "python": platform.python_version(),
        "versions": ", ".join(f"{name} {version(name)}" for name in
                              ("pymatgen", "numpy", "torch", "torch_geometric", "sqlalchemy")),
        "commit": commit + (" (with uncommitted changes under workbench/)" if dirty else ""),
    }


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def fmt(value: float, digits: int = 0) -> str:
    return "-" if math.isnan(value) or value == 0 else f"{value:,.{digits}f}"


def render(report: Report, datasets: list[DataSet], info: dict, args, started: str,
           total: float) -> str:
    lines = [
        "# Featurization benchmark",
        "",
        ("What was measured (one run of `benchmarks/featurize_benchmark.py`): throughput of building "
        "the crystal graph (8 Å cutoff, 12 nearest neighbours per atom) on structures parsed with "
        "pymatgen beforehand (parsing not timed), one process with one thread unless stated, "
        "for our featurizer (graph; + bond-angle triplets; + PyTorch Geometric data; through the store "
        "with 2 worker processes), CGCNN's neighbour/Gaussian path (written here from the "
        "description of CGCNN's `data.py`, on pymatgen) and ALIGNN's path in jarvis-tools "
        "(separate venv, subprocess). "
        f"Each path: one untimed warm-up call, then the set in passes until {args.min_seconds:g} s of "
        f"timing, stopped after {args.budget:g} s (then on the structures shown). Time is the sum of "
        "per-structure wall times (store path: wall time of the whole `featurize_structures` call, "
        "pool start-up included). CPU/wall: CPU seconds of the process (and of the worker processes "
        "for the store path) over wall seconds. Others' cores: CPU time used meanwhile by every other "
        "process on the machine (/proc/stat), in cores; the machine has 2, so a value near 1 means "
        "a single-process path still had a core to itself but the 2-process store path did not."),
        "",
    ]
    for data in datasets:
        atoms = data.atoms
        lines.append(f"- Data, {data.name}: {len(data.structures):,} structures, {sum(atoms):,} atoms "
                     f"({min(atoms)}-{max(atoms)} per structure, mean {np.mean(atoms):.1f}); "
                     + "; ".join(data.notes))
    lines += [
        (f"- Machine: `nproc` = {info['nproc']}, CPU {info['cpu']} (from /proc/cpuinfo), "
         f"load average {info['load']} at the start"),
        busy_line(report, info),
        f"- Python {info['python']}; {info['versions']}",
        f"- jarvis venv ({args.jarvis_python or DEFAULT_JARVIS_VENV}): {report.jarvis_versions or 'n/a'}",
        f"- Code: commit {info['commit']}",
        f"- Command: `{args.command}`",
        f"- Run: {started}, {total / 60:.1f} min in all",
        "",
        "## Throughput",
        "",
        (f"Aim: at least {AIM_PER_CORE:.0f} crystals/s per core for the 12-neighbour graph with "
         "triplets (path 2) on both data sets."),
        "",
        ("| Data set | Path | Processes | Structures | Crystals timed | Seconds | Crystals/s "
         "| Crystals/s per core | Atoms/s | CPU/wall | Others' cores | Notes |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report.rows:
        passes = f" ({row.passes} passes)" if row.passes > 1 else ""
        lines.append(
            f"| {row.dataset} | {row.path} | {row.processes} | {row.distinct:,} | "
            f"{row.crystals:,}{passes} | {fmt(row.seconds, 2)} | {fmt(row.rate)} | {fmt(row.per_core)} | "
            f"{fmt(row.atom_rate)} | {fmt(row.cpu_seconds / row.seconds if row.seconds else 0, 2)} | "
            f"{row.others:.2f} | {cell(row.notes)} |"
        )
    lines += ["", "## Aim", ""]
    for verdict in aim_verdicts(report):
        lines.append(f"- {verdict}")
    lines += ["", "## Graph sizes", "", "| Data set | What | Value |", "|---|---|---:|"]
    lines += [f"| {dataset} | {what} | {value} |" for dataset, what, value in report.sizes]
    lines += ["", "## Checks", ""] + [f"- {check}" for check in report.checks]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report.notes]
    if report.problems:
        lines += ["", "## Problems", ""] + [f"- {problem}" for problem in report.problems]
    return "\n".join(lines) + "\n"


def busy_line(report: Report, info: dict) -> str:
    others = [row.others for row in report.rows if row.seconds and not math.isnan(row.others)]
    mean = sum(others) / len(others) if others else float("nan")
    text = (f"- Other processes on the machine used {mean:.2f} cores on average during the timed "
            f"sections (column Others' cores; range {min(others, default=0):.2f}-{max(others, default=0):.2f})")
    if mean > 0.25:
        text += (f": **the machine was shared**. With {info['nproc']} cores, the one-process rows still had "
                 "a core each (CPU/wall near 1) but shared caches and memory bandwidth, and the "
                 f"{WORKERS}-process store rows could not use {WORKERS} cores")
    return text


def aim_verdicts(report: Report) -> list[str]:
    verdicts = []
    for row in report.rows:
        if row.path.startswith("2."):
            met = row.per_core >= AIM_PER_CORE
            verdicts.append(f"{row.dataset}: graph + triplets {row.per_core:,.0f} crystals/s per core "
                            f"({row.atom_rate:,.0f} atoms/s) - aim {AIM_PER_CORE:.0f}: "
                            f"{'met' if met else '**not met**'}")
    return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the markdown report here too")
    parser.add_argument("--jarvis-python", help="python of a venv with jarvis-tools "
                        f"(default: {DEFAULT_JARVIS_VENV}, created if missing)")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="stop timing a path after this many seconds")
    parser.add_argument("--min-seconds", type=float, default=3.0,
                        help="repeat a fast path over the set until it has been timed this long")
    parser.add_argument("--skip-jarvis", action="store_true", help="leave out the jarvis-tools path")
    args = parser.parse_args()
    args.command = shlex.join([".venv/bin/python", *sys.argv]) if sys.argv else ""
    torch.set_num_threads(1)
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    info = machine()
    t0 = time.perf_counter()
    report = Report()

    log("parsing perovskites and MOFs (untimed)")
    datasets = [load_perovskites(), load_mofs()]
    with tempfile.TemporaryDirectory(prefix="featurize-bench-") as directory:
        workdir = Path(directory)
        for data in datasets:
            graphs = bench_ours(data, report, args)
            bench_store(data, report, workdir)
            cgcnn = bench_cgcnn(data, report, args)
            if data.name == "perovskites":
                report.checks.append(check_agreement(data, graphs, cgcnn, CHECK_COUNT))
            report.checks.append(check_agreement(data, graphs, cgcnn, None))
            report.checks.append(check_brute_force(
                data, graphs, CHECK_COUNT if data.name == "perovskites" else 3))
        if args.skip_jarvis:
            report.notes.append("jarvis-tools path skipped (--skip-jarvis)")
        else:
            bench_jarvis(datasets, report, args, workdir)
    report.rows.sort(key=lambda row: (row.dataset != "perovskites", row.path))

    text = render(report, datasets, info, args, started, time.perf_counter() - t0)
    print(text)
    if args.out:
        args.out.write_text(text)
        log(f"wrote {args.out}")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
