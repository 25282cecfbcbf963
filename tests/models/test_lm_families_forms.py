"""Closed forms in Pythia- and Llama-shaped models agree with the general VJP path to 1e-10:
LayerNorm halves, RMSNorm halves (the LayerNorm forms without centring), the parallel block's MLP
section, the unembedding, and the positionwise shortcuts. Rotary and grouped-query attention,
parallel blocks' ``ln2`` halves and the gated MLP declare no form (the general path)."""

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


def check_section(name, layer):
    """``M'`` and edges of the section starting at ``layer``: fast paths == general path."""
    model, tokens = case(name)
    i = model.node_layers.index(layer)
    section = model.sections[i]
    assert section.form is not None or section.positionwise, "no fast path here"
    nxt = bases(name).get(model.node_layers[i + 1])
    c_next = None if nxt is None else nxt.C
    fast = BuildConfig()
    assert rel(compute_m_prime(model, i, tokens, fast, c_next),
               compute_m_prime(model, i, tokens, GENERAL, c_next)) < 1e-10
    b_in = bases(name)[layer]
    assert rel(compute_edges(model, i, tokens, fast, b_in, c_next),
               compute_edges(model, i, tokens, GENERAL, b_in, c_next)) < 1e-10


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
