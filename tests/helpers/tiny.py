"""Tiny random transformers cut at given node layers, for tests of the method."""

from __future__ import annotations

import numpy as np

from models.common import transformer
from models.lm import model as lm
from models.lm import rotary as rotary_lm


def tiny_transformer(node_layers, seed=0, last_pos_only=True, n_ctx=3, act_fn="relu",
                     rotary_dim=0, kv_heads=2):
    """A random LayerNorm-free transformer of the modular-addition shape, scaled down, cut at
    ``node_layers``; returns ``(model, tokens)`` with 64 random token sequences. ``rotary_dim``
    > 0: rotary embeddings on that many dims of each head instead of position embeddings;
    ``kv_heads`` 1: grouped-query attention (2 query heads)."""
    cfg = transformer.TransformerConfig(
        n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, d_vocab=11, n_ctx=n_ctx,
        act_fn=act_fn, normalization=None,
        last_pos_module="add_resid1.0" if last_pos_only else None,
        positional_embedding="rotary" if rotary_dim else "standard", rotary_dim=rotary_dim,
        rotary_base=7.0, n_key_value_heads=kv_heads)
    rng = np.random.default_rng(seed)
    shapes = {"embed.W_E": (11, 8), "pos_embed.W_pos": (n_ctx, 8),
              "blocks.0.attn.W_Q": (2, 8, 4), "blocks.0.attn.W_K": (kv_heads, 8, 4),
              "blocks.0.attn.W_V": (kv_heads, 8, 4), "blocks.0.attn.W_O": (2, 4, 8),
              "blocks.0.attn.b_Q": (2, 4), "blocks.0.attn.b_K": (kv_heads, 4),
              "blocks.0.attn.b_V": (kv_heads, 4),
              "blocks.0.attn.b_O": (8,), "blocks.0.mlp.W_in": (8, 16), "blocks.0.mlp.b_in": (16,),
              "blocks.0.mlp.W_out": (16, 8), "blocks.0.mlp.b_out": (8,), "unembed.W_U": (8, 11),
              "unembed.b_U": (11,)}
    if rotary_dim:
        del shapes["pos_embed.W_pos"]
    weights = {k: rng.normal(size=s) / np.sqrt(s[-2] if len(s) > 1 else 4)
               for k, s in shapes.items()}
    folded = transformer.fold_biases(cfg, weights)
    model = transformer.sectioned_model("tiny", cfg, folded, node_layers)
    tokens = rng.integers(0, 11, size=(64, n_ctx)).astype(np.int32)
    return model, tokens


def tiny_ln_weights(seed=0, n_ctx=5, n_layers=2):
    """A random GPT-2-like transformer's architecture (LayerNorm, gelu_new, scaled down), its
    unprocessed TransformerLens-named weights and the generator that drew them (for inputs)."""
    cfg = transformer.TransformerConfig(
        n_layers=n_layers, d_model=8, n_heads=2, d_head=4, d_mlp=16, d_vocab=11, n_ctx=n_ctx,
        act_fn="gelu_new", normalization="LN")
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in lm.expected_shapes(cfg).items():
        noise = rng.normal(size=shape) * 0.4
        weights[name] = 1 + noise if name.endswith(".w") else noise
    return cfg, weights, rng


def tiny_ln_transformer(node_layers, seed=0, n_ctx=5, n_layers=2):
    """The :func:`tiny_ln_weights` transformer processed and folded as pretrained language models
    are, cut at ``node_layers``; returns ``(model, tokens)``."""
    cfg, weights, rng = tiny_ln_weights(seed, n_ctx, n_layers)
    model = lm.sectioned_model("tiny_ln", cfg, weights, node_layers, n_pos=n_ctx)
    tokens = rng.integers(0, 11, size=(48, n_ctx)).astype(np.int32)
    return model, tokens


# Tiny Pythia- and Llama-shaped configurations: partial rotary and parallel blocks; RMSNorm,
# whole-head rotary with another base, grouped-query attention and the gated MLP.
LM_FAMILIES = {
    "pythia": transformer.TransformerConfig(
        n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=12, d_vocab=11, n_ctx=5, act_fn="gelu",
        normalization="LN", positional_embedding="rotary", rotary_dim=2, parallel_attn_mlp=True),
    "llama": transformer.TransformerConfig(
        n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=12, d_vocab=11, n_ctx=5, act_fn="silu",
        normalization="RMS", positional_embedding="rotary", rotary_dim=4, rotary_base=1000.0,
        n_key_value_heads=1, gated_mlp=True),
}


def tiny_lm_family(name, node_layers, n_samples=12):
    """A random model of ``LM_FAMILIES[name]``'s structure, processed and folded as the
    converters do, cut at ``node_layers``; returns ``(model, tokens)``."""
    cfg = LM_FAMILIES[name]
    rng = np.random.default_rng(0)
    weights = {k: (1.0 if k.endswith(".w") else 0.0) + 0.4 * rng.standard_normal(shape)
               for k, shape in lm.expected_shapes(cfg, rotary_lm.RotaryLanguageModel).items()}
    model = lm.sectioned_model(name, cfg, weights, node_layers, cfg.n_ctx)
    return model, rng.integers(0, cfg.d_vocab, (n_samples, cfg.n_ctx))
