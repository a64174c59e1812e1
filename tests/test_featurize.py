"""Crystal graphs: periodic edges kept apart, k nearest with ties, triplets, batching, cache."""

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.neighborlist import neighbor_list
from sqlalchemy import func, select
from torch_geometric.data import Batch

from workbench.featurize import (
    Featurizer,
    GraphConfig,
    GraphError,
    bond_angle_triplets,
    featurize_structures,
    load_graphs,
)
from workbench.featurize.atom_features import FEATURE_SIZE, cgcnn_feature_table
from workbench.featurize.cache import MissingGraphs
from workbench.featurize.data import graph_to_data
from workbench.io.importer import import_file
from workbench.io.readers import ReadOptions
from workbench.store.engine import session_scope
from workbench.store.schema import Graph
from workbench.structures.crystal import Crystal


def test_one_atom_bcc_keeps_its_self_image_edges():
    crystal = Crystal.from_ase(bulk("Fe", "bcc", a=2.87))
    graph = Featurizer().graph_of(crystal)
    assert graph.num_nodes == 1 and graph.num_edges == 12
    assert (graph.edge_index == 0).all()
    assert len({tuple(image) for image in graph.edge_image}) == 12  # 12 distinct images
    np.testing.assert_allclose(graph.edge_distance[:8], 2.87 * np.sqrt(3) / 2)
    np.testing.assert_allclose(np.linalg.norm(graph.edge_vector, axis=1), graph.edge_distance)
    with_ties = Featurizer(GraphConfig(keep_ties=True)).graph_of(crystal)
    assert with_ties.num_edges == 14  # 8 nearest + the whole second shell of 6


def test_k_nearest_agree_with_ase_on_a_triclinic_cell():
    rng = np.random.default_rng(0)
    atoms = bulk("NaCl", "rocksalt", a=5.6) * (2, 1, 1)
    atoms.set_cell(atoms.cell[:] + rng.normal(scale=0.3, size=(3, 3)), scale_atoms=True)
    atoms.rattle(0.05, seed=1)
    graph = Featurizer().graph_of(Crystal.from_ase(atoms))
    centers, distances = neighbor_list("id", atoms, 8.0)
    for atom in range(len(atoms)):
        expected = np.sort(distances[centers == atom])[:12]
        np.testing.assert_allclose(np.sort(graph.edge_distance[graph.edge_index[1] == atom]), expected)
    keys = {(s, t, *image) for s, t, image in zip(*graph.edge_index, graph.edge_image, strict=True)}
    assert len(keys) == graph.num_edges  # every (source, target, image) once


def test_short_of_neighbours_raises_the_cutoff_once_then_refuses():
    sparse = Crystal(np.eye(3) * 12.0, ("Ar",), np.zeros((1, 3)))
    with pytest.raises(GraphError, match="fewer than 12 neighbours within 16.0 Å"):
        Featurizer().graph_of(sparse)
    graph = Featurizer(GraphConfig(max_cutoff=17.0)).graph_of(sparse)  # 6 at 12 Å, 12 at 16.97 Å
    assert graph.num_edges == 12 and graph.edge_distance.max() < 17.0


def assert_triplets_are_angles_at_shared_targets(graph, triplet_index, cosines):
    first, second = triplet_index
    assert (graph.edge_index[1][first] == graph.edge_index[1][second]).all() and (first != second).all()
    vectors = graph.edge_vector
    expected = np.einsum("ij,ij->i", vectors[first], vectors[second]) / (
        graph.edge_distance[first] * graph.edge_distance[second])
    np.testing.assert_allclose(cosines, expected, atol=1e-12)


def test_triplets_pair_edges_at_each_centre():
    graph = Featurizer().graph_of(Crystal.from_ase(bulk("Si", "diamond", a=5.43)))
    triplet_index, cosines = bond_angle_triplets(graph.edge_index, graph.edge_vector)
    assert triplet_index.shape == (2, 2 * 12 * 11)
    assert_triplets_are_angles_at_shared_targets(graph, triplet_index, cosines)
    first, second = triplet_index
    nearest = graph.edge_distance[first] < 2.4
    tetrahedral = nearest & (graph.edge_distance[second] < 2.4)
    np.testing.assert_allclose(cosines[tetrahedral], -1 / 3, atol=1e-9)


