"""Ablations of the authors' seed-0 modular-addition graphs against the reference's results
(docs/method.md Appendix A): test split, float32, accuracy. The graphs are the reference's own (LIB
and
PCA), so no build is needed; the exhaustive schedules are marked slow."""

from __future__ import annotations

import numpy as np
import pytest

from libjax import ablation
from libjax.analysis import reference
from models.modadd import model as modadd

LAYERS = ("ln1.0", "ln2.0", "unembed", "output")
DELTA = 0.001
REF_EDGES = reference.MODADD_SEED0_EDGES_REQUIRED
REF_NODE = reference.MODADD_SEED0_NODE_ABLATION
FLAT_DOWN_TO, FLAT_SCORE = reference.MODADD_SEED0_FLAT


@pytest.fixture(scope="module")
def ev(shared_data):
    cfg, weights = modadd.load(shared_data / "weights_modadd_seed0.npz")
    tokens, labels = modadd.split_data("test")
    model = modadd.sectioned_model(weights, cfg, dtype=np.float32)
    return ablation.Evaluator(model, tokens, labels,
                              "accuracy", batch_size=99999, dtype=np.float32)


@pytest.fixture(scope="module")
def graphs(shared_data):
    ref = shared_data / "reference"
    return {kind: reference.load_graph(ref / f"ref_graph_modadd_{file}_seed0.npz", LAYERS, kind)
            for kind, file in (("lib", "rib"), ("pca", "pca"))}


def test_unablated_test_accuracy(ev):
    assert ev.base() == pytest.approx(reference.MODADD_SEED0_ACCURACY, abs=1e-7)


def test_lib_node_ablation_matches_appendix_a(ev, graphs):
    points = sorted({k for pts in REF_NODE.values() for k in pts} | {FLAT_DOWN_TO, 60, 129})
    schedule = ablation.Schedule("explicit", specific_points=tuple(points) + (0,))
    results = ablation.node_ablation(ev, graphs["lib"], list(REF_NODE), schedule)
    for name, expected in REF_NODE.items():
        for k, score in expected.items():
            assert results[name][k] == pytest.approx(score, abs=0.01), (name, k)
        for k in (FLAT_DOWN_TO, 60, 129):
            assert results[name][k] == pytest.approx(FLAT_SCORE, abs=0.01), (name, k)
        assert results[name][0] < 0.05  # nothing left: chance level


@pytest.mark.parametrize("kind", ["lib", "pca"])
def test_reference_edge_counts_keep_the_accuracy(ev, graphs, kind):
    """Keeping the reference's number of edges keeps the accuracy within Delta; the bisection's
    answer is checked in full by the slow test below."""
    g = graphs[kind]
    name, out = "ln2.0", "unembed"
    fw = ablation.EdgeForward(ev, 1, g.bases[name].C, g.bases[name].C_pinv,
                              (g.bases[out].C, g.bases[out].C_pinv))
    mask = ablation.edge_mask(g.edges[(name, out)], REF_EDGES[kind][name], free_const_column=True)
    assert fw.score(mask) >= ev.base() - DELTA
    assert fw.score(ablation.edge_mask(g.edges[(name, out)], 8, True)) < ev.base() - DELTA


@pytest.mark.slow
def test_full_node_ablation_curves(ev, graphs):
    schedule = ablation.Schedule("exponential", ablate_every_vec_cutoff=10, exp_base=1.05)
    results = ablation.node_ablation(ev, graphs["lib"], list(REF_NODE), schedule)
    for name, expected in REF_NODE.items():
        assert len(results[name]) == 48
        for k, score in expected.items():
            assert results[name][k] == pytest.approx(score, abs=0.01)
        assert all(abs(s - FLAT_SCORE) < 0.01 for k, s in results[name].items() if k >= 17)
    pca = ablation.node_ablation(ev, graphs["pca"], list(REF_NODE), schedule)
    assert all(abs(s - FLAT_SCORE) < 0.01 for r in pca.values() for k, s in r.items() if k >= 17)


@pytest.mark.slow
def test_edge_bisection_matches_the_reference(ev, graphs):
    required = {}
    for kind, g in graphs.items():
        results = ablation.edge_ablation(ev, g, g.edge_pairs, ablation.Bisect(DELTA, "linear", 1))
        required[kind] = {name: r.n_edges_required for name, r in results.items()}
        for name, n in required[kind].items():
            assert n == pytest.approx(REF_EDGES[kind][name], rel=0.05)
    assert all(required["lib"][n] < required["pca"][n] for n in required["lib"])
