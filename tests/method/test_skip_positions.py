"""Positions left out of a build (``BuildConfig.skip_positions``, docs/method.md 1.13): the
statistics, ``M'`` and the edges equal a brute-force definition in which every term with a skipped
input or output position is removed; the closed forms agree with the general VJP path; the option
is validated, recorded in ``build.json`` and part of a build's identity."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from libjax import basis as basis_lib
from libjax.errors import ConfigError, StoreError
from libjax.forms.attention import AttentionForm
from libjax.forms.attention import sums as attention_sums
from libjax.pipeline import BuildConfig, build
from libjax.pipeline.config import skip_positions_of
from libjax.pipeline.run import compute_edges, compute_m_prime
from libjax.storage import graph as graph_lib
from models.mlp import model as mlp
from tests.helpers.tiny import tiny_lm_family, tiny_ln_transformer, tiny_transformer

SKIP = (0,)
GPT2_BLOCK = ("attn_in.0", "ln2.0", "ln2_out.0", "mlp_in.0", "ln1.1")  # attention, LN, MLP forms


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


@functools.cache
def case():
    model, tokens = tiny_ln_transformer(GPT2_BLOCK)
    tokens = tokens[:16]
    return model, tokens, build(model, tokens, BuildConfig(skip_positions=SKIP))


def c_of(g, name):
    return None if name not in g.bases else g.bases[name].C


def acts_at(model, tokens, i):
    return np.stack([np.asarray(model.run_to(model.params, jnp.asarray(t), i)) for t in tokens])


def brute_stats(f, keep):
    """Mean and centred Gram matrix (docs/method.md 1.3-1.4) of the kept rows only."""
    rows = f[:, keep].reshape(-1, f.shape[-1])
    mean = rows.mean(0)
    shifted = rows - np.concatenate([mean[:-1], [0.0]])
    return mean, shifted.T @ shifted / len(rows)


def brute_m_prime(model, i, f, c_next, keep):
    """``M'`` from whole Jacobians ``dF_t/df_s``, summing only kept ``t`` and ``s``."""
    fn = model.sections[i].fn
    section = (lambda x: fn(model.params, x)) if c_next is None else \
        (lambda x: fn(model.params, x) @ c_next)
    jac = np.asarray(jax.vmap(jax.jacobian(section))(jnp.asarray(f)))  # (b, t, i, s, j)
    kept_jac = jac[:, keep][:, :, :, keep]
    return np.einsum("btisj,btisk->jk", kept_jac, kept_jac) / (len(f) * len(keep))


def brute_edges(model, i, f, b_in, c_next, keep):
    """Squared edges (docs/method.md 2.2, gradient rule) from whole Jacobians of the section in
    basis coordinates: ``A[t,i,j] = sum_{s kept} dF^_{t,i}/df^_{s,j} f^_{s,j}``, summed over kept
    ``t``."""
    fn = model.sections[i].fn

    def section(x_hat):
        out = fn(model.params, x_hat @ b_in.C_pinv)
        return out if c_next is None else out @ c_next

    x_hat = f @ b_in.C
    jac = np.asarray(jax.vmap(jax.jacobian(section))(jnp.asarray(x_hat)))  # (b, t, i, s, j)
    a = np.einsum("btisj,bsj->btij", jac[:, :, :, keep], x_hat[:, keep])
    return np.sum(a[:, keep] ** 2, axis=(0, 1)) / (len(f) * len(keep))


def test_a_build_without_position_0_is_the_brute_force_build_without_it():
    model, tokens, g = case()
    keep = [p for p in range(model.layers[0].positions) if p not in SKIP]
    for i, name in enumerate(model.node_layers):
        f = acts_at(model, tokens, i)
        if name in g.grams:
            mean, gram = brute_stats(f, keep)
            assert rel(g.means[name], mean) < 1e-12 and rel(g.grams[name], gram) < 1e-12, name
        if i == len(model.node_layers) - 1:
            continue
        c_next = c_of(g, model.node_layers[i + 1])
        m_brute = brute_m_prime(model, i, f, c_next, keep)
        general = BuildConfig(skip_positions=SKIP, fast_paths=False)
        assert rel(compute_m_prime(model, i, tokens, general, c_next), m_brute) < 1e-10, name
        # the build's basis (M' from the closed forms) is that of the brute-force sums
        lam = basis_lib.lib_basis(*brute_stats(f, keep)[::-1], m_brute, True,
                                  model.layers[i].variance is not None).Lambda
        assert rel(g.bases[name].Lambda[:len(lam)], lam[:len(g.bases[name].Lambda)]) < 1e-8
        assert rel(g.edges[(name, model.node_layers[i + 1])],
                   brute_edges(model, i, f, g.bases[name], c_next, keep)) < 1e-10, name


