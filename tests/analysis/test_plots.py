"""Plots: ablation curves and interaction graphs are written (PNG and SVG) from hand-made
results and graphs; the edge selection draws what it should."""

from __future__ import annotations

import numpy as np
import pytest

from libjax import ablation
from libjax.analysis import plots
from libjax.basis import Basis
from libjax.storage.graph import Graph

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _written(paths):
    assert [p.suffix for p in paths] == [".png", ".svg"]
    assert paths[0].read_bytes()[:8] == PNG_MAGIC
    assert b"<svg" in paths[1].read_bytes()[:2000]


def _node_record(basis, drop):
    results = {"a": {n: min(1.0, n / drop) for n in range(10, -1, -1)},
               "b": {n: min(1.0, n / (drop + 2)) for n in range(8, -1, -1)}}
    return ablation.node_record(results, 1.0, {"ablation_type": "lib", "graph_basis": basis,
                                               "metric": "accuracy"}, 0.1)


def _edge_record(basis, need):
    mask = np.zeros((3, 4), bool)
    mask[:, 0] = True
    results = {"a": ablation.EdgeResult({20: 1.0, 10: 0.99, need: 0.999, 2: 0.5}, need, mask),
               "b": ablation.EdgeResult({20: 1.0, need: 0.9995, 3: 0.998}, need, mask)}
    return ablation.edge_record(results, 1.0, {
        "ablation_type": "edge", "graph_basis": basis, "metric": "accuracy",
        "pairs": ["a->b", "b->c"],
        "schedule": {"score_target_difference": 0.001}}, 0.1)


@pytest.mark.filterwarnings("error")  # e.g. matplotlib's "constrained_layout not applied"
def test_ablation_curves(tmp_path):
    _written(plots.ablation_curves([_node_record("lib", 4), _node_record("pca", 6)],
                                   tmp_path / "node"))
    _written(plots.ablation_curves([_edge_record("lib", 5), _edge_record("pca", 7)],
                                   tmp_path / "edge", labels=["mine", "theirs"]))
    with pytest.raises(ValueError, match="node and edge"):
        plots.ablation_curves([_node_record("lib", 4), _edge_record("lib", 5)], tmp_path / "x")


def test_edge_record_masks_round_trip():
    record = _edge_record("lib", 5)
    mask = ablation.required_masks(record)["a"]
    assert mask.shape == (3, 4) and mask[:, 0].all() and not mask[:, 1:].any()


def test_strongest_edges():
    e = np.array([[9.0, 1.0, 2.0], [9.0, 3.0, 0.0], [9.0, 0.5, 4.0]])
    top = plots.strongest_edges(e, 2)
    np.testing.assert_array_equal(np.argwhere(top), [[1, 1], [2, 2]])  # not the const column
    assert plots.strongest_edges(e, 2, include_const=True)[:, 0].sum() == 2
    assert plots.strongest_edges(e, 100).sum() == 5  # all positive non-const edges
    # With at most one node per side, edges that would add a second node are skipped.
    np.testing.assert_array_equal(np.argwhere(plots.strongest_edges(e, 3, max_nodes=1)), [[2, 2]])
    mask = np.zeros_like(e, bool)
    mask[0, 1] = mask[1, 1] = True
    np.testing.assert_array_equal(np.argwhere(plots.strongest_edges(e, 100, mask=mask)),
                                  [[0, 1], [1, 1]])


@pytest.mark.filterwarnings("error")
def test_interaction_graph(tmp_path):
    rng = np.random.default_rng(0)
    bases = {name: Basis(C=np.eye(5)[:, :4], C_pinv=np.eye(5)[:4], W=np.eye(5)[:, :4],
                         W_pinv=np.eye(5)[:4], Lambda=np.array([10.0, 4.0, 2.0, 1.0]))
             for name in ("x", "y")}
    edges = {("x", "y"): rng.random((4, 4)), ("y", "out"): rng.random((3, 4))}
    g = Graph(node_layers=("x", "y", "out"), bases=bases, edges=edges, means={}, grams={},
              orig_dims={"x": 5, "y": 5, "out": 3}, config={"basis": "lib", "center": True})
    _written(plots.interaction_graph(g, tmp_path / "g", n_edges=3))
    labels = {"x": ["const", "a 1", "b 2", "a+b 3"], "y": ["const", "a+b 1", "a+b 2", "mixed"]}
    masks = {"x": np.eye(4, dtype=bool)}
    _written(plots.interaction_graph(g, tmp_path / "g2", masks=masks, labels=labels))
