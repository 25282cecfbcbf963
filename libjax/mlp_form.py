"""Closed forms of ``M'`` and the squared edges for MLP-shaped sections (SPEC 1.7, 2.2).

A section declared as :class:`models.sectioned.MLPForm` is, at every position,
``F(x) = x R + act(x B) D``, so its integrated Jacobian is ``J = R + B diag(d) D`` with
``d = sum_k w_k act'(alpha_k x B)``. With ``K = C C^T`` of the next layer's basis,

    M' = sum_rows J K J^T
       = B [(D K D^T) * S_dd] B^T + B diag(s_d) D K R^T + (its transpose) + n R K R^T,

where only ``n`` (rows), ``s_d = sum d`` and ``S_dd = sum d d^T`` depend on the data: a pass over
the data costs ``O(m^2)`` per token instead of one VJP per output direction. Edges need the
per-token matrix ``C_in^+ J C_out``, which is formed directly (no probes, no re-linearisation).
Both agree with the general VJP path to round-off (tests).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class DerivativeMoments:
    """Sums over (sample, position) rows of an MLP section's activation derivatives."""

    rows: jnp.ndarray  # ()
    s_d: jnp.ndarray  # (m,)
    s_dd: jnp.ndarray  # (m, m)

    @classmethod
    def zeros(cls, m: int) -> "DerivativeMoments":
        return cls(jnp.zeros((), jnp.float64), jnp.zeros(m, jnp.float64),
                   jnp.zeros((m, m), jnp.float64))

    def __add__(self, other):
        return jax.tree.map(jnp.add, self, other)


def integrated_derivative(act, pre, alphas, weights):
    """``sum_k w_k act'(alpha_k pre)`` elementwise (``pre`` is linear in the input)."""
    def derivative(z):
        return jax.jvp(act, (z,), (jnp.ones_like(z),))[1]
    return sum(w * derivative(a * pre) for a, w in zip(alphas, weights))


def derivative_moments(act, b, xs, sample_weights, alphas, weights) -> DerivativeMoments:
    """The data-dependent part of ``M'`` for one batch ``xs`` ``(batch, pos, d_in)``."""
    d = integrated_derivative(act, xs @ b, alphas, weights).astype(jnp.float64)
    w = jnp.broadcast_to(sample_weights.astype(jnp.float64)[:, None], d.shape[:2])
    return DerivativeMoments(jnp.sum(w), jnp.einsum("bp,bpm->m", w, d),
                             jnp.einsum("bp,bpm,bpn->mn", w, d, d))


def m_prime(form_weights: dict, moments: DerivativeMoments, k):
    """Unnormalised ``M'`` from the derivative moments; ``k = C C^T`` of the next layer (or I).

    ``form_weights`` are the section's ``B``, ``D``, ``R`` (float64); for a linear section only
    ``moments.rows`` is used.
    """
    b, d, r = form_weights.get("B"), form_weights.get("D"), form_weights.get("R")
    total = 0.0
    if r is not None:
        total = moments.rows * (r @ k @ r.T)
    if b is not None:
        dk = k if d is None else d @ k  # (m, d_out)
        dkd = dk if d is None else dk @ d.T  # (m, m)
        total = total + b @ (dkd * moments.s_dd) @ b.T
        if r is not None:
            cross = (b * moments.s_d) @ (dk @ r.T)
            total = total + cross + cross.T
    return total


def squared_edges_sum(act, form_weights: dict, x_hat, sample_weights, c_in_pinv, c_out, alphas,
                      weights, chunk: int):
    """Unnormalised squared edges ``(d_out, d_in)`` of one batch, for a positionwise MLP section.

    Args:
      act: the section's activation (None if linear).
      form_weights: ``B``, ``D``, ``R`` in the model dtype.
      x_hat: inputs in the input basis ``(batch, pos, r_in)``.
      c_in_pinv: ``(r_in, d_in)``; c_out: ``(d_out_neurons, r_out)`` or None.
      chunk: tokens per step (memory ~ chunk * r_in * r_out).
    """
    b, d, r = form_weights.get("B"), form_weights.get("D"), form_weights.get("R")
    r_in = x_hat.shape[-1]
    tokens = x_hat.reshape(-1, r_in)
    w = jnp.repeat(sample_weights, x_hat.shape[1]).astype(jnp.float64)
    right = lambda a: a if c_out is None else a @ c_out  # noqa: E731
    r_hat = None if r is None else right(c_in_pinv @ r)  # (r_in, r_out)
    if b is None:  # linear: the per-token matrix is constant
        mass = jnp.einsum("t,tj->j", w, (tokens ** 2).astype(jnp.float64))
        return (r_hat.astype(jnp.float64) ** 2 * mass[:, None]).T
    p_hat = c_in_pinv @ b  # (r_in, m)
    q_hat = right(jnp.eye(b.shape[1], dtype=b.dtype) if d is None else d)  # (m, r_out)
    n_tok = tokens.shape[0]
    chunk = max(1, min(chunk, n_tok))
    n_chunks = -(-n_tok // chunk)
    pad = n_chunks * chunk - n_tok
    tokens = jnp.pad(tokens, ((0, pad), (0, 0))).reshape(n_chunks, chunk, r_in)
    w = jnp.pad(w, (0, pad)).reshape(n_chunks, chunk)

    def body(acc, inputs):
        f_hat, wt = inputs
        dbar = integrated_derivative(act, (f_hat @ c_in_pinv) @ b, alphas, weights)
        per_token = (p_hat[None] * dbar[:, None, :]) @ q_hat  # (chunk, r_in, r_out)
        if r_hat is not None:
            per_token = per_token + r_hat
        a2 = (per_token * f_hat[:, :, None]).astype(jnp.float64) ** 2
        return acc + jnp.einsum("t,tji->ij", wt, a2), None

    init = jnp.zeros((q_hat.shape[1], r_in), jnp.float64)
    return jax.lax.scan(body, init, (tokens, w))[0]
