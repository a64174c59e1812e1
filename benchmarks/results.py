"""Proof on real data: CGCNN ensembles beside their baselines, through the product's path.

Run from the repository root (writes docs/results.md):

    .venv/bin/python benchmarks/results.py [--quick] [--out docs/results.md]

Each data set is imported into a fresh SQLite store with ``import_file``, featurized, and
trained with ``train_and_register`` (MLflow in a temporary folder) on a deduplicated
split: 20 % test, 10 % validation for early stopping, the rest training; three split and
training seeds per set. Reported: test metrics of the ensemble and of the baselines, and
the ensemble's uncertainty quality.

- perovskites, ``heat_ref`` (eV per cell, sum pooling): ../shared/data/perov5/labeled_val.csv
- phonon DOS (66 bins): ../shared/data/jarvis_phdos, the 663 entries that have one
- electronic DOS (300 bins): ../shared/data/jarvis_dos50, a smoke test of the representation
- MOF DDEC charges (per site, neutral cells): ../shared/data/mof_ddec, the smallest MOFs
"""

import argparse
import csv
import gzip
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import ase.db
import numpy as np
import torch
from ase.io import read as ase_read

from workbench.featurize import Featurizer, featurize_structures
from workbench.io.importer import import_file
from workbench.io.readers import ReadOptions
from workbench.settings import Settings
from workbench.store import migrate
from workbench.store.engine import make_engine
from workbench.train.config import TrainConfig
from workbench.train.pipeline import TrainRequest, train_and_register

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SEEDS = (0, 1, 2)


@dataclass
class Task:
    name: str
    target: str
    load: callable
    train: TrainConfig
    pooling: str = "mean"
    conserve_total: bool = False
    architecture: str = "cgcnn"
    note: str = ""
    results: list[dict] = field(default_factory=list)
    import_note: str = ""
    seconds: float = 0.0
    structures: int = 0


MOF_COUNT = 250  # the smallest MOFs: training time grows with the number of atoms


def load_perovskites(engine, workdir: Path, quick: bool, executor) -> str:
    source = DATA / "perov5" / "labeled_val.csv"
    if quick:
        with source.open(newline="") as handle:
            rows = list(csv.DictReader(handle))[:300]
        source = workdir / "perov_quick.csv"
        with source.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    import_file(engine, source, source="castelli", options=ReadOptions(targets={"heat_ref": "heat_ref"}),
                executor=executor)
    return ""


def load_phonon_dos(engine, workdir: Path, quick: bool, executor) -> str:
    with gzip.open(DATA / "jarvis_phdos" / "jarvis_tc_phdos.json.gz", "rt") as handle:
        entries = json.load(handle)
    path = workdir / "phdos.db"
    with ase.db.connect(str(path)) as database:
        kept = 0
        for jid, entry in sorted(entries.items()):
            if not entry.get("phonon_dos"):
                continue
            atoms = ase_read(io.StringIO(entry["poscar"].replace("\\n", "\n")), format="vasp")
            spectrum = np.array([float(v) for v in entry["phonon_dos"].split(";")])
            database.write(atoms, data={"phonon_dos": spectrum, "wb_sources": [["jarvis", jid]]})
            kept += 1
            if quick and kept >= 120:
                break
    database.metadata = {"workbench": {"targets": {"phonon_dos": {"key": "phonon_dos", "kind": "spectrum"}}}}
    report = import_file(engine, path, source="jarvis", options=ReadOptions(), skip_bad=True)
    return (f"{kept} entries with a phonon DOS; {len(report.skipped)} left out because an earlier entry is the "
            "same crystal (by the store's dedup) with a different spectrum.")


def load_electronic_dos(engine, workdir: Path, quick: bool, executor) -> str:
    # The 300-bin representation of Kaundinya et al.: -5..10 eV around the Fermi level.
    grid = (np.linspace(-5.0, 10.0, 300, endpoint=False), "eV")
    import_file(engine, DATA / "jarvis_dos50" / "id_prop.csv", source="jarvis",
                options=ReadOptions(targets={"value": "dos"}, grids={"dos": grid}))
    return ""


def load_mof_charges(engine, workdir: Path, quick: bool, executor) -> str:
    count = 40 if quick else MOF_COUNT
    with tarfile.open(DATA / "mof_ddec" / "ddec_mofs_1000.tar.gz") as archive:
        members = sorted((m for m in archive.getmembers() if m.isfile()), key=lambda m: (m.size, m.name))[:count]
        archive.extractall(workdir / "mofs", members=members, filter="data")
    skipped = sum(len(import_file(engine, workdir / "mofs" / member.name, source="core-mof",
                                  options=ReadOptions(), skip_bad=True).skipped) for member in members)
    return (f"{count} files; {skipped} left out because another file holds the same framework "
            "(by the store's dedup) with different charges.")


