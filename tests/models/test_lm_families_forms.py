"""Closed forms in Pythia- and Llama-shaped models agree with the general VJP path to 1e-10:
LayerNorm halves, RMSNorm halves (the LayerNorm forms without centring), parallel blocks' ``ln2``
halves (the forms' parallel layout) and MLP section, the gated MLP, the unembedding, and the
positionwise shortcuts; so do whole builds. Rotary and grouped-query attention and parallel
blocks' attention declare no form (the general path)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from libjax.build import BuildConfig, build
from libjax.build.pipeline import compute_edges, compute_m_prime
from libjax.forms.layernorm import LayerNormInForm, LayerNormOutForm
from libjax.forms.mlp import MLPForm
from models.common import transformer
from models.lm import model as lm
from models.lm import rotary as rotary_lm

GENERAL = BuildConfig(fast_paths=False)
NODE_LAYERS = lm.block_node_layers(1, 2)[:-1] + ("ln_final", "ln_final_out", "unembed", "output")
CONFIGS = {
    "pythia": transformer.TransformerConfig(
        n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=12, d_vocab=11, n_ctx=5, act_fn="gelu",
        normalization="LN", positional_embedding="rotary", rotary_dim=2, parallel_attn_mlp=True),
    "llama": transformer.TransformerConfig(
        n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=12, d_vocab=11, n_ctx=5, act_fn="silu",
        normalization="RMS", positional_embedding="rotary", rotary_dim=4, n_key_value_heads=1,
        gated_mlp=True),
}
# node layer -> the form of the section it starts (None: the general path)
LN_IN, LN_OUT, MLP = LayerNormInForm, LayerNormOutForm, MLPForm
FORMS = {"pythia": {"ln1.1": LN_IN, "ln1_out.1": LN_OUT, "ln2.1": LN_IN, "ln2_out.1": LN_OUT,
                    "mlp_in.1": MLP, "ln_final": LN_IN, "ln_final_out": LN_OUT, "unembed": MLP},
         "llama": {"ln1.1": LN_IN, "ln1_out.1": LN_OUT, "ln2.1": LN_IN, "ln2_out.1": LN_OUT,
                   "mlp_in.1": MLP, "ln_final": LN_IN, "ln_final_out": LN_OUT, "unembed": MLP}}


@functools.cache
def case(name):
    """(sectioned model, tokens) of a tiny random model of ``name``'s structure."""
    cfg = CONFIGS[name]
    rng = np.random.default_rng(0)
    weights = {k: (1.0 if k.endswith(".w") else 0.0) + 0.4 * rng.standard_normal(shape)
               for k, shape in lm.expected_shapes(cfg, rotary_lm.RotaryLanguageModel).items()}
    model = lm.sectioned(name, cfg, weights, NODE_LAYERS, cfg.n_ctx)
    return model, rng.integers(0, cfg.d_vocab, (12, cfg.n_ctx))


@functools.cache
def bases(name):
    """PCA bases (Grams only): as good a pair of bases to compare the two paths in as LIB's."""
    model, tokens = case(name)
    return build(model, tokens, BuildConfig(basis="pca", compute_edges=False)).bases


