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


def bisection_masks(shape, rng):
    """The masks a bisection over random edge strengths visits on its way to a random number of
    edges: consecutive masks differ in half as many edges as the last two did."""
    from libjax.ablation.masks import edge_mask
    from libjax.ablation.schedules import Bisect, bisect

    edges = rng.random(shape)
    n = edges[:, 1:].size
    target = int(rng.integers(1, n))
    masks = []

    def evaluate(n_ablated):
        masks.append(edge_mask(edges, n - n_ablated, free_const_column=True))
        return n - n_ablated

    bisect(evaluate, lambda kept: kept >= target, n, Bisect(0.05))
    return masks
