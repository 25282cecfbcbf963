"""Scores of a model's outputs (docs/method.md 3.4): accuracy or cross-entropy, summed per batch
on the device and combined on the host."""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


METRICS = ("accuracy", "ce_loss")


def metric_sums(metric: str, logits, labels, weights):
    """Per-batch sums of a metric: ``(total, count)`` over the real (weight 1) samples.

    Outputs with one position are compared with per-sample labels at their last position; label
    arrays with a position axis count every token (docs/method.md 3.4).
    """
    if labels.ndim == 1:
        logits = logits[:, -1]
        token_weights = weights
    else:
        token_weights = jnp.broadcast_to(weights[:, None], labels.shape)
    wide = jnp.result_type(float)  # float64 where JAX has it (x64 on), else float32 (a TPU)
    if metric == "accuracy":
        hits = (jnp.argmax(logits, axis=-1) == labels).astype(wide)
        return jnp.sum(hits * token_weights), jnp.sum(token_weights)
    logp = jax.nn.log_softmax(logits.astype(wide), axis=-1)
    nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * token_weights), jnp.sum(token_weights)


def combine(metric: str, sums: Sequence[tuple[float, float]]) -> float:
    """The score from per-batch ``(total, count)``: overall accuracy, or the mean over batches of
    the per-token cross-entropy (the reference's convention, docs/method.md 3.4)."""
    if metric == "accuracy":
        return float(sum(t for t, _ in sums) / sum(c for _, c in sums))
    return float(np.mean([t / c for t, c in sums]))


def is_good(metric: str, base: float, delta: float) -> Callable[[float], bool]:
    """Whether a score is within ``delta`` of ``base`` in the metric's good direction."""
    if metric == "accuracy":
        return lambda score: score >= base - delta
    return lambda score: score <= base + delta
