"""Closed forms in Pythia- and Llama-shaped models agree with the general VJP path to 1e-10:
LayerNorm halves, RMSNorm halves (the LayerNorm forms without centring), parallel blocks' ``ln2``
halves (the forms' parallel layout), rotary and grouped-query attention (both methods, exact and
with a position source; in parallel blocks the section's output keeps the input residual), the
MLP section, the gated MLP, the unembedding, and the positionwise shortcuts; so do whole
builds."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from libjax.forms.attention import AttentionForm
from libjax.forms.attention import plan as attention_plan
from libjax.forms.layernorm import LayerNormInForm, LayerNormOutForm
from libjax.forms.mlp import MLPForm
from libjax.pipeline import BuildConfig, build
from libjax.pipeline.run import compute_edges, compute_m_prime
from models.lm import model as lm
from tests.helpers.tiny import LM_FAMILIES, tiny_lm_family

GENERAL = BuildConfig(fast_paths=False)
NODE_LAYERS = lm.block_node_layers(1, 2)[:-1] + ("ln_final", "ln_final_out", "unembed", "output")
# node layer -> the form of the section it starts: every section of both families has one
LN_IN, LN_OUT, MLP, ATTN = LayerNormInForm, LayerNormOutForm, MLPForm, AttentionForm
BLOCK_FORMS = {"ln1.1": LN_IN, "ln1_out.1": LN_OUT, "attn_in.1": ATTN, "ln2.1": LN_IN,
               "ln2_out.1": LN_OUT, "mlp_in.1": MLP, "ln_final": LN_IN, "ln_final_out": LN_OUT,
               "unembed": MLP}
FORMS = {"pythia": BLOCK_FORMS, "llama": BLOCK_FORMS}


@functools.cache
def case(name):
    """(sectioned model, tokens) of a tiny random model of ``name``'s structure."""
    return tiny_lm_family(name, NODE_LAYERS)


@functools.cache
def bases(name):
    """PCA bases (Grams only): as good a pair of bases to compare the two paths in as LIB's."""
    model, tokens = case(name)
    return build(model, tokens, BuildConfig(basis="pca", compute_edges=False)).bases


def rel(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def sums(name, layer, cfg, next_basis=True):
    """``(M', edges)`` of the section starting at ``layer`` under ``cfg``, into the next layer's
    basis or (not ``next_basis``) its neurons."""
    model, tokens = case(name)
    i = model.node_layers.index(layer)
    nxt = bases(name).get(model.node_layers[i + 1]) if next_basis else None
    c_next = None if nxt is None else nxt.C
    return (compute_m_prime(model, i, tokens, cfg, c_next),
            compute_edges(model, i, tokens, cfg, bases(name)[layer], c_next))


general_sums = functools.cache(sums)  # the general path's, shared by the forced methods


def check_section(name, layer, fast=BuildConfig(), general=GENERAL, next_basis=True):
    """``M'`` and edges of the section starting at ``layer``: fast paths == general path."""
    model, _ = case(name)
    section = model.sections[model.node_layers.index(layer)]
    assert section.form is not None or section.positionwise, "no fast path here"
    for got, want in zip(sums(name, layer, fast, next_basis),
                         general_sums(name, layer, general, next_basis)):
        assert rel(got, want) < 1e-10


def with_rule(rule, **fields):
    """The fast and the general configuration under the integration ``rule``."""
    rule = dict(integration=rule[0], n_intervals=rule[1], **fields)
    return BuildConfig(**rule), BuildConfig(**rule, fast_paths=False)


@pytest.mark.parametrize("name", LM_FAMILIES)
def test_only_the_forms_that_hold_are_declared(name):
    model, _ = case(name)
    declared = {layer: type(s.form) for layer, s in zip(model.node_layers, model.sections)
                if s.form is not None}
    assert declared == FORMS[name]


@pytest.mark.parametrize("layer", ["ln1.1", "ln1_out.1", "ln_final_out"])
def test_rms_norm_halves_agree_with_the_general_path(layer):
    check_section("llama", layer)


@pytest.fixture
def force_method(monkeypatch):
    """``force(method)``: the attention planner picks ``method``, with its own chunk sizes."""
    planned = attention_plan.plan

    def force(method):
        monkeypatch.setattr(attention_plan, "plan",
                            lambda *a, **k: (method,) + planned(*a, **k)[1:])
    return force


# (family, method, position sources): the default run has one (tests/forms/test_attention_paths.py
# checks the methods against each other on smaller cases); the slow run the rest
ATTENTION_CASES = [pytest.param(*c, marks=() if c == ("pythia", "lowrank", 1) else pytest.mark.slow)
                   for c in [(name, method, sources) for name in LM_FAMILIES
                             for method in ("lowrank", "dense") for sources in (None, 1)]]


@pytest.mark.parametrize("name, method, sources", ATTENTION_CASES)
def test_rotary_attention_agrees_with_the_general_path(name, method, sources, force_method):
    """Rotary (partial in Pythia, with another base in Llama), grouped-query (Llama) and
    parallel-block (Pythia) attention, each method forced, exact or with a position source."""
    force_method(method)
    stochastic = {"n_stochastic_sources_basis_pos": sources, "n_stochastic_sources_edges": sources}
    check_section(name, "attn_in.1", BuildConfig(**stochastic),
                  BuildConfig(fast_paths=False, **stochastic))


FAST_SECTIONS = [(name, layer) for name in LM_FAMILIES for layer in NODE_LAYERS[:-1]
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
    check_section(name, layer, *with_rule(rule), next_basis=next_basis)


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
@pytest.mark.parametrize("name", LM_FAMILIES)
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
