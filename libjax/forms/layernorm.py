"""Closed forms of ``M'`` and the squared edges for the two halves of a LayerNorm (docs/method.md
4.3).

Inputs are row vectors whose last coordinate is the folded-bias 1; ``x~`` is ``x`` with its first
``d = width - 1`` coordinates centred and the last set to 0, and ``P`` the matrix doing that.

* ``ln_in``: ``x -> (var, x)`` with ``var = |x~|^2 / d``. Integrated Jacobian ``[u | I]`` with
  ``u = 2 abar x~ / d`` (``abar = sum_k w_k alpha_k``).
* ``ln_out``: ``(v, x) -> (n, x)`` (or ``n`` alone), ``n = x~ / s`` then 1, ``s = sqrt(v + eps)``.
  Integrated Jacobian ``[[a, 0], [sigma P, I]]`` with ``sigma = sum_k w_k / s(alpha_k)`` and
  ``a = -x~ sum_k w_k alpha_k / (2 s(alpha_k)^3)`` (``s(alpha) = sqrt(alpha v + eps)``).

Per token each Jacobian is a constant plus a rank-one and a scalar-weighted term, so ``M'`` needs
only a few sums over tokens (at most one ``d x d`` Gram) and the edges only matrix products of
token sums, instead of one VJP per output direction and ``P_out x d_in^2`` outer products.

RMSNorm's halves (``centre=False``: the mean square ``|x^|^2 / d`` and ``n = x^ / s``, with ``x^``
the first ``d`` coordinates unchanged and the last set to 0, and ``P`` the matrix doing that) have
the same Jacobians with ``x^`` for ``x~``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import struct

from libjax.forms import EDGES, Form, M_PRIME, next_k


def centring(width: int, centre: bool = True) -> np.ndarray:
    """``P``: centres the first ``width - 1`` coordinates (unless not ``centre``) and zeroes the
    last (float64)."""
    d = width - 1
    p = np.eye(width)
    if centre:
        p[:d, :d] -= 1.0 / d
    p[d, d] = 0.0
    return p


def _centred(x, centre: bool = True):
    body = x[..., :-1]
    if centre:
        body = body - jnp.mean(body, axis=-1, keepdims=True)
    return jnp.concatenate([body, jnp.zeros_like(x[..., -1:])], axis=-1)


def _row_weights(sample_weights, shape, acc):
    return jnp.broadcast_to(sample_weights.astype(acc)[:, None], shape[:2])


def _identity_if_none(c, dim, dtype):
    return jnp.eye(dim, dtype=dtype) if c is None else c


# --- ln_in: x -> (var, x) -------------------------------------------------------------------------

@struct.dataclass
class LNInMoments:
    rows: jnp.ndarray  # ()
    s_u: jnp.ndarray  # (D,)
    s_uu: jnp.ndarray  # (D, D)

    @classmethod
    def zeros(cls, width: int) -> "LNInMoments":
        return cls(np.zeros(()), np.zeros(width), np.zeros((width, width)))  # host


def _ln_in_u(x, alphas, weights, centre: bool):
    abar = sum(w * a for a, w in zip(alphas, weights))
    return 2 * abar * _centred(x, centre) / (x.shape[-1] - 1)


def ln_in_moments(xs, sample_weights, alphas, weights, acc=jnp.float64,
                  centre: bool = True) -> LNInMoments:
    """Token sums of one batch ``xs`` ``(batch, pos, D)``, in ``acc``."""
    u = _ln_in_u(xs, alphas, weights, centre).astype(acc)
    w = _row_weights(sample_weights, xs.shape, acc)
    return LNInMoments(jnp.sum(w), jnp.einsum("bp,bpi->i", w, u),
                       jnp.einsum("bp,bpi,bpj->ij", w, u, u))


def ln_in_m_prime(m: LNInMoments, k):
    """Unnormalised ``M'`` ``(D, D)``; ``k = C C^T`` of the output ``(var, x)``, ``(1+D, 1+D)``
    (on the host: NumPy sums and ``k``)."""
    cross = np.outer(m.s_u, k[1:, 0])
    return k[0, 0] * m.s_uu + cross + cross.T + m.rows * k[1:, 1:]


def ln_in_edges(x_hat, sample_weights, c_in_pinv, c_out, alphas, weights, acc=jnp.float64,
                centre: bool = True):
    """Unnormalised squared edges ``(r_out, r_in)`` of one batch: per token the Jacobian in basis
    coordinates is ``g ⊗ c0 + A`` with ``g = C_in^+ u``, ``c0 = C_out[0]``,
    ``A = C_in^+ C_out[1:]``."""
    x = x_hat @ c_in_pinv
    c_out = _identity_if_none(c_out, x.shape[-1] + 1, x.dtype)
    g = _ln_in_u(x, alphas, weights, centre) @ c_in_pinv.T  # (batch, pos, r_in)
    f2 = (_row_weights(sample_weights, x.shape, acc)[..., None] * x_hat ** 2).astype(acc)
    g = g.astype(acc)
    s0, s1, s2 = (jnp.einsum("bpj->j", f2), jnp.einsum("bpj,bpj->j", f2, g),
                  jnp.einsum("bpj,bpj->j", f2, g ** 2))
    c0 = c_out[0].astype(acc)
    a = (c_in_pinv @ c_out[1:]).astype(acc)  # (r_in, r_out)
    per_in = s2[:, None] * c0 ** 2 + 2 * s1[:, None] * a * c0 + s0[:, None] * a ** 2
    return per_in.T


# --- ln_out: (v, x) -> (n, x) ---------------------------------------------------------------------

@struct.dataclass
class LNOutMoments:
    rows: jnp.ndarray  # ()
    s_ss: jnp.ndarray  # () sum sigma^2
    s_s: jnp.ndarray  # () sum sigma
    s_a: jnp.ndarray  # (D,)
    s_as: jnp.ndarray  # (D,) sum a sigma
    s_aa: jnp.ndarray  # (D, D)

    @classmethod
    def zeros(cls, width: int) -> "LNOutMoments":
        z = np.zeros(())  # host: no compile
        return cls(z, z, z, np.zeros(width), np.zeros(width), np.zeros((width, width)))


def _ln_out_factors(xs, alphas, weights, eps, centre: bool):
    """``a`` ``(..., D)`` and ``sigma`` ``(...)`` of the integrated Jacobian at inputs ``xs``."""
    v, x = xs[..., 0], xs[..., 1:]
    sigma, coef = 0.0, 0.0
    for alpha, w in zip(alphas, weights):
        s = jnp.sqrt(jnp.maximum(alpha * v, 0.0) + eps)
        sigma = sigma + w / s
        coef = coef + w * alpha * (alpha * v > 0) / (2 * s ** 3)
    return -coef[..., None] * _centred(x, centre), sigma


def ln_out_moments(xs, sample_weights, alphas, weights, eps, acc=jnp.float64,
                   centre: bool = True) -> LNOutMoments:
    """Token sums of one batch ``xs`` ``(batch, pos, 1 + D)``, in ``acc``."""
    a, sigma = _ln_out_factors(xs, alphas, weights, eps, centre)
    a, sigma = a.astype(acc), sigma.astype(acc)
    w = _row_weights(sample_weights, xs.shape, acc)
    return LNOutMoments(jnp.sum(w), jnp.sum(w * sigma ** 2), jnp.sum(w * sigma),
                        jnp.einsum("bp,bpi->i", w, a), jnp.einsum("bp,bp,bpi->i", w, sigma, a),
                        jnp.einsum("bp,bpi,bpj->ij", w, a, a))


def ln_out_m_prime(m: LNOutMoments, k, keep_resid: bool, centre: bool = True):
    """Unnormalised ``M'`` ``(1+D, 1+D)``; ``k = C C^T`` of the output ``(n, x)`` or ``n`` (on
    the host: NumPy sums and ``k``)."""
    width = m.s_a.shape[0]
    p = centring(width, centre)
    k_nn = k[:width, :width]
    vv = np.sum(k_nn * m.s_aa)
    vr = m.s_as @ k_nn @ p
    rr = m.s_ss * (p @ k_nn @ p)
    if keep_resid:
        k_nr = k[:width, width:]
        vr = vr + m.s_a @ k_nr
        cross = m.s_s * (p @ k_nr)
        rr = rr + cross + cross.T + m.rows * k[width:, width:]
    return np.block([[vv, vr[None, :]], [vr[:, None], rr]])


def ln_out_edges(x_hat, sample_weights, c_in_pinv, c_out, alphas, weights, eps,
                 keep_resid: bool, acc=jnp.float64, centre: bool = True):
    """Unnormalised squared edges ``(r_out, r_in)`` of one batch: per token the Jacobian in basis
    coordinates is ``c_v ⊗ (a C_n) + sigma A1 + A2`` with ``c_v = C_in^+[:, 0]``,
    ``A1 = C_in^+[:, 1:] P C_n``, ``A2 = C_in^+[:, 1:] C_x`` (``C_n``/``C_x``: rows of ``C_out``
    for ``n`` and ``x``); squaring it leaves six token sums, all matrix products."""
    xs = x_hat @ c_in_pinv
    width = xs.shape[-1] - 1
    c_out = _identity_if_none(c_out, width * (2 if keep_resid else 1), xs.dtype)
    a, sigma = _ln_out_factors(xs, alphas, weights, eps, centre)
    cast = lambda t: t.astype(acc)  # noqa: E731
    c_n, c_v, c_x = cast(c_out[:width]), cast(c_in_pinv[:, 0]), cast(c_in_pinv[:, 1:])
    a1 = c_x @ jnp.asarray(centring(width, centre), acc) @ c_n  # (r_in, r_out)
    b = cast(a) @ c_n  # (batch, pos, r_out)
    sigma = cast(sigma)
    f2 = cast(_row_weights(sample_weights, xs.shape, acc)[..., None] * x_hat ** 2)
    v0, v1, v2 = (jnp.einsum("bpj->j", f2), jnp.einsum("bpj,bp->j", f2, sigma),
                  jnp.einsum("bpj,bp->j", f2, sigma ** 2))
    g_bb = jnp.einsum("bpj,bpi->ji", f2, b ** 2)
    g_sb = jnp.einsum("bpj,bp,bpi->ji", f2, sigma, b)
    per_in = c_v[:, None] ** 2 * g_bb + a1 ** 2 * v2[:, None] + 2 * c_v[:, None] * a1 * g_sb
    if keep_resid:
        a2 = c_x @ cast(c_out[width:])
        g_b = jnp.einsum("bpj,bpi->ji", f2, b)
        per_in = (per_in + a2 ** 2 * v0[:, None] + 2 * c_v[:, None] * a2 * g_b
                  + 2 * a1 * a2 * v1[:, None])
    return per_in.T


# --- the forms ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LayerNormInForm(Form):
    """The section ``x -> (var(x), x)`` at every position: the variance of the first
    ``width - 1`` coordinates (the last is the folded bias), then the input itself; with
    ``centre=False`` (RMSNorm) their mean square instead. Its edges are exact, also where edge
    sources were asked for (they cost nothing extra)."""

    centre: bool = True
    label = "closed form of a normaliser's statistic"

    def zero(self, task, params):
        return super().zero(task, params) if task.kind == EDGES else \
            LNInMoments.zeros(task.d_in)

    def batch_sums(self, task, plan, params, x, sample_weights, signs, c_in_pinv, c_next):
        if task.kind == M_PRIME:
            return ln_in_moments(x, sample_weights, task.alphas, task.quad_weights,
                                 task.acc_dtype, self.centre)
        return ln_in_edges(x, sample_weights, c_in_pinv, c_next, task.alphas, task.quad_weights,
                           task.acc_dtype, self.centre)

    def finish(self, task, params, sums, c_next):
        return sums if task.kind == EDGES else ln_in_m_prime(sums, next_k(task, c_next))


@dataclasses.dataclass(frozen=True)
class LayerNormOutForm(Form):
    """The section ``(v, x) -> (n, x)`` (or ``n`` alone without ``keep_resid``) at every
    position, ``n = ((x_j - mean) / sqrt(max(v, 0) + eps))_j`` over the first ``width - 1``
    coordinates followed by the constant 1; with ``centre=False`` (RMSNorm) nothing is
    subtracted. Exact edges, as for :class:`LayerNormInForm`."""

    eps: float
    keep_resid: bool
    centre: bool = True
    label = "closed form of a normalisation"

    def zero(self, task, params):
        return super().zero(task, params) if task.kind == EDGES else \
            LNOutMoments.zeros(task.d_in - 1)

    def batch_sums(self, task, plan, params, x, sample_weights, signs, c_in_pinv, c_next):
        if task.kind == M_PRIME:
            return ln_out_moments(x, sample_weights, task.alphas, task.quad_weights, self.eps,
                                  task.acc_dtype, self.centre)
        return ln_out_edges(x, sample_weights, c_in_pinv, c_next, task.alphas, task.quad_weights,
                            self.eps, self.keep_resid, task.acc_dtype, self.centre)

    def finish(self, task, params, sums, c_next):
        if task.kind == EDGES:
            return sums
        return ln_out_m_prime(sums, next_k(task, c_next), self.keep_resid, self.centre)
