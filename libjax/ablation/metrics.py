"""Scores of a model's outputs (docs/method.md 3.4): accuracy, cross-entropy, or the KL divergence
to the unablated model, summed per batch on the device and combined on the host."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

METRICS = ("accuracy", "ce_loss", "kl")
# Metrics scored against the unablated model's outputs (the evaluator supplies them).
NEEDS_REFERENCE = ("kl",)
TOKEN_CHUNK = 256  # tokens whose vocabulary-wide log-softmax is held in float64 at once


def _chunked(fn: Callable, *arrays):
    """``fn`` over the leading axis of ``arrays`` in chunks of :data:`TOKEN_CHUNK` rows, so a
    float64 copy of a ``(tokens, vocab)`` array never exists whole."""
    return jax.lax.map(lambda rows: fn(*rows), arrays, batch_size=TOKEN_CHUNK)


def _token_nll(logits, labels, wide):
    """Per-token ``-log softmax(logits)[label]`` in ``wide``, a few tokens at a time."""
    def one(row, label):
        row = row.astype(wide)
        return jax.nn.logsumexp(row) - row[label]
    return _chunked(one, logits, labels)


def _token_kl(logits, reference, wide):
    """Per-token ``KL(softmax(reference) || softmax(logits))`` in ``wide``."""
    def one(row, ref):
        logp, logq = jax.nn.log_softmax(ref.astype(wide)), jax.nn.log_softmax(row.astype(wide))
        return jnp.sum(jnp.exp(logp) * (logp - logq))
    return _chunked(one, logits, reference)


def metric_sums(metric: str, logits, labels, weights, reference: Optional[jax.Array] = None):
    """Per-batch sums of a metric: ``(total, count)`` over the real (weight 1) samples.

    Outputs with one position are compared with per-sample labels at their last position; label
    arrays with a position axis (a language model's next tokens) count every token
    (docs/method.md 3.4). ``reference``: the unablated model's logits, shaped like ``logits``
    (``kl`` only).
    """
    if labels.ndim == 1:
        logits = logits[:, -1]
        reference = None if reference is None else reference[:, -1]
        token_weights = weights
    else:
        token_weights = jnp.broadcast_to(weights[:, None], labels.shape)
    wide = jnp.result_type(float)  # float64 where JAX has it (x64 on), else float32 (a TPU)
    token_weights = token_weights.astype(wide)
    count = jnp.sum(token_weights)
    if metric == "accuracy":
        hits = (jnp.argmax(logits, axis=-1) == labels).astype(wide)
        return jnp.sum(hits * token_weights), count
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    if metric == "kl":
        per_token = _token_kl(flat, reference.reshape(-1, vocab), wide)
    else:
        per_token = _token_nll(flat, labels.reshape(-1), wide)
    return jnp.sum(per_token * token_weights.reshape(-1)), count


def combine(metric: str, sums: Sequence[tuple[float, float]]) -> float:
    """The score from per-batch ``(total, count)``: overall accuracy, or the mean over batches of
    the per-token cross-entropy or KL divergence (the reference's convention, docs/method.md
    3.4)."""
    if metric == "accuracy":
        return float(sum(t for t, _ in sums) / sum(c for _, c in sums))
    return float(np.mean([t / c for t, c in sums]))


def is_good(metric: str, base: float, delta: float) -> Callable[[float], bool]:
    """Whether a score is within ``delta`` of ``base`` in the metric's good direction."""
    if metric == "accuracy":
        return lambda score: score >= base - delta
    return lambda score: score <= base + delta
