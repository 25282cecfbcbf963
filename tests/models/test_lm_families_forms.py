"""Closed forms in Pythia- and Llama-shaped models agree with the general VJP path to 1e-10:
LayerNorm halves, RMSNorm halves (the LayerNorm forms without centring), rotary and grouped-query
attention (both methods, exact and with a position source; in parallel blocks the section's
output keeps the input residual), the parallel block's MLP section, the unembedding, and the
positionwise shortcuts. Parallel blocks' ``ln2`` halves and the gated MLP declare no form (the
general path)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from libjax.build import BuildConfig, build
from libjax.build.pipeline import compute_edges, compute_m_prime
from libjax.forms.attention import AttentionForm
from libjax.forms.attention import plan as attention_plan
from libjax.forms.layernorm import LayerNormInForm, LayerNormOutForm
from libjax.forms.mlp import MLPForm
from models.lm import model as lm
from tests.helpers.tiny import LM_FAMILIES, tiny_lm_family

GENERAL = BuildConfig(fast_paths=False)
NODE_LAYERS = lm.block_node_layers(1, 2)[:-1] + ("ln_final", "ln_final_out", "unembed", "output")
# node layer -> the form of the section it starts (None: the general path)
LN_IN, LN_OUT, MLP, ATTN = LayerNormInForm, LayerNormOutForm, MLPForm, AttentionForm
FORMS = {"pythia": {"ln1.1": LN_IN, "ln1_out.1": LN_OUT, "attn_in.1": ATTN, "mlp_in.1": MLP,
                    "ln_final": LN_IN, "ln_final_out": LN_OUT, "unembed": MLP},
         "llama": {"ln1.1": LN_IN, "ln1_out.1": LN_OUT, "attn_in.1": ATTN, "ln2.1": LN_IN,
                   "ln2_out.1": LN_OUT, "ln_final": LN_IN, "ln_final_out": LN_OUT,
                   "unembed": MLP}}


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


def sums(name, layer, cfg):
    """``(M', edges)`` of the section starting at ``layer`` under ``cfg``."""
    model, tokens = case(name)
    i = model.node_layers.index(layer)
    nxt = bases(name).get(model.node_layers[i + 1])
    c_next = None if nxt is None else nxt.C
    return (compute_m_prime(model, i, tokens, cfg, c_next),
            compute_edges(model, i, tokens, cfg, bases(name)[layer], c_next))


general_sums = functools.cache(sums)  # the general path's, shared by the forced methods


def check_section(name, layer, fast=BuildConfig(), general=GENERAL):
    """``M'`` and edges of the section starting at ``layer``: fast paths == general path."""
    model, _ = case(name)
    section = model.sections[model.node_layers.index(layer)]
    assert section.form is not None or section.positionwise, "no fast path here"
    for got, want in zip(sums(name, layer, fast), general_sums(name, layer, general)):
        assert rel(got, want) < 1e-10


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