def test_batching_shifts_edges_by_nodes_and_triplets_by_edges():
    table = cgcnn_feature_table()
    graphs = [Featurizer().graph_of(Crystal.from_ase(bulk(symbol, "fcc", a=a)))
              for symbol, a in (("Cu", 3.6), ("Al", 4.05))]
    graphs.append(Featurizer().graph_of(Crystal.from_ase(bulk("NaCl", "rocksalt", a=5.6))))
    data = [graph_to_data(graph, table, triplets=True) for graph in graphs]
    batch = Batch.from_data_list(data)
    assert batch.x.shape == (4, FEATURE_SIZE)
    edge_offset, node_offset = 0, 0
    for index, item in enumerate(data):
        part = batch.get_example(index)
        assert torch.equal(part.triplet_index, item.triplet_index)
        rows = slice(batch.ptr[index], batch.ptr[index + 1])
        assert torch.equal(batch.x[rows], item.x)
        edges = batch.edge_index[:, edge_offset:edge_offset + item.num_edges]
        assert torch.equal(edges, item.edge_index + node_offset)
        edge_offset += item.num_edges
        node_offset += item.num_nodes
    assert int(batch.triplet_index.max()) < batch.edge_index.shape[1]


def test_cgcnn_features_encode_oxygen():
    table = cgcnn_feature_table()
    oxygen = table[8]
    assert oxygen.shape == (FEATURE_SIZE,) and oxygen.sum() == 9  # one hot per property
    assert oxygen[15] == 1 and oxygen[18 + 1] == 1  # group 16, period 2
    assert table[2][18 + 7 + 12 + 4: 18 + 7 + 12 + 4 + 10].sum() == 0  # He: no electronegativity


def test_key_follows_the_config():
    assert Featurizer().key == Featurizer(GraphConfig()).key
    assert len({Featurizer().key, Featurizer(GraphConfig(cutoff=6.0)).key,
                Featurizer(GraphConfig(max_neighbors=16)).key, Featurizer(GraphConfig(keep_ties=True)).key}) == 4


def test_graphs_are_cached_per_featurizer(engine, shared_data):
    import_file(engine, shared_data / "jarvis_dos50" / "id_prop.csv", source="jarvis", options=ReadOptions())
    default, wider = Featurizer(), Featurizer(GraphConfig(max_neighbors=16))
    first = featurize_structures(engine, default)
    assert (first.featurized, first.already_cached, first.failed) == (50, 0, [])
    again = featurize_structures(engine, default)
    assert (again.featurized, again.already_cached) == (0, 50)
    assert featurize_structures(engine, wider).featurized == 50  # a new config never reuses graphs
    with session_scope(engine) as session:
        counts = dict(session.execute(select(Graph.featurizer_key, func.count()).group_by(Graph.featurizer_key)).all())
        some_ids = list(session.scalars(select(Graph.structure_id).limit(3)))
    assert counts == {default.key: 50, wider.key: 50}

    graphs = load_graphs(engine, default.key, some_ids)
    assert all(graph.edge_index.shape[1] == 12 * graph.num_nodes for graph in graphs.values())
    assert all(graph.edge_index.shape[1] == 16 * graph.num_nodes
               for graph in load_graphs(engine, wider.key, some_ids).values())
    with pytest.raises(MissingGraphs, match="run `workbench featurize`"):
        load_graphs(engine, Featurizer(GraphConfig(cutoff=5.0)).key, some_ids)


def test_featurize_cli(run_cli, engine, shared_data):
    run_cli("import", shared_data / "jarvis_dos50", "--jobs", "1")
    result = run_cli("featurize", "--jobs", "2")
    assert "50 graphs built, 0 already cached, 0 failed" in result.output
    assert "0 graphs built, 50 already cached" in run_cli("featurize", "--jobs", "1").output


def test_triplets_with_kept_ties_and_uneven_degrees():
    coords = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    srtio3 = Crystal(np.eye(3) * 3.905, ("Sr", "Ti", "O", "O", "O"), coords)
    graph = Featurizer(GraphConfig(keep_ties=True)).graph_of(srtio3)
    degree = np.bincount(graph.edge_index[1])
    assert len(set(degree.tolist())) > 1  # whole shells: Sr 12, Ti 6 + 8 = 14, ...
    triplet_index, cosines = bond_angle_triplets(graph.edge_index, graph.edge_vector)
    assert triplet_index.shape[1] == int((degree * (degree - 1)).sum())
    assert_triplets_are_angles_at_shared_targets(graph, triplet_index, cosines)
