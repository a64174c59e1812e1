"""Crystal graphs: periodic edges kept apart, k nearest with ties, triplets, batching, cache,
orbital field matrices."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list
from sqlalchemy import func, select
from torch_geometric.data import Batch

from tests.conftest import JARVIS_DOS, perovskite_rows, write_csv
from tests.dft_helpers import store_crystals
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
from workbench.featurize.orbital_field import DESCRIPTOR_SIZE, valence_table
from workbench.io.importer import import_file
from workbench.io.readers import ReadOptions
from workbench.io.structure_text import parse_structure_text
from workbench.store.engine import session_scope
from workbench.store.schema import Graph
from workbench.store.types import arrays_from_bytes
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


def test_graphs_are_cached_per_featurizer(engine):
    import_file(engine, JARVIS_DOS / "id_prop.csv", source="jarvis", options=ReadOptions())
    default, wider = Featurizer(), Featurizer(GraphConfig(max_neighbors=16))
    first = featurize_structures(engine, default)
    assert (first.featurized, first.already_cached, first.failed) == (20, 0, [])
    again = featurize_structures(engine, default)
    assert (again.featurized, again.already_cached) == (0, 20)
    assert featurize_structures(engine, wider).featurized == 20  # a new config never reuses graphs
    with session_scope(engine) as session:
        counts = dict(session.execute(select(Graph.featurizer_key, func.count()).group_by(Graph.featurizer_key)).all())
        some_ids = list(session.scalars(select(Graph.structure_id).limit(3)))
    assert counts == {default.key: 20, wider.key: 20}

    graphs = load_graphs(engine, default.key, some_ids)
    assert all(graph.edge_index.shape[1] == 12 * graph.num_nodes for graph in graphs.values())
    assert all(graph.edge_index.shape[1] == 16 * graph.num_nodes
               for graph in load_graphs(engine, wider.key, some_ids).values())
    with pytest.raises(MissingGraphs, match="run `workbench featurize`"):
        load_graphs(engine, Featurizer(GraphConfig(cutoff=5.0)).key, some_ids)


def test_featurize_cli(run_cli, engine):
    run_cli("import", JARVIS_DOS, "--jobs", "1")
    result = run_cli("featurize", "--jobs", "2")
    assert "20 graphs built, 0 already cached, 0 failed" in result.output
    assert "0 graphs built, 20 already cached" in run_cli("featurize", "--jobs", "1").output


def test_triplets_with_kept_ties_and_uneven_degrees():
    coords = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    srtio3 = Crystal(np.eye(3) * 3.905, ("Sr", "Ti", "O", "O", "O"), coords)
    graph = Featurizer(GraphConfig(keep_ties=True)).graph_of(srtio3)
    degree = np.bincount(graph.edge_index[1])
    assert len(set(degree.tolist())) > 1  # whole shells: Sr 12, Ti 6 + 8 = 14, ...
    triplet_index, cosines = bond_angle_triplets(graph.edge_index, graph.edge_vector)
    assert triplet_index.shape[1] == int((degree * (degree - 1)).sum())
    assert_triplets_are_angles_at_shared_targets(graph, triplet_index, cosines)


def test_valence_vectors_mark_the_subshells_outside_the_noble_gas_core():
    table = valence_table()
    assert table.shape[1] == 32
    assert np.flatnonzero(table[1]).tolist() == [0]  # H 1s1
    assert np.flatnonzero(table[26]).tolist() == [1, 2 + 6 + 5]  # Fe [Ar] 3d6 4s2
    assert np.flatnonzero(table[31]).tolist() == [1, 2, 2 + 6 + 9]  # Ga [Ar] 3d10 4s2 4p1
    assert np.flatnonzero(table[82]).tolist() == [1, 2 + 1, 2 + 6 + 9, 2 + 6 + 10 + 13]  # Pb 4f14 5d10 6s2 6p2


def test_orbital_field_matrices_of_rock_salt():
    a = 5.64
    ofm = Featurizer(atom_features="ofm")
    graph = ofm.graph_of(Crystal.from_ase(bulk("NaCl", "rocksalt", a=a)))
    data = graph_to_data(graph, ofm.feature_table())
    assert data.x.shape == (2, ofm.atom_feature_size) == (2, DESCRIPTOR_SIZE + FEATURE_SIZE)
    sodium, chlorine = valence_table()[[11, 17]]
    # Each ion's Voronoi cell is a cube whose six faces (equal solid angles) face the other ion.
    np.testing.assert_allclose(graph.orbital_field, np.stack([chlorine, sodium]) * 6 / (a / 2), rtol=1e-5)
    expected = np.outer(sodium, chlorine * 6 / (a / 2)).ravel()
    np.testing.assert_allclose(data.x[0, :1024].numpy(), expected, rtol=1e-5)
    assert torch.equal(data.x[0, 1024:DESCRIPTOR_SIZE], torch.from_numpy(sodium))
    assert torch.equal(data.x[0, DESCRIPTOR_SIZE:], torch.from_numpy(cgcnn_feature_table()[11]))
    assert graph_to_data(Featurizer().graph_of(Crystal.from_ase(bulk("NaCl", "rocksalt", a=a))),
                         Featurizer().feature_table()).x.shape == (2, FEATURE_SIZE)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_ofm_featurizer_has_its_own_key_and_caches_the_orbital_field(engine, tmp_path):
    write_csv(tmp_path / "perov.csv", perovskite_rows(4), ["material_id", "cif", "heat_ref"])
    import_file(engine, tmp_path / "perov.csv", source="castelli", options=ReadOptions())
    default, ofm = Featurizer(), Featurizer(atom_features="ofm")
    assert ofm.key != default.key and ofm.config["atom_features"] == "ofm"
    assert featurize_structures(engine, ofm).featurized == 4
    featurize_structures(engine, default)
    with session_scope(engine) as session:
        ids = list(session.scalars(select(Graph.structure_id).distinct()))
        plain = session.scalar(select(Graph.arrays).where(Graph.featurizer_key == default.key).limit(1))
    cached = load_graphs(engine, ofm.key, ids)
    assert all(graph.orbital_field.shape == (graph.num_nodes, 32) and graph.orbital_field.any()
               for graph in cached.values())
    assert all(graph.orbital_field is None for graph in load_graphs(engine, default.key, ids).values())
    assert "orbital_field" not in arrays_from_bytes(plain)  # other featurizers' graphs as before
    crystal = parse_structure_text(perovskite_rows(1)[0]["cif"], "cif")[0]
    np.testing.assert_array_equal(cached[min(ids)].orbital_field, ofm.graph_of(crystal).orbital_field)


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("atom_features", ["cgcnn", "ofm"])
def test_an_element_beyond_the_feature_tables_fails_its_structure_alone(engine, atom_features):
    """The store takes every element to Og; the atom-feature tables end at Fm (Z = 100)."""
    ids = store_crystals(engine, {"Cu": bulk("Cu", a=3.6), "Og": Atoms("Og", cell=np.eye(3) * 3.5, pbc=True)})
    report = featurize_structures(engine, Featurizer(atom_features=atom_features))
    assert report.featurized == 1 and [structure_id for structure_id, _ in report.failed] == [ids["Og"]]
    assert "Og" in report.failed[0][1]
