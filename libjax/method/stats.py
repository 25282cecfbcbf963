"""Streaming means and Gram matrices of node-layer activations (docs/method.md 1.3, 1.4).

One pass over the data: each batch contributes its count, mean and centred scatter matrix, merged
with Chan et al.'s parallel update. This avoids both the reference's second pass and the
cancellation of ``E[f f^T] - mu mu^T``. Rows are (sample, position) pairs, and padded samples and
skipped positions carry weight 0, so the count is that of the kept rows. The float64 policy merges
on the device in float64 (:func:`merge`); the mixed policy computes each batch's moments in float32
and merges them on the host in float64 (:func:`merge_on_host`), so only one batch's sums are ever
float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class Moments:
    """Running statistics of a set of row vectors: count, mean and centred scatter
    ``sum (f-m)(f-m)^T``."""

    count: jnp.ndarray  # ()
    mean: jnp.ndarray  # (d,)
    scatter: jnp.ndarray  # (d, d)

    @classmethod
    def zeros(cls, dim: int) -> Moments:
        return cls(np.zeros(()), np.zeros(dim), np.zeros((dim, dim)))  # host: no compile


def batch_moments(acts, weights, dtype=jnp.float64) -> Moments:
    """Moments of ``acts`` ``(batch, pos, d)`` in ``dtype``; ``weights`` ``(batch,)`` are 1 for
    real samples and 0 for padding, or ``(batch, pos)`` also 0 at skipped positions
    (docs/method.md 1.13)."""
    acts = acts.astype(dtype)
    w = weights.astype(dtype)
    w = jnp.broadcast_to(w[:, None] if w.ndim == 1 else w, acts.shape[:2])
    count = jnp.sum(w)
    mean = jnp.einsum("bp,bpd->d", w, acts) / jnp.maximum(count, 1.0)
    centred = acts - mean
    scatter = jnp.einsum("bp,bpi,bpj->ij", w, centred, centred)
    return Moments(count, mean, scatter)


def merge(a: Moments, b: Moments) -> Moments:
    """Moments of the union of two disjoint sets (Chan, Golub & LeVeque)."""
    count = a.count + b.count
    frac_b = jnp.where(count > 0, b.count / jnp.maximum(count, 1.0), 0.0)
    delta = b.mean - a.mean
    mean = a.mean + delta * frac_b
    scatter = a.scatter + b.scatter + jnp.outer(delta, delta) * a.count * frac_b
    return Moments(count, mean, scatter)


def merge_on_host(a: Moments, b: Moments) -> Moments:
    """:func:`merge` in float64 NumPy, for batch moments computed on the device in float32."""
    a, b = (jax.tree.map(lambda x: np.asarray(x, np.float64), m) for m in (a, b))
    count = a.count + b.count
    frac_b = b.count / count if count > 0 else 0.0
    delta = b.mean - a.mean
    return Moments(count, a.mean + delta * frac_b,
                   a.scatter + b.scatter + np.outer(delta, delta) * (a.count * frac_b))


def mean_and_gram(m: Moments, center: bool, has_bias_coordinate: bool):
    """The layer's mean and Gram matrix, each divided by (samples x positions) (docs/method.md
    1.3-1.4).

    Centred: ``G = E[(f - mu~)^T (f - mu~)]`` with ``mu~`` = mean with its bias entry set to 0, so
    ``G = [[Cov, 0], [0, 1]]`` exactly. Uncentred: ``G = E[f^T f]``. The ``output`` layer has no
    bias coordinate and is centred in every coordinate. Computed on the host (NumPy).
    """
    mean, cov = np.asarray(m.mean), np.asarray(m.scatter) / np.asarray(m.count)
    if not center:
        return mean, cov + np.outer(mean, mean)
    if has_bias_coordinate:
        cov[-1, :], cov[:, -1], cov[-1, -1] = 0.0, 0.0, 1.0
    return mean, cov
