"""The two closed-form methods for attention sections (dense head products, low-rank factors)
agree with each other and with the general VJP path, and the cheaper one is chosen; also with
rotary embeddings (whole or partial heads), grouped-query attention and parallel blocks' output
``(resid + attn, resid)``."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from libjax.forms.attention import AttentionForm, dense
from libjax.forms.attention import plan as attention_form
from libjax.forms.attention import sums as attention_sums
from libjax.method import integration
from libjax.pipeline import BuildConfig, build
from libjax.pipeline.run import compute_edges, compute_m_prime
from models.modadd import model as modadd
from tests.helpers.tiny import tiny_lm_family, tiny_ln_transformer, tiny_transformer

GENERAL = BuildConfig(fast_paths=False)
METHODS = ("dense", "lowrank")


@functools.cache
def case(name):
    if name == "last_only":  # the modular-addition shape: one output position
        model, tokens = tiny_transformer(("ln1.0", "ln2.0", "unembed", "output"))
    elif name == "all_positions":
        model, tokens = tiny_transformer(("ln1.0", "ln2.0", "unembed", "output"),
                                         last_pos_only=False, n_ctx=4)
    elif name == "rotary_last_only":  # rotary on half of each head, 2 query heads per KV head
        model, tokens = tiny_transformer(("ln1.0", "ln2.0", "unembed", "output"), rotary_dim=2,
                                         kv_heads=1)
    elif name == "rotary_all_positions":  # rotary on whole heads
        model, tokens = tiny_transformer(("ln1.0", "ln2.0", "unembed", "output"),
                                         last_pos_only=False, n_ctx=4, rotary_dim=4, kv_heads=1)
    elif name == "parallel":  # Pythia's block: rotary, output (resid + attn, resid)
        model, tokens = tiny_lm_family("pythia", ("attn_in.0", "ln2.0", "ln2_out.0", "mlp_in.0"))
    else:  # split (n, resid) input of GPT-2's attn_in
        model, tokens = tiny_ln_transformer(("attn_in.0", "ln2.0", "ln2_out.0", "mlp_in.0"))
    # the rotary cases compare in PCA bases (Grams only): as good as LIB's for that, and cheaper
    graph = build(model, tokens, GENERAL if name in ("last_only", "all_positions", "split")
                  else BuildConfig(basis="pca", compute_edges=False))
    index = next(i for i, s in enumerate(model.sections) if isinstance(s.form, AttentionForm))
    return model, tokens, graph, index


def section_inputs(name):
    """Inputs of the attention section, sample weights with padding, ``C`` of both layers."""
    model, tokens, graph, i = case(name)
    xs = jnp.stack([model.run_to(model.params, jnp.asarray(t), i) for t in tokens])
    weights = jnp.asarray(np.arange(len(xs)) % 5 != 0, xs.dtype)
    nxt = graph.bases.get(model.node_layers[i + 1])
    return model, i, xs, weights, graph.bases[model.node_layers[i]], \
        None if nxt is None else jnp.asarray(nxt.C)


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def both_methods(name, rho, rule):
    """``{method: (M', edges)}`` unnormalised, with position weightings ``rho``; the low-rank
    method in chunks of 7 samples (so padding chunks are exercised)."""
    model, i, xs, weights, b_in, c = section_inputs(name)
    form, params = model.sections[i].form, model.params
    alphas, quad = integration.points(*rule)
    x_hat = xs @ jnp.asarray(b_in.C)
    out = {}
    for method in METHODS:
        chunks = (method, xs.shape[1], 7)
        out[method] = (
            attention_sums.assemble(form, params, form.weighted_sums(
                "m_prime", chunks, params, xs, weights, rho, None, c, alphas, quad), c,
                xs.shape[-1]),
            form.weighted_sums("edges", chunks, params, x_hat, weights, rho,
                               jnp.asarray(b_in.C_pinv), c, alphas, quad))
    return out


METHOD_CASES = [("last_only", ("gradient", 0)), ("all_positions", ("gradient", 0)),
                ("split", ("gradient", 0)), ("last_only", ("gauss-legendre", 3)),
                ("rotary_last_only", ("gauss-legendre", 3)),
                ("rotary_all_positions", ("gradient", 0)),
                ("parallel", ("gradient", 0))]
# the default run: the GPT-2 layout (rotary attention: tests/models/test_lm_families_forms.py);
# -m slow: the rest
DEFAULT_METHOD_CASES = {("split", ("gradient", 0))}


@pytest.mark.parametrize("name, rule", [
    pytest.param(n, r, id=f"{n}-{r[0]}", marks=() if (n, r) in DEFAULT_METHOD_CASES
                 else pytest.mark.slow) for n, r in METHOD_CASES])
def test_low_rank_and_dense_methods_agree_for_any_weighting(name, rule):
    model, i, xs, *_ = section_inputs(name)
    n_out = model.layers[i + 1].positions
    signs = np.random.default_rng(3).choice([-1.0, 1.0], size=(len(xs), 2, n_out))
    for rho in (jnp.broadcast_to(jnp.eye(n_out), (len(xs), n_out, n_out)), jnp.asarray(signs)):
        out = both_methods(name, rho, rule)
        assert rel(out["lowrank"][0], out["dense"][0]) < 1e-10
        assert rel(out["lowrank"][1], out["dense"][1]) < 1e-10


@pytest.mark.parametrize("name", [  # the GPT-2 layout: tests/forms/test_fast_paths.py
    n if n == "rotary_last_only" else pytest.param(n, marks=pytest.mark.slow)
    for n in ["last_only", "split", "rotary_last_only", "parallel", "rotary_all_positions"]])
def test_low_rank_method_equals_the_general_path(name):
    """Exact probes, every sample weighted 1: the low-rank sums, normalised, are the build's."""
    model, tokens, graph, i = case(name)
    xs = jnp.stack([model.run_to(model.params, jnp.asarray(t), i) for t in tokens])
    n_out = model.layers[i + 1].positions
    rho = jnp.broadcast_to(jnp.eye(n_out), (len(xs), n_out, n_out))
    nxt = graph.bases.get(model.node_layers[i + 1])
    c = None if nxt is None else jnp.asarray(nxt.C)
    b_in = graph.bases[model.node_layers[i]]
    ones, norm = jnp.ones(len(xs)), len(xs) * model.layers[i].positions
    chunks = ("lowrank", xs.shape[1], 16)
    form = model.sections[i].form
    head_sums = form.weighted_sums("m_prime", chunks, model.params, xs, ones, rho, None, c,
                                   [1.0], [1.0])
    m_prime = attention_sums.assemble(form, model.params, head_sums, c, xs.shape[-1]) / norm
    edges = form.weighted_sums("edges", chunks, model.params, xs @ b_in.C, ones, rho,
                               jnp.asarray(b_in.C_pinv), c, [1.0], [1.0]) / norm
    assert rel(m_prime, compute_m_prime(model, i, tokens, GENERAL, nxt and nxt.C)) < 1e-10
    assert rel(edges, compute_edges(model, i, tokens, GENERAL, b_in, nxt and nxt.C)) < 1e-10


def test_the_cheaper_method_is_planned():
    """Few positions (modular addition: 3, one output) -> low rank; long contexts -> dense."""
    cfg, weights = modadd.load()
    model = modadd.sectioned_model(weights, cfg, modadd.PAPER_NODE_LAYERS)
    form, params = model.sections[0].form, model.params
    plan = functools.partial(attention_form.plan, form, params, n_weightings=1, out_dim=111,
                             in_dim=115, d_in=129, per_device=4096, budget_gb=0.25)
    method, _, samples = plan(n_pos=3, n_alphas=1)
    assert method == "lowrank" and 1 <= samples <= 4096
    assert plan(n_pos=3, n_alphas=3)[0] == "dense"  # 9 terms per head: near d_head / 4
    assert plan(n_pos=64, n_alphas=1)[0] == "dense"


@pytest.mark.parametrize("name", [
    "split", pytest.param("rotary_all_positions", marks=pytest.mark.slow),
    pytest.param("parallel", marks=pytest.mark.slow)])
def test_dense_method_in_position_chunks_equals_one_chunk(name):
    """Chunks of 1 and 3 positions (padding; under the causal mask, runs of chunks that skip the
    masked pairs: ``dense._windows``) give the sums of one chunk over every position."""
    model, i, xs, weights, b_in, c = section_inputs(name)
    form, params = model.sections[i].form, model.params
    n_pos, n_out = xs.shape[1], model.layers[i + 1].positions
    rho = jnp.asarray(np.random.default_rng(4).choice([-1.0, 1.0], size=(len(xs), 2, n_out)))
    x_hat = xs @ jnp.asarray(b_in.C)

    def sums(positions):
        chunks = ("dense", positions, 7)
        head_sums = form.weighted_sums("m_prime", chunks, params, xs, weights, rho, None, c,
                                       [1.0], [1.0])
        return head_sums, form.weighted_sums("edges", chunks, params, x_hat, weights, rho,
                                             jnp.asarray(b_in.C_pinv), c, [1.0], [1.0])

    whole = sums(n_pos)
    assert len(dense._windows(form, n_pos, 1)) == min(dense.SEGMENTS, n_pos)
    for positions in (1, 3):
        head_sums, edges = sums(positions)
        for key in ("cc", "zl", "ll"):
            assert rel(head_sums[key], whole[0][key]) < 1e-12, (positions, key)
        assert rel(edges, whole[1]) < 1e-12, positions


def test_dense_method_sums_the_upper_block_triangle_and_mirrors_it(monkeypatch):
    """``S^LL`` from its column groups' upper block triangle (``dense._column_groups``) equals
    every pair's product (one group), and is symmetric: ``S^LL_Hh = S^LL_hH^T`` (the key/query
    groups of :func:`dense._to_groups` alike)."""
    model, i, xs, weights, b_in, c = section_inputs("split")
    form, params = model.sections[i].form, model.params
    rho = jnp.asarray(np.random.default_rng(5).choice([-1.0, 1.0], size=(len(xs), 2, xs.shape[1])))

    def s_ll(groups):
        monkeypatch.setattr(dense, "HEAD_GROUPS", groups)
        return form.weighted_sums("m_prime", ("dense", 3, 7), params, xs, weights, rho, None, c,
                                  [1.0], [1.0])["ll"]

    heads = form.matrices(params)["W_Q"].shape[0]
    assert heads >= 2 and len(dense._column_groups(heads)) == min(heads, dense.HEAD_GROUPS)
    whole, grouped = s_ll(1), s_ll(dense.HEAD_GROUPS)
    assert rel(grouped, whole) < 1e-12
    assert rel(np.asarray(grouped).transpose(1, 0, 3, 2), grouped) < 1e-12
