"""Benchmark candidate generation: 100,000 decorations of one prototype, generated,
deduplicated and stored, on SQLite and PostgreSQL.

Run from the repository root:

    .venv/bin/python benchmarks/generate_benchmark.py [--out benchmarks/generate.md]

The prototype is the cubic perovskite of pymatgen's AFLOW library (``AB3C_cP5_221_a_c_b``,
CaTiO3, 5 sites); its Ca, Ti and O sites each take one of 50, 50 and 40 elements (the
elements H to Bi without the noble gases), 100,000 decorations in all. Each backend gets a
fresh store; the generation runs twice, and the second run must add nothing. A
charge-balance filter pass over the same decorations is timed on its own.

PostgreSQL databases ``wbgen_<pid>`` are created on ``--pg-url``'s server and dropped at
the end; the SQLite file lives in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from ase.data import chemical_symbols
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from workbench import provenance
from workbench.generate.prototypes import resolve_prototype
from workbench.generate.store import store_decorations
from workbench.generate.substitute import ChargeBalance, count_explicit, explicit_substitutions
from workbench.store import migrate
from workbench.store.engine import make_engine, session_scope
from workbench.store.schema import Structure, StructureLineage, StructureSource

PROTOTYPE = "aflow:AB3C_cP5_221_a_c_b"
NOBLE_GASES = {"He", "Ne", "Ar", "Kr", "Xe", "Rn"}
ELEMENTS = [symbol for symbol in chemical_symbols[1:84] if symbol not in NOBLE_GASES]  # H..Bi


def sites(count_a: int, count_b: int, count_x: int) -> dict[str, list[str]]:
    return {"Ca": ELEMENTS[:count_a], "Ti": ELEMENTS[-count_b:], "O": ELEMENTS[10:10 + count_x]}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_backend(url: str, choices: dict[str, list[str]]) -> list[dict]:
    engine = make_engine(url)
    migrate.upgrade(engine)
    rows = []
    try:
        prototype = resolve_prototype(engine, PROTOTYPE)
        for attempt in ("fresh store", "again (idempotent)"):
            start, cpu = time.perf_counter(), cpu_seconds()
            report = store_decorations(engine, prototype, explicit_substitutions(choices))
            seconds = time.perf_counter() - start
            with session_scope(engine) as session:
                counts = {
                    "structures": session.scalar(select(func.count()).select_from(Structure)),
                    "sources": session.scalar(select(func.count()).select_from(StructureSource)),
                    "lineage": session.scalar(select(func.count()).select_from(StructureLineage)),
                }
            rows.append({"run": attempt, "seconds": seconds, "cpu": cpu_seconds() - cpu,
                         "report": report, "counts": counts})
            print(attempt, f"{seconds:.1f} s", report, counts, file=sys.stderr, flush=True)
    finally:
        engine.dispose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results as markdown here")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--sizes", default="50,50,40", help="choices on the Ca, Ti and O sites")
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    choices = sites(*(int(size) for size in args.sizes.split(",")))
    total = count_explicit(choices)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]

    balance = ChargeBalance()
    start = time.perf_counter()
    balanced = sum(balance.crystal(substitution.apply(crystal))
                   for crystal in [_prototype_crystal()] for substitution in explicit_substitutions(choices))
    filter_seconds = time.perf_counter() - start

    results: dict[str, list[dict]] = {}
    backends = args.backends.split(",")
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory() as folder:
            results["SQLite"] = run_backend(f"sqlite:///{folder}/generate.db", choices)
    if "postgresql" in backends:
        name = f"wbgen_{os.getpid()}"
        with psycopg.connect(args.pg_url, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
            try:
                results["PostgreSQL"] = run_backend(
                    make_url(args.pg_url).set(database=name).render_as_string(hide_password=False), choices)
            finally:
                admin.execute(f"DROP DATABASE {name} WITH (FORCE)")

    lines = [
        "# Candidate generation benchmark",
        "",
        (f"What was measured (one run of `benchmarks/generate_benchmark.py`): {total:,} decorations "
        f"of the cubic perovskite `{PROTOTYPE}` (CaTiO3, 5 sites), {len(choices['Ca'])} elements on "
        f"the Ca site x {len(choices['Ti'])} on Ti x {len(choices['O'])} on O (H to Bi without the "
        "noble gases), generated, described (dedup key, fingerprint, space group once per pattern "
        "of equal elements), matched against the store and stored with their lineage, one "
        "transaction per 2,000 decorations, in one process, into a fresh store; then the same "
        "generation again, which must add nothing."),
        "",
        "- Command: `.venv/bin/python benchmarks/generate_benchmark.py --out benchmarks/generate.md`",
        f"- {provenance.current().line(wall_seconds=time.perf_counter() - started)}",
        "",
        "| Backend | Run | Decorations | Seconds | Decorations/s | CPU s (this process) | New structures | Matched | Generated before | Store after: structures / sources / lineage |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for backend, rows in results.items():
        for row in rows:
            report, counts = row["report"], row["counts"]
            lines.append(
                f"| {backend} | {row['run']} | {report.decorations:,} | {row['seconds']:.1f} | "
                f"{report.decorations / row['seconds']:,.0f} | {row['cpu']:.1f} | {report.new_structures:,} | "
                f"{report.matched:,} | {report.known:,} | {counts['structures']:,} / {counts['sources']:,} / {counts['lineage']:,} |")
    lines += [
        "",
        (f"- Charge-balance filter alone (pymatgen's oxidation-state rule, `ChargeBalance`): {total:,} "
        f"decorations tested in {filter_seconds:.1f} s; {balanced:,} are charge-balanced."),
        ("- The store holds one more structure than new decorations: the prototype itself, stored "
        "first under the source `aflow-prototype`; each decoration's lineage names it. The second "
        "run skips every decoration, stored under its external id already, before describing it."),
        (f"- Load average (1 min) of the machine at the start and the end: {load_start:.1f} / "
         f"{os.getloadavg()[0]:.1f}: other processes shared the 2 cores, so wall time exceeds this "
         "process's CPU time."),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)


def _prototype_crystal():
    from workbench.generate.prototypes import aflow_library

    label = PROTOTYPE.removeprefix("aflow:")
    return next(entry.crystal for entry in aflow_library() if entry.label == label)


if __name__ == "__main__":
    main()