def rel(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def check_section(name, layer, rule=("gradient", 0), next_basis=True):
    """``M'`` and edges of the section starting at ``layer``: fast paths == general path, under
    the integration ``rule``, into the next layer's basis or (not ``next_basis``) its neurons."""
    model, tokens = case(name)
    i = model.node_layers.index(layer)
    section = model.sections[i]
    assert section.form is not None or section.positionwise, "no fast path here"
    nxt = bases(name).get(model.node_layers[i + 1]) if next_basis else None
    c_next = None if nxt is None else nxt.C
    rule = dict(integration=rule[0], n_intervals=rule[1])
    fast, general = BuildConfig(**rule), BuildConfig(**rule, fast_paths=False)
    assert rel(compute_m_prime(model, i, tokens, fast, c_next),
               compute_m_prime(model, i, tokens, general, c_next)) < 1e-10
    b_in = bases(name)[layer]
    assert rel(compute_edges(model, i, tokens, fast, b_in, c_next),
               compute_edges(model, i, tokens, general, b_in, c_next)) < 1e-10


@pytest.mark.parametrize("name", CONFIGS)
def test_only_the_forms_that_hold_are_declared(name):
    model, _ = case(name)
    declared = {layer: type(s.form) for layer, s in zip(model.node_layers, model.sections)
                if s.form is not None}
    assert declared == FORMS[name]


@pytest.mark.parametrize("layer", ["ln1.1", "ln1_out.1", "ln_final_out"])
def test_rms_norm_halves_agree_with_the_general_path(layer):
    check_section("llama", layer)


FAST_SECTIONS = [(name, layer) for name in CONFIGS for layer in NODE_LAYERS[:-1]
                 if layer in FORMS[name] or layer.startswith(("mlp_in", "ln2"))]


@pytest.mark.slow
@pytest.mark.parametrize("name, layer", FAST_SECTIONS)
def test_every_fast_section_agrees_with_the_general_path(name, layer):
    check_section(name, layer)


# The forms of issue 14: Llama's gated MLP and Pythia's parallel ln2 halves.
GATED, PARALLEL_LN = [("llama", "mlp_in.1")], [("pythia", "ln2.1"), ("pythia", "ln2_out.1")]
SLOW = pytest.mark.slow
# (integration rule, into the next layer's basis?): by default each form meets both rule kinds
# and both output bases; the rest of the cross product is slow
SETTINGS = {"gradient-next_basis": (("gradient", 0), True),
            "gauss_legendre-neurons": (("gauss-legendre", 2), False),
            "gradient-neurons": (("gradient", 0), False),
            "trapezoidal-next_basis": (("trapezoidal", 3), True)}
DEFAULT_RUN = {("llama", "mlp_in.1", "gradient-next_basis"),
               ("llama", "mlp_in.1", "gauss_legendre-neurons"),
               ("pythia", "ln2.1", "gauss_legendre-neurons"),
               ("pythia", "ln2_out.1", "gradient-next_basis")}
ISSUE_14_CASES = [pytest.param(name, layer, *settings, id=f"{name}-{layer}-{key}",
                               marks=() if (name, layer, key) in DEFAULT_RUN else SLOW)
                  for name, layer in GATED + PARALLEL_LN for key, settings in SETTINGS.items()]


@pytest.mark.parametrize("name, layer, rule, next_basis", ISSUE_14_CASES)
def test_issue_14_forms_agree_with_the_general_path(name, layer, rule, next_basis):
    model, _ = case(name)
    form = model.sections[model.node_layers.index(layer)].form
    assert form.gated if name == "llama" else form.layout == "parallel"
    check_section(name, layer, rule, next_basis)


def section_with_sources(name, layer, n_sources, rule=("gauss-legendre", 2)):
    """``(fast, general, exact)`` edges of the section at ``layer`` with ``n_sources`` position
    sources for the basis and the edges (one seed: the same signs on both paths)."""
    model, tokens = case(name)
    i = model.node_layers.index(layer)
    c_next = bases(name)[model.node_layers[i + 1]].C
    common = dict(integration=rule[0], n_intervals=rule[1], seed=5)
    sources = dict(common, n_stochastic_sources_basis_pos=n_sources,
                   n_stochastic_sources_edges=n_sources)
    fast, general = BuildConfig(**sources), BuildConfig(**sources, fast_paths=False)
    assert rel(compute_m_prime(model, i, tokens, fast, c_next),  # positionwise: exact anyway
               compute_m_prime(model, i, tokens, general, c_next)) < 1e-10
    b_in = bases(name)[layer]
    return tuple(compute_edges(model, i, tokens, cfg, b_in, c_next)
                 for cfg in (fast, general, BuildConfig(**common)))


@pytest.mark.parametrize("n_sources", [1, pytest.param(2, marks=SLOW)])
def test_gated_mlp_form_reproduces_the_stochastic_estimate(n_sources):
    """As the plain MLP form does: the reference's estimate, from the general path's signs."""
    fast, general, exact = section_with_sources(*GATED[0], n_sources)
    assert rel(fast, general) < 1e-10
    assert rel(fast, exact) > 1e-3


@pytest.mark.parametrize("name, layer",
                         [PARALLEL_LN[0], pytest.param(*PARALLEL_LN[1], marks=SLOW)])
def test_parallel_ln_forms_give_exact_edges_where_sources_were_asked_for(name, layer):
    """As the sequential LayerNorm forms do: exact edges, which cost nothing extra."""
    fast, general, exact = section_with_sources(name, layer, 1)
    assert rel(fast, exact) < 1e-10
    assert rel(general, exact) > 1e-3


def same_up_to_signs(a, b):
    """Largest relative difference of two bases' ``C`` after matching each column's sign."""
    signs = np.where(np.sum(a * b, axis=0) < 0, -1.0, 1.0)
    return rel(a * signs, b)


@pytest.mark.slow  # 150-180 s per family at load 12 (the general path compiles per section)
@pytest.mark.parametrize("name", CONFIGS)
def test_build_equals_the_general_path_build(name):
    """LIB bases and edges of every node layer, closed forms against the general path."""
    model, tokens = case(name)
    fast, general = (build(model, tokens, cfg) for cfg in (BuildConfig(), GENERAL))
    for layer in model.node_layers[:-1]:
        a, b = fast.bases[layer], general.bases[layer]
        assert a.C.shape == b.C.shape
        assert rel(a.Lambda, b.Lambda) < 1e-10 and same_up_to_signs(a.C, b.C) < 1e-10
    assert set(fast.edges) == set(general.edges)
    for key in fast.edges:
        assert rel(fast.edges[key], general.edges[key]) < 1e-10
