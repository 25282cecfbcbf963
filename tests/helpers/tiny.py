"""Tiny random transformers cut at given node layers, for tests of the method."""

from __future__ import annotations

import numpy as np

from models.common import transformer
from models.lm import model as lm


def tiny_transformer(node_layers, seed=0, last_pos_only=True, n_ctx=3, act_fn="relu"):
    """A random LayerNorm-free transformer of the modular-addition shape, scaled down, cut at
    ``node_layers``; returns ``(model, tokens)`` with 64 random token sequences."""
    cfg = transformer.TransformerConfig(
        n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, d_vocab=11, n_ctx=n_ctx,
        act_fn=act_fn, normalization=None,
        last_pos_module="add_resid1.0" if last_pos_only else None)
    rng = np.random.default_rng(seed)
    shapes = {"embed.W_E": (11, 8), "pos_embed.W_pos": (n_ctx, 8),
              "blocks.0.attn.W_Q": (2, 8, 4), "blocks.0.attn.W_K": (2, 8, 4),
              "blocks.0.attn.W_V": (2, 8, 4), "blocks.0.attn.W_O": (2, 4, 8),
              "blocks.0.attn.b_Q": (2, 4), "blocks.0.attn.b_K": (2, 4), "blocks.0.attn.b_V": (2, 4),
              "blocks.0.attn.b_O": (8,), "blocks.0.mlp.W_in": (8, 16), "blocks.0.mlp.b_in": (16,),
              "blocks.0.mlp.W_out": (16, 8), "blocks.0.mlp.b_out": (8,), "unembed.W_U": (8, 11),
              "unembed.b_U": (11,)}
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
    model = lm.sectioned("tiny_ln", cfg, weights, node_layers, n_pos=n_ctx)
    tokens = rng.integers(0, 11, size=(48, n_ctx)).astype(np.int32)
    return model, tokens
