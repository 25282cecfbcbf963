"""Rotary decoders as trained (Pythia/GPT-NeoX, the Llama family): the unprocessed Flax model.

:class:`RotaryLanguageModel` is what :class:`models.lm.model.LanguageModel` is for GPT-2, for the
structures of :mod:`models.pythia` and :mod:`models.llama`: rotary queries and keys
(:func:`models.common.transformer.rotate`), grouped-query attention, LayerNorm or RMSNorm with their
scales, sequential or parallel attention and MLP, plain or gated MLP. Its parameters carry
TransformerLens names and shapes, so that the converters' output feeds it directly and the tests
pin every step against Hugging Face before weight processing and bias folding.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from libjax.errors import CheckpointError
from models.common import transformer


def rope(hf: dict, what: str, fraction_key: str | None = None,
         default_fraction: float = 1.0) -> tuple[float, float]:
    """``(theta, rotated fraction of each head)`` of a Hugging Face config, read as transformers
    5 reads it (``RotaryEmbeddingConfigMixin.convert_rope_params_to_dict``): the legacy
    ``rope_scaling`` dict if it is set (it takes precedence over ``rope_parameters``), else
    ``rope_parameters``; a theta or fraction missing there comes from the top-level ``rope_theta``
    (GPT-NeoX, ``fraction_key`` given: ``rotary_emb_base``) and ``partial_rotary_factor``
    (GPT-NeoX: ``fraction_key``, ``rotary_pct``). Any rope type but the original one
    (``default``: no scaling) is refused, naming it, so a scaled model is never built unscaled."""
    params = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise CheckpointError(f"{what} with rope type {kind!r} (rope_scaling/rope_parameters) is "
                              "not supported: only the original rotary embedding (rope_type "
                              "'default', no scaling) is")
    base = hf.get("rotary_emb_base", 10000.0) if fraction_key else hf.get("rope_theta", 10000.0)
    theta = params.get("rope_theta", base)
    fraction = params.get("partial_rotary_factor", hf.get(fraction_key, default_fraction)
                          if fraction_key else hf.get("partial_rotary_factor", 1.0))
    return float(theta), float(fraction)


class RotaryLanguageModel(nn.Module):
    """A pre-norm rotary decoder before weight processing, batched.

    Parameters: ``embed.W_E``; per block ``ln1.w``/``ln2.w`` (and ``.b`` with LayerNorm),
    ``attn.W_Q`` ``(H, d, dh)``, ``attn.W_K``/``W_V`` ``(H_kv, d, dh)``, their biases,
    ``attn.W_O`` ``(H, dh, d)``, ``attn.b_O``, ``mlp.W_in`` (the up projection), ``mlp.W_gate``
    (gated MLPs), ``mlp.W_out`` and biases; ``ln_final``; ``unembed.W_U``/``b_U``.
    """

    cfg: transformer.TransformerConfig

    @nn.compact
    def __call__(self, tokens):
        """tokens ``(batch, pos)`` -> logits ``(batch, pos, vocab)``."""
        c = self.cfg
        rms = c.normalization == "RMS"
        normal, zeros, ones = (nn.initializers.normal(0.02), nn.initializers.zeros,
                               nn.initializers.ones)
        p = lambda name, shape, init=normal: self.param(name, init, shape)  # noqa: E731

        def norm(x, name):
            if rms:
                scaled = x / jnp.sqrt(jnp.mean(x**2, axis=-1, keepdims=True) + c.ln_eps)
                return scaled * p(name + ".w", (c.d_model,), ones)
            centred = x - jnp.mean(x, axis=-1, keepdims=True)
            normed = centred / jnp.sqrt(jnp.mean(centred**2, axis=-1, keepdims=True) + c.ln_eps)
            return normed * p(name + ".w", (c.d_model,), ones) + p(name + ".b", (c.d_model,), zeros)

        def project(x, name, heads):  # (b, p, d) -> (b, p, heads * dh), rotated for Q and K
            w = p(name.replace("?", "W"), (heads, c.d_model, c.d_head))
            b = p(name.replace("?", "b"), (heads, c.d_head), zeros)
            out = (jnp.einsum("bpd,hde->bphe", x, w) + b).reshape(*x.shape[:-1], -1)
            return out if name.endswith("V") else transformer.rotate(c, out, heads)

        def attention(x, block, layer):
            n_pos, groups = x.shape[1], c.n_heads // c.kv_heads
            split = lambda a, h: a.reshape(*a.shape[:-1], h, -1).swapaxes(1, 2)  # noqa: E731
            q = split(project(x, block + "attn.?_Q", c.n_heads), c.n_heads)
            k, v = (jnp.repeat(split(project(x, block + f"attn.?_{n}", c.kv_heads), c.kv_heads),
                               groups, axis=1) for n in "KV")
            scores = q @ jnp.swapaxes(k, -1, -2) / transformer.attention_scale(c)
            allowed = transformer.attention_mask(c, layer, n_pos)
            pattern = jax.nn.softmax(jnp.where(allowed, scores, -jnp.inf), axis=-1)
            w_o = p(block + "attn.W_O", (c.n_heads, c.d_head, c.d_model))
            return jnp.einsum("bhpe,hed->bpd", pattern @ v, w_o) + p(block + "attn.b_O",
                                                                       (c.d_model,), zeros)

        def mlp(x, block):
            up = x @ p(block + "mlp.W_in", (c.d_model, c.d_mlp)) + p(block + "mlp.b_in",
                                                                      (c.d_mlp,), zeros)
            act = transformer.activation(c.act_fn)
            if c.gated_mlp:
                gate = (x @ p(block + "mlp.W_gate", (c.d_model, c.d_mlp))
                        + p(block + "mlp.b_gate", (c.d_mlp,), zeros))
                hidden = act(gate) * up
            else:
                hidden = act(up)
            return (hidden @ p(block + "mlp.W_out", (c.d_mlp, c.d_model))
                    + p(block + "mlp.b_out", (c.d_model,), zeros))

        resid = p("embed.W_E", (c.d_vocab, c.d_model))[tokens]
        for layer in range(c.n_layers):
            block = f"blocks.{layer}."
            attn = attention(norm(resid, block + "ln1"), block, layer)
            if c.parallel_attn_mlp:
                resid = resid + attn + mlp(norm(resid, block + "ln2"), block)
            else:
                resid = resid + attn
                resid = resid + mlp(norm(resid, block + "ln2"), block)
        x = norm(resid, "ln_final")
        return x @ p("unembed.W_U", (c.d_model, c.d_vocab)) + p("unembed.b_U", (c.d_vocab,), zeros)
