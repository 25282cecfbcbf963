"""The paper's modular-addition transformer (docs/method.md 4.2): data, split, Flax model,
checkpoints.

One layer, no LayerNorm, ReLU MLP, tokens ``[a, b, "="]`` with label ``(a + b) mod p`` at the
last position. The trainable model is a plain Flax module whose parameters carry
TransformerLens names and shapes, so the same ``.npz`` checkpoint format serves the authors'
weights and ours. For LIB the weights are bias-folded and cut into sections
(:mod:`models.common.transformer`), keeping only the last position after attention as the reference
does (``last_pos_module="add_resid1.0"``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from libjax.errors import ConfigError
from models.common import checkpoints, transformer

P = 113
ASSETS = Path(__file__).resolve().parents[1] / "assets"
SPLIT_FILE = ASSETS / "modadd_split_p113_seed0.npz"
DEFAULT_CHECKPOINT = ASSETS / "modadd_p113_seed0.npz"
PAPER_NODE_LAYERS = ("ln1.0", "ln2.0", "unembed", "output")


def config(p: int = P, n_ctx: int = 3) -> transformer.TransformerConfig:
    """The paper's architecture: 1 layer, d_model 128, 4 heads x 32, d_mlp 512, ReLU, no LN."""
    return transformer.TransformerConfig(
        n_layers=1, d_model=128, n_heads=4, d_head=32, d_mlp=512, d_vocab=p + 1, n_ctx=n_ctx,
        act_fn="relu", normalization=None, use_attn_scale=True, last_pos_module="add_resid1.0")


# --- data -----------------------------------------------------------------------------------------

def dataset(p: int = P) -> tuple[np.ndarray, np.ndarray]:
    """All pairs in a-major order: tokens ``(p*p, 3)`` = ``[a, b, p]`` and labels ``(a+b) % p``."""
    a, b = np.divmod(np.arange(p * p), p)
    tokens = np.stack([a, b, np.full_like(a, p)], axis=1).astype(np.int32)
    return tokens, ((a + b) % p).astype(np.int32)


def split_indices(split: str) -> np.ndarray:
    """Indices of the reference's train (3830) or test (8939) split (torch ``randperm`` seed 0)."""
    if split not in ("train", "test", "all"):
        raise ConfigError(f"unknown split {split!r} of the modular-addition data; use 'train', "
                          "'test' or 'all'")
    if split == "all":
        return np.arange(P * P)
    with np.load(SPLIT_FILE) as f:
        return f[f"{split}_idx"]


def split_data(split: str) -> tuple[np.ndarray, np.ndarray]:
    tokens, labels = dataset()
    idx = split_indices(split)
    return tokens[idx], labels[idx]


# --- the trainable (unfolded) model ---------------------------------------------------------------

