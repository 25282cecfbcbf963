"""Pretrained causal language models from Hugging Face checkpoints: what GPT-2 and GPT-Neo share.

* :class:`LanguageModel`: the model as it was trained (LayerNorm with scale and shift), a Flax
  module with TransformerLens parameter names; the architectures' converters produce its params.
* :func:`sectioned_model`: TransformerLens's weight processing
  (:mod:`models.common.weight_processing`),
  bias folding and cutting (:mod:`models.common.transformer`): the model LIB sees, whose
  node-layer activations are the reference's.
* :class:`HFWeights`: Hugging Face tensors taken by name, leftovers refused.

Their ``--model`` families are :class:`models.lm.family.LMFamily` instances.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from libjax.errors import CheckpointError
from models.common import transformer, weight_processing

# Hugging Face activation names -> ours (``gelu_pytorch_tanh`` is the same formula as gelu_new).
ACTIVATIONS = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu",
               "relu": "relu", "silu": "silu", "swish": "silu"}
BLOCK_NODE_MODULES = ("ln1", "ln1_out", "attn_in", "ln2", "ln2_out", "mlp_in")


def activation(hf_name: str, what: str) -> str:
    if hf_name not in ACTIVATIONS:
        raise CheckpointError(f"{what} with activation {hf_name!r} is not supported (supported: "
                              f"{', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[hf_name]


# --- the unprocessed model ------------------------------------------------------------------------

class LanguageModel(nn.Module):
    """A pre-LayerNorm decoder (GPT-2, GPT-Neo) before weight processing, batched.

    Parameters carry TransformerLens names and shapes (``blocks.L.attn.W_Q`` ``(H, d, dh)``,
    ``blocks.L.ln1.w`` ...); attention masking and scaling follow ``cfg`` (causal, GPT-Neo's local
    layers and unscaled scores), as in :mod:`models.common.transformer`.
    """

    cfg: transformer.TransformerConfig

    @nn.compact
    def __call__(self, tokens):
        """tokens ``(batch, pos)`` -> logits ``(batch, pos, vocab)``."""
        c = self.cfg
        normal, zeros, ones = (nn.initializers.normal(0.02), nn.initializers.zeros,
                               nn.initializers.ones)
        p = lambda name, shape, init=normal: self.param(name, init, shape)  # noqa: E731

        def layer_norm(x, name):
            centred = x - jnp.mean(x, axis=-1, keepdims=True)
            normed = centred / jnp.sqrt(jnp.mean(centred**2, axis=-1, keepdims=True) + c.ln_eps)
            return normed * p(name + ".w", (c.d_model,), ones) + p(name + ".b", (c.d_model,), zeros)

        n_pos = tokens.shape[-1]
        resid = (p("embed.W_E", (c.d_vocab, c.d_model))[tokens]
                 + p("pos_embed.W_pos", (c.n_ctx, c.d_model))[:n_pos])
        act = transformer.activation(c.act_fn)
        hd, hb = (c.n_heads, c.d_model, c.d_head), (c.n_heads, c.d_head)
        for layer in range(c.n_layers):
            block = f"blocks.{layer}."
            x = layer_norm(resid, block + "ln1")
            q, k, v = (jnp.einsum("bpd,hde->bhpe", x, p(block + f"attn.W_{n}", hd))
                       + p(block + f"attn.b_{n}", hb, zeros)[:, None, :] for n in "QKV")
            scores = q @ jnp.swapaxes(k, -1, -2) / transformer.attention_scale(c)
            allowed = transformer.attention_mask(c, layer, n_pos)
            pattern = jax.nn.softmax(jnp.where(allowed, scores, -jnp.inf), axis=-1)
            w_o = p(block + "attn.W_O", (c.n_heads, c.d_head, c.d_model))
            resid = (resid + jnp.einsum("bhpe,hed->bpd", pattern @ v, w_o)
                     + p(block + "attn.b_O", (c.d_model,), zeros))
            x = layer_norm(resid, block + "ln2")
            pre = (x @ p(block + "mlp.W_in", (c.d_model, c.d_mlp))
                   + p(block + "mlp.b_in", (c.d_mlp,), zeros))
            resid = (resid + act(pre) @ p(block + "mlp.W_out", (c.d_mlp, c.d_model))
                     + p(block + "mlp.b_out", (c.d_model,), zeros))
        x = layer_norm(resid, "ln_final")
        return x @ p("unembed.W_U", (c.d_model, c.d_vocab)) + p("unembed.b_U", (c.d_vocab,), zeros)


def expected_shapes(cfg: transformer.TransformerConfig,
                    model: type[nn.Module] = LanguageModel) -> dict[str, tuple[int, ...]]:
    """TransformerLens name -> shape of every parameter of ``model`` (:class:`LanguageModel`)."""
    variables = jax.eval_shape(lambda: model(cfg).init(  # abstract: compiles nothing
        jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
    return {k: tuple(v.shape) for k, v in variables["params"].items()}


def extent(cfg: transformer.TransformerConfig, node_layers) -> tuple[int, bool]:
    """How much of the model a build of ``node_layers`` runs: the number of blocks, and whether
    the unembedding (only for a node layer after it: ``output``). Names this cannot read count as
    the whole model (the cut then says what is wrong with them)."""
    n_blocks, unembed = 0, False
    for name in node_layers:
        module, _, layer = name.partition(".")
        if name == "output" or (layer and not layer.isdigit()):
            return cfg.n_layers, True
        if not layer:  # embed, pos_embed, add_embed; ln_final, ln_final_out, unembed
            n_blocks = max(n_blocks, cfg.n_layers if name.startswith(("ln_final", "unembed"))
                           else 0)
            unembed |= name == "unembed"
        else:  # ln1.L reads the residual after block L - 1; the rest of block L, block L
            n_blocks = max(n_blocks, int(layer) + (module != "ln1"))
    return min(n_blocks, cfg.n_layers), unembed


def processed_weights(cfg: transformer.TransformerConfig, tl: dict, n_blocks: int,
                      unembed: bool, dtype=np.float64) -> dict:
    """The first ``n_blocks`` blocks of ``tl`` (and the unembedding if ``unembed``) processed
    (TransformerLens) and bias-folded, as ``dtype`` JAX arrays: the rest is never touched."""
    rms = cfg.normalization == "RMS"
    processed = weight_processing.process(blocks_of(tl, n_blocks, unembed), n_blocks, rms=rms)
    folded = transformer.fold_biases(cfg, processed, dtype, n_blocks)
    del processed  # each array is copied once more below: free what is done with at once
    return {k: jax.device_put(folded.pop(k)) for k in list(folded)}


def blocks_of(weights: dict, n_blocks: int, unembed: bool) -> dict:
    """The TransformerLens-named entries of ``weights`` that a model truncated after ``n_blocks``
    blocks reads (``ln_final`` and the unembedding only with ``unembed``)."""
    def used(name: str) -> bool:
        head, _, rest = name.partition(".")
        if head == "blocks":
            return int(rest.partition(".")[0]) < n_blocks
        return unembed or head not in ("ln_final", "unembed")
    return {k: v for k, v in weights.items() if used(k)}


def sectioned_model(name: str, cfg: transformer.TransformerConfig, tl: dict, node_layers,
              n_pos: int, dtype=np.float64, truncate: bool = False):
    """Process (TransformerLens), bias-fold and cut the model for inputs of ``n_pos`` tokens.

    ``truncate``: only the blocks the node layers need (:func:`extent`), for a build, which never
    runs the model past its last node layer; the model's tail then ends there, not at the
    logits."""
    n_blocks, unembed = extent(cfg, node_layers) if truncate else (cfg.n_layers, True)
    params = processed_weights(cfg, tl, n_blocks, unembed, dtype)
    return truncated_model(name, cfg, params, node_layers, n_pos, n_blocks, unembed)


def truncated_model(name: str, cfg: transformer.TransformerConfig, params: dict, node_layers,
                    n_pos: int, n_blocks: int, unembed: bool):
    """The model cut at ``node_layers``, truncated after ``n_blocks`` blocks (and without the
    unembedding unless ``unembed``), from processed weights of at least that much."""
    return transformer.sectioned_model(name, cfg, blocks_of(params, n_blocks, unembed),
                                       node_layers, n_pos, n_blocks, unembed)


def block_node_layers(layer: int, n_layers: int) -> tuple[str, ...]:
    """Block ``layer``'s node layers and the residual stream after it (``ln_final`` after the
    last block) as the final node layer."""
    final = f"ln1.{layer + 1}" if layer + 1 < n_layers else "ln_final"
    return tuple(f"{m}.{layer}" for m in BLOCK_NODE_MODULES) + (final,)


# --- converting Hugging Face weights --------------------------------------------------------------

class HFWeights:
    """A checkpoint's tensors under their Hugging Face names (``transformer.`` prefix dropped and
    attention-mask buffers ignored), taken one by one so that leftovers can be reported."""

    def __init__(self, weights: dict, what: str, buffer_suffixes: tuple[str, ...]):
        self.what = what
        self._left = {k.removeprefix("transformer."): v for k, v in weights.items()
                      if not k.endswith(buffer_suffixes)}

    def take_optional(self, name: str, shape: tuple | None = None) -> np.ndarray | None:
        """The tensor ``name``, or None where the checkpoint has none (optional biases)."""
        return self.take(name, shape) if name in self._left else None

    def take(self, name: str, shape: tuple | None = None) -> np.ndarray:
        """The tensor ``name``, checked to have ``shape`` (``None`` entries: any size) before
        any split or reshape, so a checkpoint that does not fit its config is named."""
        if name not in self._left:
            raise CheckpointError(f"the {self.what} checkpoint has no weight {name!r}; is it a "
                                  f"{self.what} checkpoint of the size its config.json says?")
        value = self._left.pop(name)
        if shape is not None and (len(value.shape) != len(shape) or any(
                want is not None and got != want for got, want in zip(value.shape, shape))):
            expected = tuple("any" if n is None else n for n in shape)
            raise CheckpointError(f"the {self.what} checkpoint's weight {name!r} has shape "
                                  f"{tuple(value.shape)}, but its config.json implies {expected}; "
                                  "the weights do not fit the config (a config.json of another "
                                  "model size, or a damaged file): use the checkpoint's own "
                                  "config.json")
        return value

    def mlp(self, src: str, dst: str, tl: dict, out_in: bool, d: int, m: int) -> None:
        """Block ``src``'s MLP (``mlp.c_fc``, ``mlp.c_proj``; width ``d``, hidden ``m``) into
        ``tl`` as ``dst`` + ``mlp.W_in`` etc.; ``out_in``: weights stored ``(out, in)``
        (``nn.Linear``) rather than ``(in, out)``."""
        for ours, theirs, n_in, n_out in (("in", "c_fc", d, m), ("out", "c_proj", m, d)):
            weight = self.take(f"{src}mlp.{theirs}.weight",
                               (n_out, n_in) if out_in else (n_in, n_out))
            tl[f"{dst}mlp.W_{ours}"] = weight.T if out_in else weight
            tl[f"{dst}mlp.b_{ours}"] = self.take(f"{src}mlp.{theirs}.bias", (n_out,))

    def finish(self, tl: dict, d_vocab: int) -> dict:
        """Add the final LayerNorm and the unembedding (``lm_head.weight`` if stored, else tied to
        the embedding; no bias), and refuse tensors the conversion did not use."""
        d = tl["embed.W_E"].shape[1]
        tl["ln_final.w"] = self.take("ln_f.weight", (d,))
        tl["ln_final.b"] = self.take("ln_f.bias", (d,))
        tied = "lm_head.weight" not in self._left
        tl["unembed.W_U"] = (tl["embed.W_E"] if tied
                             else self.take("lm_head.weight", (d_vocab, d))).T
        tl["unembed.b_U"] = np.zeros(d_vocab, tl["unembed.W_U"].dtype)
        return self.all_used(tl)

    def all_used(self, tl: dict) -> dict:
        """``tl``, after refusing the tensors that the conversion did not use."""
        if self._left:
            raise CheckpointError(f"the checkpoint has weights a {self.what} model does not use: "
                                  f"{sorted(self._left)[:8]}")
        return tl


def heads_in(w: np.ndarray, n_heads: int) -> np.ndarray:
    """``(d, H * dh)`` reading weight -> ``(H, d, dh)``."""
    d = w.shape[0]
    return w.reshape(d, n_heads, -1).transpose(1, 0, 2)
