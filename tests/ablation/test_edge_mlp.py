"""An MLP section's rows from their own input nodes (libjax/ablation/edge_mlp.py) against the
general path, one section evaluation per row pattern, on the tiny models of test_edge_forward.py,
with groups, token tiles and blocks small enough that the masks' lists cross them."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from libjax import ablation, pipeline
from libjax.ablation import experiments
from libjax.ablation.edge_mlp import MLPRows
from tests.helpers.edge_cases import tiny_block


@pytest.fixture(scope="module", params=["ln", "llama", "pythia"])
def built(request):
    """A tiny model of each normalisation layout, its LIB graph, tokens and next-token labels."""
    model, tokens = tiny_block(request.param)
    graph = pipeline.build(model, tokens, pipeline.BuildConfig(batch_size=64))
    return model, graph, np.asarray(tokens), np.roll(tokens, -1, axis=1)


@pytest.fixture
def small_sizes(monkeypatch):
    """Groups of 3 rows, tiles of 7 tokens (the last one padded), blocks of 3 and 1 nodes (the
    models' 15 or 17 input nodes: lists of up to 8)."""
    for name, value in (("GROUP", 3), ("TILE", 7), ("BIG", 3), ("SMALL", 1)):
        monkeypatch.setattr(MLPRows, name, value)


def _forwards(ev, graph):
    """The default edge forward of the MLP transition and its general path (no shortcuts, no
    cache)."""
    index = graph.node_layers.index("mlp_in.0")
    a, b = graph.edge_pairs[index]
    args = (ev, index, graph.bases[a].C, graph.bases[a].C_pinv,
            None if b not in graph.bases else (graph.bases[b].C, graph.bases[b].C_pinv))
    fast = ablation.EdgeForward(*args)
    general = ablation.EdgeForward(*args, cache_bytes=0, try_affine=False, try_products=False)
    assert isinstance(fast.rows, MLPRows)
    return fast, general


def _masks(shape, rng):
    """Masks of density 0.05, 0.5 and 0.95 with rows keeping everything, nothing but the constant
    node, and rows keeping exactly half."""
    for p in (0.05, 0.5, 0.95):
        mask = rng.random(shape) < p
        mask[:, 0] = True
        mask[0] = True
        mask[1, 1:] = False
        mask[2] = np.arange(shape[1]) < shape[1] // 2
        yield mask


def test_rows_equal_the_general_path(built, small_sizes):
    """Every density, in float64: the same scores to 1e-10; the lists cross both block sizes,
    the rows several groups; one compiled program for every mask."""
    model, graph, tokens, labels = built
    ev = ablation.Evaluator(model, tokens, labels, "ce_loss", 16, dtype=np.float64)
    fast, general = _forwards(ev, graph)
    trips = []
    for mask in _masks(fast.shape, np.random.default_rng(0)):
        (*_, groups_trips, n_groups), _, _ = fast.rows.plan(mask, np.arange(fast.shape[0]))
        trips.append(np.asarray(groups_trips)[:int(n_groups)])
        assert fast.score(mask) == pytest.approx(general.score(mask), rel=1e-10, abs=1e-12)
    trips = np.concatenate(trips)
    assert (trips[:, 0] >= 2).any() and (trips[:, 1] >= 1).any() and len(trips) >= 3
    assert fast.rows._run._cache_size() == 1


def test_rows_leave_skipped_positions_to_the_model(built, small_sizes):
    """With position 0 left out the ablated rows are the same as the general path's."""
    model, graph, tokens, labels = built
    ev = ablation.Evaluator(model, tokens, labels, "ce_loss", 16, dtype=np.float64,
                            skip_positions=(0,))
    fast, general = _forwards(ev, graph)
    for mask in _masks(fast.shape, np.random.default_rng(1)):
        assert fast.score(mask) == pytest.approx(general.score(mask), rel=1e-10, abs=1e-12)


def test_bisection_is_unchanged(built, small_sizes, monkeypatch):
    """A whole bisection of the MLP transition (masks that differ in a few rows, so most rows
    come from the cache): the same edges required, probes and saved mask as the general path."""
    model, graph, tokens, labels = built
    ev = ablation.Evaluator(model, tokens, labels, "ce_loss", 16, dtype=np.float64)
    pair = graph.edge_pairs[graph.node_layers.index("mlp_in.0")]
    cfg = ablation.Bisect(0.05)
    fast = ablation.edge_ablation(ev, graph, [pair], cfg)[pair[0]]
    monkeypatch.setattr(experiments, "EdgeForward", functools.partial(
        ablation.EdgeForward, try_affine=False, try_products=False))
    general = ablation.edge_ablation(ev, graph, [pair], cfg)[pair[0]]
    assert fast.n_edges_required == general.n_edges_required
    assert list(fast.scores) == list(general.scores)
    np.testing.assert_allclose(list(fast.scores.values()), list(general.scores.values()),
                               rtol=1e-10)
    assert (fast.mask == general.mask).all()