def run_task(task: Task, quick: bool, executor: ProcessPoolExecutor) -> None:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        settings = Settings(home=workdir / "home", database_url=f"sqlite:///{workdir / 'store.db'}",
                            mlflow_tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
        engine = make_engine(settings.database_url)
        migrate.upgrade(engine)
        task.import_note = task.load(engine, workdir, quick, executor)
        featurize_structures(engine, Featurizer(), executor=executor)
        for seed in SEEDS:
            train = TrainConfig(**{**task.train.__dict__, "seed": seed})
            request = TrainRequest(target=task.target, name=f"{task.name}-{seed}", train=train,
                                   architecture=task.architecture,
                                   pooling=task.pooling, conserve_total=task.conserve_total,
                                   validation_fraction=0.1, test_fraction=0.2, split_seed=seed, device="cpu")
            result = train_and_register(engine, settings, request, executor=executor)
            task.results.append(result.metrics)
            print(f"{task.name} seed {seed}: " + ", ".join(
                f"{key}={value:.4g}" for key, value in sorted(result.metrics.items())), flush=True)
        with engine.connect() as connection:
            task.structures = connection.exec_driver_sql("SELECT count(*) FROM target_values").scalar_one()
        engine.dispose()
    task.seconds = time.perf_counter() - started


def summary(values: list[float]) -> str:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "–"
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4g} ± {spread:.2g}"


def render(tasks: list[Task], quick: bool, seconds: float) -> str:
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    lines = [
        "# Results on real data",
        "",
        ("CGCNN ensembles beside their baselines, trained through the product's own path "
        "(`import_file` → `featurize_structures` → `train_and_register`), on deduplicated splits "
        "(20 % test, 10 % validation for early stopping, the rest training). Mean ± standard "
        f"deviation over {len(SEEDS)} seeds (split and training). Test-split metrics."),
        "",
        (f"- Produced by `benchmarks/results.py{' --quick' if quick else ''}` at commit {commit}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {seconds / 60:.0f} min in all."),
        (f"- Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads."),
        ("- Model: CGCNN as published (64 atom features, 3 convolutions, Gaussian edges to 8 Å), "
        "12 nearest neighbours; members trained with AdamW, batch 64, early stopping."),
        "",
    ]
    for task in tasks:
        # Per-element rows only for elements in every seed's test split.
        metrics = sorted(set.intersection(*(set(result) for result in task.results)))
        lines += [f"## {task.name}: `{task.target}`, {task.architecture}", "",
                  (f"{task.note} {task.import_note} {task.structures} labeled structures; ensembles of {task.train.members}, "
                  f"at most {task.train.epochs} epochs (patience {task.train.patience}); "
                  f"{task.seconds / 60:.1f} min for the three seeds."), "",
                  "| metric | value |", "|---|---:|"]
        lines += [f"| {key} | {summary([r.get(key) for r in task.results])} |" for key in metrics]
        lines.append("")
    return "\n".join(lines)


def merge_sections(old: str, new: str) -> str:
    """``old`` with its task sections replaced by those of ``new`` (new ones appended);
    the header stays the first run's, and each section says when it was made."""
    def split(report: str) -> tuple[str, dict[str, str]]:
        head, *sections = report.rstrip("\n").split("\n## ")
        return head, {section.split(":", 1)[0]: "## " + section for section in sections}

    head, sections = split(old)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    for name, section in split(new)[1].items():
        title, body = section.split("\n", 1)
        sections[name] = f"{title}\n\n(Run on its own at commit {commit}, {stamp}.)\n{body}"
    return "\n\n".join([head, *sections.values()])


def main() -> None:
    csv.field_size_limit(sys.maxsize)  # CIF columns are long
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small subsets and few epochs (a smoke run)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results.md")
    parser.add_argument("--only", nargs="*", help="task names to run")
    parser.add_argument("--append", action="store_true",
                        help="put the tasks' sections into --out, replacing sections of the same tasks")
    args = parser.parse_args()
    epochs = 4 if args.quick else None
    tasks = [
        Task("perovskites", "heat_ref", load_perovskites, TrainConfig(members=3, epochs=epochs or 120, patience=15),
             pooling="sum", note="Castelli perovskites, heat of formation per 5-atom cell (eV). "
             "Published CGCNN (Matbench, ~15k training structures): 0.045 eV/cell."),
        Task("phonon-dos", "phonon_dos", load_phonon_dos, TrainConfig(members=3, epochs=epochs or 150, patience=20),
             note="JARVIS phonon DOS, 66 bins normalised to max 1."),
        Task("electronic-dos", "dos", load_electronic_dos, TrainConfig(members=3, epochs=epochs or 80, patience=15, batch_size=8),
             note="50 JARVIS electronic DOS, 300 bins: a smoke test of the representation, no accuracy claim."),
        Task("mof-charges", "charges", load_mof_charges, TrainConfig(members=3, epochs=epochs or 40, patience=8, batch_size=8),
             conserve_total=True, note=f"CoRE-MOF DDEC6 charges (e), the {MOF_COUNT} smallest MOFs, neutrality enforced."),
        Task("mof-charges-mlp", "charges", load_mof_charges,
             TrainConfig(members=3, epochs=epochs or 40, patience=8, batch_size=8), conserve_total=True,
             architecture="neighbour-mlp",
             note="The same MOFs and splits with the neighbour-MLP baseline of Karaguesian et al. (2021)."),
    ]
    if args.only:
        tasks = [task for task in tasks if task.name in args.only]
    started = time.perf_counter()
    with ProcessPoolExecutor(2) as executor:
        for task in tasks:
            run_task(task, args.quick, executor)
    report = render(tasks, args.quick, time.perf_counter() - started)
    if args.append:
        report = merge_sections(args.out.read_text(), report)
    args.out.write_text(report + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
