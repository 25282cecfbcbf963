"""Structure-aware exact paths agree with the general VJP path (issue 6): closed forms for MLP
sections and one probe per output direction for positionwise sections."""

import functools

import numpy as np
import pytest

from libjax.forms.attention import AttentionForm
from libjax.forms.layernorm import LayerNormInForm, LayerNormOutForm
from libjax.forms.mlp import MLPForm
from libjax.pipeline import BuildConfig, build
from libjax.pipeline.run import compute_edges, compute_m_prime
from models.mlp import model as mlp
from tests.helpers.tiny import tiny_ln_transformer, tiny_transformer

FAST, GENERAL = BuildConfig(), BuildConfig(fast_paths=False)


@functools.cache
def case(name):
    if name == "mlp":
        cfg, weights, _ = mlp.load()
        model = mlp.sectioned_model(weights, cfg)
        return model, np.random.default_rng(0).uniform(size=(200, 64))
    if name == "mlp_gelu":
        cfg = mlp.MLPConfig((6, 9, 7, 4), act_fn="gelu_new")
        rng = np.random.default_rng(1)
        weights = {k: rng.normal(size=s) for k, s in mlp.expected_shapes(cfg).items()}
        return mlp.sectioned_model(weights, cfg), rng.normal(size=(50, 6))
    if name == "tiny":
        return tiny_transformer(("ln1.0", "ln2.0", "unembed", "output"))
    if name == "tiny_positions":
        return tiny_transformer(("ln2.0", "mlp_in.0", "mlp_act.0", "ln_final", "output"),
                                last_pos_only=False, act_fn="gelu_new")
    if name == "tiny_attention":  # every position kept: attention with several output positions
        return tiny_transformer(("ln1.0", "ln2.0", "unembed", "output"), last_pos_only=False)
    if name == "tiny_ln":  # the paper's GPT-2 block layout
        return tiny_ln_transformer(("ln1.0", "ln1_out.0", "attn_in.0", "ln2.0", "ln2_out.0",
                                    "mlp_in.0", "ln1.1"))
    if name == "tiny_ln_final":
        return tiny_ln_transformer(("mlp_in.1", "ln_final", "ln_final_out", "unembed", "output"))
    raise KeyError(name)


@functools.cache
def graph(name):
    model, inputs = case(name)
    return build(model, inputs, GENERAL)


def fast_sections(name):
    model, _ = case(name)
    return [i for i in range(len(model.sections))
            if model.sections[i].form is not None or model.sections[i].positionwise]