class ModAddTransformer(nn.Module):
    """Unfolded 1-layer attention-only-then-MLP transformer with TransformerLens parameter
    shapes."""

    cfg: transformer.TransformerConfig

    @nn.compact
    def __call__(self, tokens, last_position_only: bool = False):
        """tokens ``(batch, pos)`` -> logits ``(batch, pos, vocab)`` (``pos = 1`` if
        ``last_position_only``: the same numbers, without the positions the loss ignores)."""
        c = self.cfg
        init = nn.initializers.normal(stddev=0.8 / math.sqrt(c.d_model))
        zeros = nn.initializers.zeros
        p = lambda name, shape, f=init: self.param(name, f, shape)  # noqa: E731
        w_e, w_pos = (p("embed.W_E", (c.d_vocab, c.d_model)),
                      p("pos_embed.W_pos", (c.n_ctx, c.d_model)))
        n_pos = tokens.shape[-1]
        resid = w_e[tokens] + w_pos[:n_pos]
        # (batch, heads, pos, e) layout and 2-D weight matrices: fast batched matmuls in XLA.
        heads = lambda a: jnp.transpose(a.reshape(*a.shape[:2], c.n_heads, -1), (0, 2, 1, 3))  # noqa
        flat = lambda w: jnp.transpose(w, (1, 0, 2)).reshape(w.shape[1], -1)  # noqa: E731
        for layer in range(c.n_layers):
            at, ml = f"blocks.{layer}.attn.", f"blocks.{layer}.mlp."
            hd, hb = (c.n_heads, c.d_model, c.d_head), (c.n_heads, c.d_head)
            q, k, v = (heads(resid @ flat(p(at + f"W_{n}", hd))
                             + p(at + f"b_{n}", hb, zeros).ravel())
                       for n in "QKV")
            causal = np.tril(np.ones((n_pos, n_pos), bool))
            if last_position_only and layer == c.n_layers - 1:
                q, causal, resid = q[:, :, -1:], causal[-1:], resid[:, -1:]
            scores = q @ jnp.swapaxes(k, -1, -2) / math.sqrt(c.d_head)
            pattern = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
            z = jnp.transpose(pattern @ v, (0, 2, 1, 3)).reshape(*resid.shape[:2], -1)
            w_o = p(at + "W_O", (c.n_heads, c.d_head, c.d_model))
            resid = resid + z @ w_o.reshape(-1, c.d_model) + p(at + "b_O", (c.d_model,), zeros)
            pre = resid @ p(ml + "W_in", (c.d_model, c.d_mlp)) + p(ml + "b_in", (c.d_mlp,), zeros)
            post = transformer.activation(c.act_fn)(pre)
            resid = (resid + post @ p(ml + "W_out", (c.d_mlp, c.d_model))
                     + p(ml + "b_out", (c.d_model,), zeros))
        return (resid @ p("unembed.W_U", (c.d_model, c.d_vocab))
                + p("unembed.b_U", (c.d_vocab,), zeros))


def tl_to_flax(tl: dict) -> dict:
    return {"params": jax.device_put(dict(tl))}


# --- checkpoints ----------------------------------------------------------------------------------

def load(path: str | os.PathLike | None = None) -> tuple[transformer.TransformerConfig, dict]:
    """Load a modular-addition checkpoint (TransformerLens-named ``.npz``): (config, weights).

    Accepts the authors' files (``weights_modadd_seed*.npz``) and those written by
    ``scripts/train_modadd.py``; ``None`` loads the model shipped with the package.
    """
    path = DEFAULT_CHECKPOINT if path is None else Path(path)
    weights, meta = checkpoints.load_npz(path)
    if meta.get("model") not in (None, "modadd"):
        raise checkpoints.CheckpointError(
            f"{path} is a checkpoint of model {meta['model']!r}, not of the modular-addition model")
    vocab, d_model = checkpoints.shape_of(weights, "embed.W_E", path, ndim=2)
    cfg = config(p=vocab - 1,
                 n_ctx=checkpoints.shape_of(weights, "pos_embed.W_pos", path, ndim=2)[0])
    checkpoints.check_shapes(weights, expected_shapes(cfg), path)
    return cfg, weights


def expected_shapes(cfg: transformer.TransformerConfig) -> dict[str, tuple[int, ...]]:
    variables = jax.eval_shape(lambda: ModAddTransformer(cfg).init(  # abstract: compiles nothing
        jax.random.key(0), jnp.zeros((1, cfg.n_ctx), jnp.int32)))
    return {k: tuple(v.shape) for k, v in variables["params"].items()}


def save(path: str | os.PathLike, weights: dict, **meta) -> None:
    """Write TransformerLens-named weights plus metadata to ``path`` (``.npz``)."""
    checkpoints.save_npz(path, weights, model="modadd", **meta)


def sectioned_model(weights: dict, cfg: transformer.TransformerConfig,
                    node_layers=PAPER_NODE_LAYERS,
              dtype=np.float64, last_pos_only: bool = True):
    """Folded, sectioned model (docs/method.md 4.2); ``last_pos_only`` keeps only the last position
    after
    attention, as the paper's builds do."""
    cfg = dataclasses.replace(cfg, last_pos_module="add_resid1.0" if last_pos_only else None)
    folded = jax.device_put(transformer.fold_biases(cfg, weights, dtype))
    return transformer.sectioned_model("modadd", cfg, folded, node_layers)


def accuracy(logits, labels) -> float:
    """Accuracy of last-position predictions."""
    return float(np.mean(np.asarray(jnp.argmax(logits[:, -1], axis=-1)) == labels))
