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

Models whose norms are RMSNorm (the Llama family, ``rms=True``) get only what stays exact there:
each norm's scale is folded into the weights reading it, with no centring of reading or writing
weights (RMSNorm does not subtract the mean, so the residual's mean is part of what it reads:
removing it would change the model), then steps 3 and 4. Rotary models have no ``W_pos``;
gated MLPs read ``ln2`` through ``W_gate`` as well as ``W_in``; with grouped-query attention each
value head's bias reaches ``b_O`` through every query head that reads it.
"""

from __future__ import annotations

import numpy as np


def _centre(w, axis: int):
    return w - w.mean(axis=axis, keepdims=True)


def fold_layer_norm(tl: dict, n_layers: int, centre: bool = True) -> dict:
    """Fold each LN's ``w``/``b`` into the weights reading it, and centre those weights
    (``centre=False`` for RMSNorm, which has no ``b`` and whose output is not mean-free)."""
    out = dict(tl)

    def fold(w_ln, b_ln, weight: str, bias: str, d_axis: int):
        # (n w_ln + b_ln) W + bias = n (w_ln * W) + (b_ln W + bias)
        w = out[weight]
        shape = [1] * w.ndim
        shape[d_axis] = -1
        if b_ln is not None:
            out[bias] = out[bias] + np.sum(w * b_ln.reshape(shape), axis=d_axis)
        scaled = w * w_ln.reshape(shape)
        out[weight] = _centre(scaled, d_axis) if centre else scaled

    def norm(name):
        return out.pop(name + ".w"), out.pop(name + ".b", None)

    for layer in range(n_layers):
        block = f"blocks.{layer}."
        w_ln1, b_ln1 = norm(block + "ln1")
        for name in "QKV":
            fold(w_ln1, b_ln1, block + f"attn.W_{name}", block + f"attn.b_{name}", d_axis=1)
        w_ln2, b_ln2 = norm(block + "ln2")
        for name in ("in", "gate"):
            if block + f"mlp.W_{name}" in out:
                fold(w_ln2, b_ln2, block + f"mlp.W_{name}", block + f"mlp.b_{name}", d_axis=0)
    if "unembed.W_U" in out:
        fold(*norm("ln_final"), "unembed.W_U", "unembed.b_U", d_axis=0)
    return out


def center_writing_weights(tl: dict, n_layers: int) -> dict:
    """Centre everything written into the residual stream over ``d_model``."""
    out = dict(tl)
    names = ["embed.W_E"] + (["pos_embed.W_pos"] if "pos_embed.W_pos" in tl else [])
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
        b_v, w_o = out[at + "b_V"], out[at + "W_O"]
        b_v = np.repeat(b_v, len(w_o) // len(b_v), axis=0)  # one per query head
        out[at + "b_O"] = out[at + "b_O"] + np.einsum("he,hed->d", b_v, w_o)
        out[at + "b_V"] = np.zeros_like(out[at + "b_V"])
    return out


def process(tl: dict, n_layers: int, rms: bool = False) -> dict:
    """All four rewrites, in TransformerLens's order, on float64 copies of ``tl`` (``rms``: the
    RMSNorm subset, see the module docstring).

    ``tl`` must hold every bias (zeros where the architecture has none) and the LN parameters
    ``blocks.L.ln1.w/b``, ``blocks.L.ln2.w/b``, ``ln_final.w/b`` (RMSNorm: ``w`` only); the
    result has no LN parameters. For a truncated model (see
    :func:`models.lm.model.sectioned_model`) ``tl`` may hold only the first ``n_layers`` blocks and
    leave out ``ln_final`` and the unembedding; each rewrite acts on one block (or the embedding,
    or the unembedding) at a time, so the blocks kept come out as in the whole model.
    """
    tl = {k: np.asarray(v, np.float64) for k, v in tl.items()}
    tl = fold_layer_norm(tl, n_layers, centre=not rms)
    if not rms:
        tl = center_writing_weights(tl, n_layers)
    if "unembed.W_U" in tl:
        tl = center_unembed(tl)
    return fold_value_biases(tl, n_layers)