def rel(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


NAMES = ["mlp", "mlp_gelu", "tiny", "tiny_positions", "tiny_attention", "tiny_ln", "tiny_ln_final"]
RULES = [("gradient", 0), ("gauss-legendre", 3)]
# the default run: the GPT-2 block layout (LayerNorm halves, split attention, MLP) and a quadrature
# rule through GELU; the other pairs with -m slow
DEFAULT = {("tiny_ln", RULES[0]), ("mlp_gelu", RULES[1])}


@pytest.mark.parametrize("name, rule", [
    pytest.param(n, r, marks=() if (n, r) in DEFAULT else pytest.mark.slow, id=f"{n}-{r[0]}")
    for r in RULES for n in NAMES])
def test_m_prime_and_edges_agree_with_the_general_path(name, rule):
    model, inputs = case(name)
    g = graph(name)
    fast = BuildConfig(integration=rule[0], n_intervals=rule[1])
    general = BuildConfig(integration=rule[0], n_intervals=rule[1], fast_paths=False)
    sections = fast_sections(name)
    assert sections, "this model declares no fast path"
    for i in sections:
        nxt = g.bases.get(model.node_layers[i + 1])
        c_next = None if nxt is None else nxt.C
        assert rel(compute_m_prime(model, i, inputs, fast, c_next),
                   compute_m_prime(model, i, inputs, general, c_next)) < 1e-10
        b_in = g.bases[model.node_layers[i]]
        assert rel(compute_edges(model, i, inputs, fast, b_in, c_next),
                   compute_edges(model, i, inputs, general, b_in, c_next)) < 1e-10


def test_positionwise_sections_get_exact_edges_where_sources_were_asked_for():
    """For a positionwise section, position sources are exact for M' anyway (each sign meets only
    itself), but not for edges (signs mix positions inside the square): sections without a form
    (one probe per output direction) and LayerNorm forms then give the exact edges, the
    reference's computation a noisy estimate of them. (MLP forms give the estimate: below.)"""
    sources = dict(n_stochastic_sources_basis_pos=1, n_stochastic_sources_edges=1)
    stochastic, reference_like = BuildConfig(**sources), BuildConfig(**sources, fast_paths=False)
    model, inputs = case("tiny_positions")
    i = model.node_layers.index("mlp_act.0")  # -> ln_final: gelu, W_out, residual; no form
    assert model.sections[i].positionwise and model.sections[i].form is None
    g = graph("tiny_positions")
    b_in, c_next = g.bases["mlp_act.0"], g.bases["ln_final"].C
    for cfg in (stochastic, reference_like):
        assert rel(compute_m_prime(model, i, inputs, cfg, c_next),
                   compute_m_prime(model, i, inputs, GENERAL, c_next)) < 1e-10
    exact = compute_edges(model, i, inputs, GENERAL, b_in, c_next)
    assert rel(compute_edges(model, i, inputs, stochastic, b_in, c_next), exact) < 1e-10
    assert rel(compute_edges(model, i, inputs, reference_like, b_in, c_next), exact) > 1e-3
    model, inputs = case("tiny_ln")
    g = graph("tiny_ln")
    for a, kind in (("ln1.0", LayerNormInForm), ("ln1_out.0", LayerNormOutForm)):
        i = model.node_layers.index(a)
        assert isinstance(model.sections[i].form, kind)
        b_in, c_next = g.bases[a], g.bases[model.node_layers[i + 1]].C
        exact = compute_edges(model, i, inputs, GENERAL, b_in, c_next)
        assert rel(compute_edges(model, i, inputs, stochastic, b_in, c_next), exact) < 1e-10
        assert rel(compute_edges(model, i, inputs, reference_like, b_in, c_next), exact) > 1e-3


@pytest.mark.parametrize("name, layer", [("tiny_ln", "mlp_in.0"), ("tiny_positions", "ln_final")])
@pytest.mark.parametrize("n_sources", [1, 2])
@pytest.mark.parametrize("rule", [("gradient", 0), ("gauss-legendre", 3)])
def test_mlp_closed_form_reproduces_the_stochastic_estimate(name, layer, n_sources, rule):
    """With edge sources an MLP section (gelu, or linear: the unembedding) gets the reference's
    estimate in closed form, from the very signs the general path draws: the same numbers, not
    the exact edges."""
    model, inputs = case(name)
    g = graph(name)
    i = model.node_layers.index(layer)
    assert isinstance(model.sections[i].form, MLPForm) and model.layers[i + 1].positions > 1
    nxt = g.bases.get(model.node_layers[i + 1])
    c_next = None if nxt is None else nxt.C
    common = dict(integration=rule[0], n_intervals=rule[1], seed=3)
    fast = BuildConfig(**common, n_stochastic_sources_edges=n_sources)
    general = BuildConfig(**common, n_stochastic_sources_edges=n_sources, fast_paths=False)
    b_in = g.bases[layer]
    estimate = compute_edges(model, i, inputs, fast, b_in, c_next)
    assert rel(estimate, compute_edges(model, i, inputs, general, b_in, c_next)) < 1e-10
    assert rel(estimate, compute_edges(model, i, inputs, BuildConfig(**common), b_in,
                                       c_next)) > 1e-3


@pytest.mark.parametrize("name", ["tiny_attention", "tiny_ln"])
def test_attention_closed_form_reproduces_the_stochastic_estimate(name):
    """With position sources the closed form uses the very signs the probes would: the two paths
    give the same estimate, not just the same expectation."""
    model, inputs = case(name)
    g = graph(name)
    i = next(i for i, s in enumerate(model.sections) if isinstance(s.form, AttentionForm))
    nxt = g.bases.get(model.node_layers[i + 1])
    c_next = None if nxt is None else nxt.C
    sources = dict(n_stochastic_sources_basis_pos=2, n_stochastic_sources_edges=3, seed=7)
    fast, general = BuildConfig(**sources), BuildConfig(**sources, fast_paths=False)
    assert rel(compute_m_prime(model, i, inputs, fast, c_next),
               compute_m_prime(model, i, inputs, general, c_next)) < 1e-10
    b_in = g.bases[model.node_layers[i]]
    assert rel(compute_edges(model, i, inputs, fast, b_in, c_next),
               compute_edges(model, i, inputs, general, b_in, c_next)) < 1e-10
