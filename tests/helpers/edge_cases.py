"""Shared cases of the edge-forward tests (tests/ablation/test_edge_*.py): one block of a tiny
model of each normalisation layout, and edge masks that exercise every shortcut's corners."""

from __future__ import annotations

from tests.helpers.tiny import tiny_lm_family, tiny_ln_transformer

BLOCK_LAYERS = ("ln1.0", "ln1_out.0", "attn_in.0", "ln2.0", "ln2_out.0", "mlp_in.0", "ln1.1")


def tiny_block(layout: str, layers=BLOCK_LAYERS, n_samples: int = 32):
    """``(model, tokens)``: a LayerNorm GPT-2-like (``"ln"``), Llama- or Pythia-shaped tiny
    model cut at ``layers``."""
    if layout == "ln":
        return tiny_ln_transformer(layers)
    return tiny_lm_family(layout, layers, n_samples=n_samples)


def edge_masks(shape, rng):
    """Random masks of densities 0.05, 0.5 and 0.95, with rows keeping everything, rows keeping
    only the constant input node, and rows shared."""
    for p in (0.05, 0.5, 0.95):
        mask = rng.random(shape) < p
        mask[:, 0] = True
        mask[0] = True
        mask[1, 1:] = False
        mask[2] = mask[3]
        yield mask
