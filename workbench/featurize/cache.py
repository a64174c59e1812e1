"""Featurized graphs in the store, cached under the featurizer's key.

``featurize_structures`` builds the graphs a featurizer does not have yet (in worker
processes when given an executor; pretrained embeddings here, in batches, by one loaded
model) and writes them one chunk per transaction; running it again, or beside another
run, adds nothing twice. ``load_graphs`` reads them back and refuses nothing silently: a
structure without a graph for the key is reported missing.
"""

from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Engine, exists, select

from workbench.errors import NotFound
from workbench.featurize.featurizer import Featurizer, graph_from_bytes, graph_to_bytes
from workbench.featurize.graph import CrystalGraph, GraphError
from workbench.store.bulk import insert_ignoring_duplicates, one_of
from workbench.store.engine import session_scope
from workbench.store.schema import Featurizer as FeaturizerRow
from workbench.store.schema import Graph, Structure
from workbench.structures.crystal import Crystal

CHUNK_SIZE = 500


@dataclass
class FeaturizeReport:
    key: str
    featurized: int = 0
    already_cached: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)


def featurize_structures(
    engine: Engine,
    featurizer: Featurizer,
    *,
    structure_ids: Iterable[int] | None = None,
    executor: Executor | None = None,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> FeaturizeReport:
    """Build and store the graphs ``featurizer`` lacks, for all or the given structures."""
    report = FeaturizeReport(key=featurizer.key)
    with session_scope(engine) as session:
        insert_ignoring_duplicates(session, FeaturizerRow.__table__, [
            {"key": featurizer.key, "name": featurizer.name, "config": featurizer.config}
        ])
        cached = exists().where(Graph.structure_id == Structure.id, Graph.featurizer_key == featurizer.key)
        query = select(Structure.id, cached.label("cached")).order_by(Structure.id)
        if structure_ids is not None:
            query = query.where(one_of(session, Structure.id, sorted(set(structure_ids))))
        rows = session.execute(query).all()
    todo = [row.id for row in rows if not row.cached]
    report.already_cached = len(rows) - len(todo)
    if on_total:
        on_total(len(todo))
    for start in range(0, len(todo), CHUNK_SIZE):
        chunk = todo[start:start + CHUNK_SIZE]
        with session_scope(engine) as session:
            rows = session.execute(
                select(Structure.id, Structure.lattice, Structure.species, Structure.frac_coords)
                .where(one_of(session, Structure.id, chunk))
            ).all()
        jobs = [(row.id, np.array(row.lattice), tuple(row.species), row.frac_coords, featurizer) for row in rows]
        results = list(executor.map(_featurize, jobs, chunksize=16) if executor else map(_featurize, jobs))
        if featurizer.pretrained is not None:
            results = _embedded(featurizer, jobs, results)
        graph_rows = []
        for structure_id, graph, error in results:
            if error:
                report.failed.append((structure_id, error))
                continue
            graph_rows.append({"featurizer_key": featurizer.key, "structure_id": structure_id,
                               "num_nodes": graph.num_nodes, "num_edges": graph.num_edges,
                               "arrays": graph_to_bytes(graph)})
        with session_scope(engine) as session:
            insert_ignoring_duplicates(session, Graph.__table__, graph_rows)
        report.featurized += len(graph_rows)
        if on_progress:
            on_progress(len(chunk))
    return report


def _featurize(job) -> tuple[int, CrystalGraph | None, str | None]:
    structure_id, lattice, species, frac_coords, featurizer = job
    try:
        graph = featurizer.structure_graph(Crystal(lattice, species, frac_coords))
    except GraphError as error:
        return structure_id, None, str(error)
    return structure_id, graph, None


def _embedded(featurizer: Featurizer, jobs: list, results: list) -> list:
    """``results`` (in place) with the pretrained embeddings added here, in batches, by the
    one model this process loads (worker processes only build the graphs)."""
    done = [index for index, (_, graph, _) in enumerate(results) if graph is not None]
    crystals = [Crystal(*jobs[index][1:4]) for index in done]
    embedded = featurizer.with_embeddings(crystals, [results[index][1] for index in done])
    for index, graph in zip(done, embedded, strict=True):
        structure_id = results[index][0]
        results[index] = (structure_id, None, graph) if isinstance(graph, str) else (structure_id, graph, None)
    return results


class MissingGraphs(NotFound):
    """Structures that have no graph under the featurizer asked for."""


def load_graphs(engine: Engine, featurizer_key: str, structure_ids: Iterable[int]) -> dict[int, CrystalGraph]:
    """The graphs of ``structure_ids`` made by the featurizer ``featurizer_key``."""
    wanted = sorted(set(structure_ids))
    graphs = {}
    with session_scope(engine) as session:
        for start in range(0, len(wanted), CHUNK_SIZE):
            rows = session.execute(
                select(Graph.structure_id, Graph.arrays).where(
                    Graph.featurizer_key == featurizer_key,
                    one_of(session, Graph.structure_id, wanted[start:start + CHUNK_SIZE]),
                )
            )
            graphs.update((row.structure_id, graph_from_bytes(row.arrays)) for row in rows)
    missing = [structure_id for structure_id in wanted if structure_id not in graphs]
    if missing:
        raise MissingGraphs(
            f"{len(missing)} structures have no graph for featurizer {featurizer_key} "
            f"(first: {missing[:5]}); run `workbench featurize` with that featurizer"
        )
    return graphs
