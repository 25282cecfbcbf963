"""Leiden modularity clustering (libjax.analysis.clustering); scripts/cluster.py runs in
test_explorer.py, on the build it shares with the explorer's tests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from libjax.analysis import clustering
from libjax.errors import ConfigError
from tests.helpers import synthetic_graphs

DIMS = {"x": 9, "y": 9, "z": 9}


def planted(seed=0, noise=1e-3):
    """Three layers of 1 constant + 8 directions; directions 1-4 and 5-8 interact only among
    themselves (plus faint noise), so the two blocks are the clusters to find."""
    rng = np.random.default_rng(seed)
    blocks = np.zeros((9, 9))
    blocks[1:5, 1:5] = blocks[5:, 5:] = 1.0
    edges = {pair: (blocks + noise) * rng.uniform(0.5, 1.5, size=(9, 9))
             for pair in (("x", "y"), ("y", "z"))}
    for E in edges.values():
        E[0, :] = E[:, 0] = 50.0  # the constant direction's large edges
    return synthetic_graphs.graph(DIMS, DIMS, seed, edges=edges)


def newman_modularity(graph, membership, norm, gamma=1.0):
    """Weighted undirected modularity at resolution ``gamma``, straight from the definition."""
    layers = list(membership)
    ids = np.concatenate([membership[n] for n in layers])
    offsets = dict(zip(layers, np.cumsum([0] + [len(membership[n]) for n in layers])))
    A = np.zeros((len(ids), len(ids)))
    for a, b in zip(layers[:-1], layers[1:]):
        E = clustering.normalise(graph.edges[(a, b)], norm)
        for o in range(E.shape[0]):
            for i in range(E.shape[1]):
                if ids[offsets[a] + i] >= 0 and ids[offsets[b] + o] >= 0:
                    A[offsets[a] + i, offsets[b] + o] = A[offsets[b] + o, offsets[a] + i] = E[o, i]
    k, m2 = A.sum(axis=1), A.sum()
    same = ids[:, None] == ids[None, :]
    return float(((A - gamma * np.outer(k, k) / m2) * same).sum() / m2)


def test_normalisations_are_the_references():
    E = np.array([[4.0, 0.0], [1.0, 100.0]])
    np.testing.assert_array_equal(clustering.normalise(E, "none"), E)
    np.testing.assert_array_equal(clustering.normalise(E, "sqrt"), [[2, 0], [1, 10]])
    np.testing.assert_allclose(clustering.normalise(E, "abs"), E / 105)
    np.testing.assert_allclose(clustering.normalise(E, "max"), E / 100)
    np.testing.assert_allclose(clustering.normalise(E, "log", eps=1.0), [[np.log10(4), 0], [0, 2]])
    with pytest.raises(ConfigError, match="needs eps > 0"):
        clustering.normalise(E, "log")
    with pytest.raises(ConfigError, match="unknown edge normalisation 'cube'"):
        clustering.normalise(E, "cube")


def test_constant_directions_are_those_of_centred_lib_and_pca_bases():
    for kind, center, want in (("lib", True, True), ("pca", True, True), ("neuron", True, False),
                               ("lib", False, False)):
        g = synthetic_graphs.graph({"x": 3, "y": 3}, {"x": 3}, kind=kind, center=center)
        assert clustering.has_constant_direction(g, "x") == want, (kind, center)
        assert not clustering.has_constant_direction(g, "y")  # no basis: neurons


def test_leiden_finds_the_planted_blocks():
    graph = planted()
    result = clustering.cluster(graph, norm="sqrt", include_output=True)
    for name in DIMS:
        ids = result.membership[name]
        assert ids[0] == -1  # constant directions are left out
        assert len(set(ids[1:5])) == 1 and len(set(ids[5:9])) == 1 and ids[1] != ids[5]
    assert result.n_clusters == 2 and list(result.sizes) == [12, 12]
    assert result.modularity == pytest.approx(newman_modularity(graph, result.membership, "sqrt"),
                                              abs=1e-12)
    assert result.modularity > 0.45  # two clean halves: close to the maximum of 1/2


def test_resolution_seed_and_layers():
    graph = planted(noise=0.05)
    one = clustering.cluster(graph, gamma=1.0, seed=4)
    again = clustering.cluster(graph, gamma=1.0, seed=4)
    for name in one.membership:
        np.testing.assert_array_equal(one.membership[name], again.membership[name])
    fine = clustering.cluster(graph, gamma=8.0, seed=4)
    assert fine.n_clusters + (fine.sizes == 1).sum() > one.n_clusters  # more, smaller clusters
    assert fine.quality == pytest.approx(
        newman_modularity(graph, fine.membership, "sqrt", gamma=8.0), abs=1e-12)
    two = clustering.cluster(graph, node_layers=["x", "y"])
    assert set(two.membership) == {"x", "y"}
    with pytest.raises(ConfigError, match="consecutive"):
        clustering.cluster(graph, node_layers=["x", "z"])
    with pytest.raises(ConfigError, match="gamma must be > 0"):
        clustering.cluster(graph, gamma=0)


def test_log_normalisation_from_an_edge_ablation():
    graph = planted()
    masks = {"x": graph.edges[("x", "y")] > 0.9, "y": graph.edges[("y", "z")] > 0.9}
    eps = clustering.eps_from_edge_ablation(graph, masks)
    for (a, _b), E in graph.edges.items():
        assert eps[a] == E[1:, 1:][masks[a][1:, 1:]].min()  # constant edges left out
    result = clustering.cluster(graph, norm="log", eps=eps)
    first = {c for n in DIMS for c in result.membership[n][1:5]}
    second = {c for n in DIMS for c in result.membership[n][5:]}
    assert not first & second  # the noise (below eps: weight 0) never joins the blocks
    assert result.settings["eps"] == eps


def test_stored_with_the_build(tmp_path):
    result = clustering.cluster(planted())
    assert clustering.load(tmp_path) is None
    path = clustering.save(result, tmp_path)
    assert path == tmp_path / "analysis" / "clustering.json"
    back = clustering.load(tmp_path)
    assert back.modularity == result.modularity and back.settings == result.settings
    for name in result.membership:
        np.testing.assert_array_equal(back.membership[name], result.membership[name])
    assert json.loads(path.read_text())["n_clusters"] == 2
    lines = clustering.describe(result, {"x": list("abcdefghi"), "y": list("abcdefghi")})
    assert lines[0].startswith("2 clusters") and "labels:" in lines[1]
    paths = clustering.figure(planted(), result, tmp_path / "fig")
    assert all(p.stat().st_size > 1000 for p in paths)
