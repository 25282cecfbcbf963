"""TransformerLens's default weight processing, which the reference's LM activations inherit
(docs/method.md 4.4).

Input and output are TransformerLens-named weight dicts (``blocks.L.attn.W_Q`` ``(H, d, dh)``,
``blocks.L.ln1.w`` ...) of a pre-LayerNorm transformer. Four function-preserving rewrites, in order:

1. fold LayerNorm: each LN's scale and shift go into the weights and biases that read its output
   (``W_Q/W_K/W_V`` for ``ln1``, ``W_in`` for ``ln2``, ``W_U`` for ``ln_final``), leaving a bare
   "LNPre" (centre and normalise); those reading weights are then centred over ``d_model``, which
   changes nothing because a normalised vector has zero mean;
2. centre the writing weights (``W_E, W_pos, W_O, b_O, W_out, b_out``) over ``d_model``: the
   residual stream becomes mean-free at every position, which every LN would have removed anyway;
3. centre the unembedding over the vocabulary: logits shift by a per-position constant, softmax
   is unchanged;
4. fold the value biases into ``b_O`` (attention patterns sum to 1).

So the processed model's residual stream is the original one minus its mean over ``d_model``,
its logits are the original ones minus their mean over the vocabulary, and every LN output is
unchanged. Everything is computed in float64.
"""

from __future__ import annotations

import numpy as np


def _centre(w, axis: int):
    return w - w.mean(axis=axis, keepdims=True)


def fold_layer_norm(tl: dict, n_layers: int) -> dict:
    """Fold each LN's ``w``/``b`` into the weights reading it, and centre those weights."""
    out = dict(tl)

    def fold(w_ln, b_ln, weight: str, bias: str, d_axis: int):
        # (n w_ln + b_ln) W + bias = n (w_ln * W) + (b_ln W + bias)
        w = out[weight]
        shape = [1] * w.ndim
        shape[d_axis] = -1
        out[bias] = out[bias] + np.sum(w * b_ln.reshape(shape), axis=d_axis)
        out[weight] = _centre(w * w_ln.reshape(shape), d_axis)

    for layer in range(n_layers):
        block = f"blocks.{layer}."
        w_ln1, b_ln1 = out.pop(block + "ln1.w"), out.pop(block + "ln1.b")
        for name in "QKV":
            fold(w_ln1, b_ln1, block + f"attn.W_{name}", block + f"attn.b_{name}", d_axis=1)
        fold(out.pop(block + "ln2.w"), out.pop(block + "ln2.b"), block + "mlp.W_in",
             block + "mlp.b_in", d_axis=0)
    fold(out.pop("ln_final.w"), out.pop("ln_final.b"), "unembed.W_U", "unembed.b_U", d_axis=0)
    return out


def center_writing_weights(tl: dict, n_layers: int) -> dict:
    """Centre everything written into the residual stream over ``d_model``."""
    out = dict(tl)
    names = ["embed.W_E", "pos_embed.W_pos"]
    for layer in range(n_layers):
        block = f"blocks.{layer}."
        names += [block + "attn.W_O", block + "attn.b_O", block + "mlp.W_out", block + "mlp.b_out"]
    for name in names:
        out[name] = _centre(out[name], axis=-1)
    return out


def center_unembed(tl: dict) -> dict:
    """Centre ``W_U`` and ``b_U`` over the vocabulary."""
    out = dict(tl)
    out["unembed.W_U"] = _centre(out["unembed.W_U"], axis=-1)
    out["unembed.b_U"] = _centre(out["unembed.b_U"], axis=-1)
    return out


def fold_value_biases(tl: dict, n_layers: int) -> dict:
    """``b_O += sum_h b_V[h] W_O[h]`` and ``b_V = 0``: each head's output gains ``b_V W_O``
    whatever its pattern, since the pattern sums to 1."""
    out = dict(tl)
    for layer in range(n_layers):
        at = f"blocks.{layer}.attn."
        out[at + "b_O"] = out[at + "b_O"] + np.einsum("he,hed->d", out[at + "b_V"], out[at + "W_O"])
        out[at + "b_V"] = np.zeros_like(out[at + "b_V"])
    return out


def process(tl: dict, n_layers: int) -> dict:
    """All four rewrites, in TransformerLens's order, on float64 copies of ``tl``.

    ``tl`` must hold every bias (zeros where the architecture has none) and the LN parameters
    ``blocks.L.ln1.w/b``, ``blocks.L.ln2.w/b``, ``ln_final.w/b``; the result has no LN parameters.
    """
    tl = {k: np.asarray(v, np.float64) for k, v in tl.items()}
    tl = fold_layer_norm(tl, n_layers)
    tl = center_writing_weights(tl, n_layers)
    tl = center_unembed(tl)
    return fold_value_biases(tl, n_layers)