def test_skipping_changes_the_sums():
    """The option does something: without it the statistics and edges differ."""
    model, tokens, g = case()
    full = build(model, tokens, BuildConfig(compute_edges=False, basis="pca"))
    assert rel(full.grams["ln2.0"], g.grams["ln2.0"]) > 1e-3


@pytest.mark.slow
def test_general_path_with_general_probes_agrees_with_the_forms_under_sources():
    """Position sources: the attention and MLP closed forms zero the very signs the general
    path's probes zero (skipped outputs), so the estimates agree, not just their means."""
    model, tokens, g = case()
    sources = dict(n_stochastic_sources_basis_pos=2, n_stochastic_sources_edges=2, seed=5,
                   skip_positions=SKIP)
    fast, general = BuildConfig(**sources), BuildConfig(**sources, fast_paths=False)
    for name in ("attn_in.0", "mlp_in.0"):
        i = model.node_layers.index(name)
        c_next = c_of(g, model.node_layers[i + 1])
        if name == "attn_in.0":
            assert rel(compute_m_prime(model, i, tokens, fast, c_next),
                       compute_m_prime(model, i, tokens, general, c_next)) < 1e-10
        assert rel(compute_edges(model, i, tokens, fast, g.bases[name], c_next),
                   compute_edges(model, i, tokens, general, g.bases[name], c_next)) < 1e-10


def test_both_attention_methods_weight_input_positions_alike():
    """``(batch, P)`` row weights (padding and a skipped position): the dense method (in
    position chunks of 1) and the low-rank method give the same sums."""
    model, tokens, g = case()
    i = 0
    form = model.sections[i].form
    assert isinstance(form, AttentionForm)
    xs = jnp.asarray(acts_at(model, tokens, i))
    rows = np.ones(xs.shape[:2])
    rows[::5] = 0.0
    rows[:, 2] = 0.0
    rows = jnp.asarray(rows)
    n_out = model.layers[1].positions
    rho = jnp.asarray(np.random.default_rng(2).choice([-1.0, 1.0], size=(len(xs), 2, n_out)))
    c = jnp.asarray(g.bases["ln2.0"].C)
    b_in = g.bases["attn_in.0"]
    out = []
    for chunks in (("lowrank", xs.shape[1], 7), ("dense", 1, 7)):
        head_sums = form.weighted_sums("m_prime", chunks, model.params, xs, rows, rho, None, c,
                                       [1.0], [1.0])
        out.append((attention_sums.assemble(form, model.params, head_sums, c, xs.shape[-1]),
                    form.weighted_sums("edges", chunks, model.params, xs @ b_in.C, rows, rho,
                                       jnp.asarray(b_in.C_pinv), c, [1.0], [1.0])))
    for m_prime, edges in out[1:]:
        assert rel(m_prime, out[0][0]) < 1e-10 and rel(edges, out[0][1]) < 1e-10


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "pythia"])
def test_forms_agree_with_the_general_path_on_rotary_families(family):
    """Rotary attention (grouped-query, parallel blocks), RMSNorm and gated MLP forms with
    position 0 and the last position skipped."""
    model, tokens = tiny_lm_family(family, ("attn_in.0", "ln2.0", "ln2_out.0", "mlp_in.0",
                                            "ln1.1"))
    skip = (0, model.layers[0].positions - 1)
    g = build(model, tokens, BuildConfig(skip_positions=skip, fast_paths=False))
    fast, general = (BuildConfig(skip_positions=skip, fast_paths=f) for f in (True, False))
    for i, name in enumerate(model.node_layers[:-1]):
        c_next = c_of(g, model.node_layers[i + 1])
        assert rel(compute_m_prime(model, i, tokens, fast, c_next),
                   compute_m_prime(model, i, tokens, general, c_next)) < 1e-10, name
        assert rel(compute_edges(model, i, tokens, fast, g.bases[name], c_next),
                   g.edges[(name, model.node_layers[i + 1])]) < 1e-10, name


