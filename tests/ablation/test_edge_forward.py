"""The edge-masked forward's shortcuts (docs/method.md 3.3), masked products for the normalisation
halves, MLP and attention rows from their own input nodes, against its general path, one section
evaluation per row pattern, on tiny LayerNorm, Llama- and Pythia-shaped models."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from libjax import ablation, pipeline
from libjax.ablation import experiments
from libjax.ablation.edge_attention import AttentionRows
from libjax.ablation.edge_mlp import MLPRows
from tests.helpers.edge_cases import edge_masks, tiny_block


@pytest.fixture(scope="module", params=["ln", "llama", "pythia"])
def built(request):
    """A tiny model of each normalisation layout, its LIB graph and next-token labels."""
    model, tokens = tiny_block(request.param)
    graph = pipeline.build(model, tokens, pipeline.BuildConfig(batch_size=64))
    labels = np.roll(tokens, -1, axis=1)
    ev = ablation.Evaluator(model, tokens, labels, "ce_loss", 16, dtype=np.float64)
    return request.param, model, graph, np.asarray(tokens), labels, ev


def _normalisations(graph):
    """The indices of the transitions out of a normalisation's halves."""
    return [i for i, (a, _) in enumerate(graph.edge_pairs) if a.startswith(("ln1", "ln2"))]


def _forwards(ev, graph, index, in_basis=None, out_basis=None):
    """The default edge forward and the general path (no shortcuts, no cache) of one pair."""
    a, b = graph.edge_pairs[index]
    c_in = in_basis or (graph.bases[a].C, graph.bases[a].C_pinv)
    c_out = out_basis or (None if b not in graph.bases else
                          (graph.bases[b].C, graph.bases[b].C_pinv))
    fast = ablation.EdgeForward(ev, index, *c_in, c_out)
    general = ablation.EdgeForward(ev, index, *c_in, c_out, cache_bytes=0, try_affine=False,
                                   try_products=False)
    return fast, general


def test_products_give_every_normalisation_output_and_all_but_the_statistic(built):
    """Which output nodes the masked products give: all of a normalisation's second half, and
    of its first half all whose ``C_out`` column does not read the statistic coordinate."""
    _, _, graph, _, _, ev = built
    for index, (a, b) in enumerate(graph.edge_pairs):
        fast = ablation.EdgeForward(ev, index, graph.bases[a].C, graph.bases[a].C_pinv,
                                    None if b not in graph.bases else
                                    (graph.bases[b].C, graph.bases[b].C_pinv))
        rows = set() if fast.products is None else set(fast.products[0].tolist())
        if b not in graph.bases:  # the unrotated last layer: the MLP's residual coordinates
            continue
        c_out = np.asarray(graph.bases[b].C)
        if a.startswith(("ln1_out", "ln2_out")):
            assert rows == set(range(c_out.shape[1])), a
        elif a.startswith(("ln1.", "ln2.")):
            reads_stat = set(np.flatnonzero(c_out[0] != 0).tolist())
            assert 1 <= len(reads_stat) < c_out.shape[1]
            assert rows == set(range(c_out.shape[1])) - reads_stat, a
        elif a.startswith("attn_in"):  # attention mixes positions: never products
            assert not rows
        if a.startswith("mlp_in"):  # the MLP's rows from their own input nodes
            assert isinstance(fast.rows, MLPRows)
        elif a.startswith("attn_in"):  # the attention's likewise
            assert isinstance(fast.rows, AttentionRows)
        else:
            assert fast.rows is None


# the heaviest cases on one layout by default (Llama: GQA, rotary, RMSNorm); the others with -m slow
ONE_LAYOUT = [pytest.param(name, marks=() if name == "llama" else pytest.mark.slow)
              for name in ("ln", "llama", "pythia")]


@pytest.mark.parametrize("built", ONE_LAYOUT, indirect=True)
def test_products_equal_the_general_path(built):
    """Every transition with a shortcut, masks of every density: the scores of the default
    forward (masked products, MLP and attention rows, row loop, cache) equal one section
    evaluation per row pattern to 1e-10."""
    _, _, graph, _, _, ev = built
    rng = np.random.default_rng(0)
    for index, _ in enumerate(graph.edge_pairs):
        fast, general = _forwards(ev, graph, index)
        if fast.products is None and fast.rows is None:
            continue
        for mask in edge_masks(fast.shape, rng):
            assert fast.score(mask) == pytest.approx(general.score(mask), rel=1e-10, abs=1e-12)