def test_the_record_holds_the_positions_and_a_different_skip_is_a_different_build(tmp_path):
    model, tokens = tiny_ln_transformer(("ln2.0", "ln2_out.0"))
    cfg = BuildConfig(skip_positions=[1, 0], basis="pca", compute_edges=False)
    assert cfg.skip_positions == (1, 0)
    build(model, tokens, cfg, out_dir=tmp_path / "g")
    record = json.loads((tmp_path / "g" / "build.json").read_text())
    assert record["config"]["skip_positions"] == [1, 0]
    assert skip_positions_of(graph_lib.load(tmp_path / "g").config) == (1, 0)
    build(model, tokens, cfg, out_dir=tmp_path / "g")  # the same build resumes
    with pytest.raises(StoreError, match="different build"):
        build(model, tokens, BuildConfig(skip_positions=(0,), basis="pca", compute_edges=False),
              out_dir=tmp_path / "g")
    # the default records nothing: build.json reads as it did before the option
    assert "skip_positions" not in BuildConfig().to_json()
    assert skip_positions_of(BuildConfig().to_json()) == ()


@pytest.mark.parametrize("skip, message", [
    ((5,), "outside the context"), ((-1,), "outside the context"), ((0, 0), "more than once"),
    ((0, 1, 2, 3, 4), "leaves none"), ((0.5,), "whole numbers")])
def test_bad_positions_are_refused(skip, message):
    model, tokens = tiny_ln_transformer(("ln2.0", "ln2_out.0"))
    with pytest.raises(ConfigError, match=message):
        build(model, tokens, BuildConfig(skip_positions=skip))


def test_models_without_positions_or_with_a_dropped_position_are_refused():
    cfg, weights, _ = mlp.load()
    with pytest.raises(ConfigError, match="no sequence positions"):
        build(mlp.sectioned_model(weights, cfg), np.zeros((2, 784)),
              BuildConfig(skip_positions=(0,)))
    model, tokens = tiny_transformer(("ln1.0", "ln2.0", "unembed", "output"))  # last position only
    with pytest.raises(ConfigError, match="keep every position"):
        build(model, tokens, BuildConfig(skip_positions=(0,)))


def brute_ce(model, nxt, index, labels, keep):
    """Mean next-token cross-entropy over the kept positions of the model run on from node
    layer ``index``'s activations ``nxt`` (one batch)."""
    logits = np.stack([np.asarray(model.run_from(model.params, jnp.asarray(a), index))
                       for a in nxt])[:, keep]
    logp = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    return float(-np.mean(np.take_along_axis(logp, labels[:, keep, None], axis=-1)))


def test_ablations_take_the_skipped_positions_from_the_graph_and_leave_them_alone():
    """Node and edge ablations of a skip build: position 0 is neither rotated nor masked (the
    next layer's activations there are the model's own) nor scored."""
    from libjax import ablation
    from libjax.ablation.edge_forward import EdgeForward
    from libjax.ablation.masks import rotation_matrix

    model, tokens, g = case()
    labels = np.roll(tokens, -1, axis=1)
    keep = np.arange(1, tokens.shape[1])
    ev = ablation.Evaluator(model, tokens, labels, "ce_loss", dtype=np.float64)
    full_base = ev.base()
    sched = ablation.Schedule(kind="explicit", specific_points=(3,))
    scores = ablation.node_ablation(ev, g, ["ln2.0"], sched)["ln2.0"]
    assert ev.skip_positions == SKIP
    i = model.node_layers.index("ln2.0")
    acts = acts_at(model, tokens, i)
    assert ev.base() == pytest.approx(brute_ce(model, acts, i, labels, keep), rel=1e-12)
    assert ev.base() != pytest.approx(full_base, rel=1e-6)
    b = g.bases["ln2.0"]
    rotated = acts @ rotation_matrix(b.C, b.C_pinv, b.C.shape[1] - 3)
    rotated[:, 0] = acts[:, 0]
    assert scores[3] == pytest.approx(brute_ce(model, rotated, i, labels, keep), rel=1e-10)

    # no edge kept, across attention (position 0 feeds every kept position) and a LayerNorm
    for a in ("attn_in.0", "ln2_out.0"):
        i = model.node_layers.index(a)
        b_in, b_out = g.bases[a], g.bases[model.node_layers[i + 1]]
        forward = EdgeForward(ev, i, b_in.C, b_in.C_pinv, (b_out.C, b_out.C_pinv))
        f = acts_at(model, tokens, i)
        x_hat = f @ b_in.C
        x_hat[:, keep] = 0.0  # masked at the kept positions only
        fn = jax.vmap(lambda x: model.sections[i].fn(model.params, x))
        nxt = np.asarray(fn(jnp.asarray(x_hat @ b_in.C_pinv))) @ b_out.C @ b_out.C_pinv
        nxt[:, 0] = np.asarray(fn(jnp.asarray(f)))[:, 0]
        score = forward.score(np.zeros(forward.shape, bool))
        assert score == pytest.approx(brute_ce(model, nxt, i + 1, labels, keep), rel=1e-10), a