def test_products_equal_the_general_path_in_kl(built):
    """The same with the KL divergence to the unablated model, 0 where everything is kept."""
    _, model, graph, tokens, labels, _ = built
    ev = ablation.Evaluator(model, tokens, labels, "kl", 16, dtype=np.float64)
    index = graph.node_layers.index("ln1_out.0")
    fast, general = _forwards(ev, graph, index)
    assert abs(fast.score(np.ones(fast.shape, bool))) < 1e-12
    for mask in edge_masks(fast.shape, np.random.default_rng(4)):
        assert fast.score(mask) == pytest.approx(general.score(mask), rel=1e-10)


def test_products_in_random_bases_reach_the_clamped_statistic(built):
    """Random orthogonal bases on both sides of a normalisation's second half mix the statistic
    with every other direction, so masks drive it to zero or below (the clamp): the products
    still give every output node and equal the general path."""
    _, _, graph, _, _, ev = built
    rng = np.random.default_rng(1)
    index = graph.node_layers.index("ln2_out.0")
    d_in, d_out = graph.orig_dims["ln2_out.0"], graph.orig_dims["mlp_in.0"]
    q_in = np.linalg.qr(rng.standard_normal((d_in, d_in)))[0]
    q_out = np.linalg.qr(rng.standard_normal((d_out, d_out)))[0]
    fast, general = _forwards(ev, graph, index, (q_in, q_in.T), (q_out, q_out.T))
    assert len(fast.products[0]) == d_out
    acts = np.concatenate([np.asarray(a) for a in ev.acts(index)]).reshape(-1, d_in)
    for mask in edge_masks(fast.shape, rng):
        stat = ((acts @ q_in)[:, None, :] * mask[None]) @ q_in.T[:, 0]
        assert (stat <= 0).any()
        assert fast.score(mask) == pytest.approx(general.score(mask), rel=1e-10)


@pytest.mark.parametrize("built", ["ln"], indirect=True)
def test_float32_products_agree_with_the_general_path(built):
    """In the paper's float32 evaluation the two paths round differently, to float32's
    precision (one model: the paths are those of the float64 tests)."""
    _, model, graph, tokens, labels, _ = built
    ev = ablation.Evaluator(model, tokens, labels, "ce_loss", 16, dtype=np.float32)
    rng = np.random.default_rng(2)
    for index in _normalisations(graph):
        fast, general = _forwards(ev, graph, index)
        for mask in edge_masks(fast.shape, rng):
            assert fast.score(mask) == pytest.approx(general.score(mask), rel=1e-5)


@pytest.mark.parametrize("built", ONE_LAYOUT, indirect=True)
def test_bisection_is_unchanged(built, monkeypatch):
    """Edges required and every probed loss of a whole bisection per transition out of a
    normalisation, with the masked products and with the general path."""
    _, _, graph, _, _, ev = built
    cfg = ablation.Bisect(0.05)
    pairs = [graph.edge_pairs[i] for i in _normalisations(graph)]
    fast = ablation.edge_ablation(ev, graph, pairs, cfg)
    monkeypatch.setattr(experiments, "EdgeForward", functools.partial(
        ablation.EdgeForward, try_affine=False, try_products=False))
    general = ablation.edge_ablation(ev, graph, pairs, cfg)
    for a, _ in pairs:
        assert fast[a].n_edges_required == general[a].n_edges_required
        assert list(fast[a].scores) == list(general[a].scores)
        np.testing.assert_allclose(list(fast[a].scores.values()),
                                   list(general[a].scores.values()), rtol=1e-12)
        assert (fast[a].mask == general[a].mask).all()


@pytest.mark.slow
def test_products_need_no_float64():
    """Without 64-bit types in JAX the section is read off in the evaluation dtype."""
    if not jax.config.read("jax_enable_x64"):
        pytest.skip("64-bit types are off already")
    model, tokens = tiny_block("ln")
    graph = pipeline.build(model, tokens, pipeline.BuildConfig(batch_size=64))
    labels = np.roll(tokens, -1, axis=1)
    index = graph.node_layers.index("ln1_out.0")
    with jax.enable_x64(False):
        ev = ablation.Evaluator(model, tokens, labels, "ce_loss", 16, dtype=np.float32)
        fast, general = _forwards(ev, graph, index)
        assert len(fast.products[0]) == fast.shape[0]
        for mask in edge_masks(fast.shape, np.random.default_rng(3)):
            assert fast.score(mask) == pytest.approx(general.score(mask), rel=1e-5)
