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

Parallel blocks (GPT-NeoX, ``layout="parallel"``) carry a second residual copy ``y`` (the
attention's sum) past the normaliser: ``ln_in`` is ``(y, x) -> (var, x, y)`` and ``ln_out``
``(v, x, y) -> (n, y)``. The Jacobians gain an identity block from ``y`` to its output copy (and
``ln_out`` loses the one from ``x``), so the forms only reorder the output side (``ln_in``) or
move the pass-through to the ``y`` block (``ln_out``; docs/method.md 1.7.2-1.7.3).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import struct

from libjax.forms import EDGES, M_PRIME, Form, as_rows, next_k

SEQUENTIAL, PARALLEL = "sequential", "parallel"
LAYOUTS = (SEQUENTIAL, PARALLEL)


def _check_layout(layout: str):
    if layout not in LAYOUTS:
        raise ValueError(f"unknown normaliser layout {layout!r}; choose one of "
                         f"{', '.join(LAYOUTS)}")


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
    return as_rows(sample_weights.astype(acc), shape[:2])  # (batch,) or (batch, pos) weights


def _identity_if_none(c, dim, dtype):
    return jnp.eye(dim, dtype=dtype) if c is None else c


# --- ln_in: x -> (var, x) -------------------------------------------------------------------------

@struct.dataclass
class LNInMoments:
    rows: jnp.ndarray  # ()
    s_u: jnp.ndarray  # (D,)
    s_uu: jnp.ndarray  # (D, D)

    @classmethod
    def zeros(cls, width: int) -> LNInMoments:
        return cls(np.zeros(()), np.zeros(width), np.zeros((width, width)))  # host


def _ln_in_u(x, alphas, weights, centre: bool, layout: str = SEQUENTIAL):
    """``u`` over the whole input: the parallel layout's ``(y, x)`` has zeros for ``y``."""
    if layout == PARALLEL:
        y, x = jnp.split(x, 2, axis=-1)
        return jnp.concatenate([jnp.zeros_like(y), _ln_in_u(x, alphas, weights, centre)], -1)
    abar = sum(w * a for a, w in zip(alphas, weights))
    return 2 * abar * _centred(x, centre) / (x.shape[-1] - 1)


def ln_in_output_order(width: int, layout: str = SEQUENTIAL) -> np.ndarray:
    """Output coordinates in input order: the statistic, then the copy of each input coordinate.
    Rows of ``K`` or ``C_out`` taken in this order make the pass-through block an identity
    (parallel: the output ``(var, x, y)`` of input ``(y, x)``)."""
    order = np.arange(1 + width)
    if layout == PARALLEL:
        half = width // 2
        order[1:] = np.concatenate([np.arange(1 + half, 1 + width), np.arange(1, 1 + half)])
    return order


def ln_in_moments(xs, sample_weights, alphas, weights, acc=jnp.float64,
                  centre: bool = True, layout: str = SEQUENTIAL) -> LNInMoments:
    """Token sums of one batch ``xs`` ``(batch, pos, D)``, in ``acc``."""
    u = _ln_in_u(xs, alphas, weights, centre, layout).astype(acc)
    w = _row_weights(sample_weights, xs.shape, acc)
    return LNInMoments(jnp.sum(w), jnp.einsum("bp,bpi->i", w, u),
                       jnp.einsum("bp,bpi,bpj->ij", w, u, u))


def ln_in_m_prime(m: LNInMoments, k, layout: str = SEQUENTIAL):
    """Unnormalised ``M'`` ``(D, D)``; ``k = C C^T`` of the output ``(var, x)``, ``(1+D, 1+D)``
    (on the host: NumPy sums and ``k``)."""
    if layout != SEQUENTIAL:
        order = ln_in_output_order(k.shape[0] - 1, layout)
        k = k[np.ix_(order, order)]
    cross = np.outer(m.s_u, k[1:, 0])
    return k[0, 0] * m.s_uu + cross + cross.T + m.rows * k[1:, 1:]


def ln_in_edges(x_hat, sample_weights, c_in_pinv, c_out, alphas, weights, acc=jnp.float64,
                centre: bool = True, layout: str = SEQUENTIAL):
    """Unnormalised squared edges ``(r_out, r_in)`` of one batch: per token the Jacobian in basis
    coordinates is ``g ⊗ c0 + A`` with ``g = C_in^+ u``, ``c0 = C_out[0]``,
    ``A = C_in^+ C_out[1:]`` (``C_out``'s rows in :func:`ln_in_output_order`)."""
    x = x_hat @ c_in_pinv
    c_out = _identity_if_none(c_out, x.shape[-1] + 1, x.dtype)
    if layout != SEQUENTIAL:
        c_out = c_out[ln_in_output_order(x.shape[-1], layout)]
    g = _ln_in_u(x, alphas, weights, centre, layout) @ c_in_pinv.T  # (batch, pos, r_in)
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
    def zeros(cls, width: int) -> LNOutMoments:
        z = np.zeros(())  # host: no compile
        return cls(z, z, z, np.zeros(width), np.zeros(width), np.zeros((width, width)))


def ln_out_width(input_width: int, layout: str = SEQUENTIAL) -> int:
    """``D``, the width of the normalised residual ``x`` in an input ``(v, x)`` or, parallel,
    ``(v, x, y)``."""
    return (input_width - 1) // (2 if layout == PARALLEL else 1)


def _ln_out_factors(xs, alphas, weights, eps, centre: bool, layout: str = SEQUENTIAL):
    """``a`` ``(..., D)`` and ``sigma`` ``(...)`` of the integrated Jacobian at inputs ``xs``."""
    v, x = xs[..., 0], xs[..., 1:1 + ln_out_width(xs.shape[-1], layout)]
    sigma, coef = 0.0, 0.0
    for alpha, w in zip(alphas, weights):
        s = jnp.sqrt(jnp.maximum(alpha * v, 0.0) + eps)
        sigma = sigma + w / s
        coef = coef + w * alpha * (alpha * v > 0) / (2 * s ** 3)
    return -coef[..., None] * _centred(x, centre), sigma


def ln_out_moments(xs, sample_weights, alphas, weights, eps, acc=jnp.float64,
                   centre: bool = True, layout: str = SEQUENTIAL) -> LNOutMoments:
    """Token sums of one batch ``xs`` ``(batch, pos, 1 + D)`` (parallel: ``1 + 2D``), in
    ``acc``."""
    a, sigma = _ln_out_factors(xs, alphas, weights, eps, centre, layout)
    a, sigma = a.astype(acc), sigma.astype(acc)
    w = _row_weights(sample_weights, xs.shape, acc)
    return LNOutMoments(jnp.sum(w), jnp.sum(w * sigma ** 2), jnp.sum(w * sigma),
                        jnp.einsum("bp,bpi->i", w, a), jnp.einsum("bp,bp,bpi->i", w, sigma, a),
                        jnp.einsum("bp,bpi,bpj->ij", w, a, a))


def _carried(width: int, layout: str) -> slice:
    """The input coordinates that pass through to the output after ``n``: ``x`` (sequential) or
    the second copy ``y`` (parallel), in an input ``(v, x[, y])``."""
    return slice(1, 1 + width) if layout == SEQUENTIAL else slice(1 + width, 1 + 2 * width)


def ln_out_m_prime(m: LNOutMoments, k, keep_resid: bool, centre: bool = True,
                   layout: str = SEQUENTIAL):
    """Unnormalised ``M'`` ``(1+D, 1+D)`` (parallel: ``(1+2D, 1+2D)``); ``k = C C^T`` of the
    output ``(n, x)``, ``(n, y)`` or ``n`` (on the host: NumPy sums and ``k``)."""
    width = m.s_a.shape[0]
    p = centring(width, centre)
    k_nn = k[:width, :width]
    x = slice(1, 1 + width)
    out = np.zeros((1 + width * (2 if layout == PARALLEL else 1),) * 2)
    out[0, 0] = np.sum(k_nn * m.s_aa)
    out[0, x] = m.s_as @ k_nn @ p
    out[x, x] = m.s_ss * (p @ k_nn @ p)
    if keep_resid:
        t, k_nr = _carried(width, layout), k[:width, width:]
        out[0, t] += m.s_a @ k_nr
        cross = m.s_s * (p @ k_nr)
        out[x, t] += cross
        out[t, x] += cross.T
        out[t, t] += m.rows * k[width:, width:]
    out[1:, 0] = out[0, 1:]
    return out


def ln_out_edges(x_hat, sample_weights, c_in_pinv, c_out, alphas, weights, eps,
                 keep_resid: bool, acc=jnp.float64, centre: bool = True,
                 layout: str = SEQUENTIAL):
    """Unnormalised squared edges ``(r_out, r_in)`` of one batch: per token the Jacobian in basis
    coordinates is ``c_v ⊗ (a C_n) + sigma A1 + A2`` with ``c_v = C_in^+[:, 0]``,
    ``A1 = C_in^+[:, x] P C_n``, ``A2 = C_in^+[:, t] C_t`` (``C_n``/``C_t``: rows of ``C_out``
    for ``n`` and the carried copy, ``t`` its input coordinates: ``x``, or ``y`` when parallel);
    squaring it leaves six token sums, all matrix products."""
    xs = x_hat @ c_in_pinv
    width = ln_out_width(xs.shape[-1], layout)
    c_out = _identity_if_none(c_out, width * (2 if keep_resid else 1), xs.dtype)
    a, sigma = _ln_out_factors(xs, alphas, weights, eps, centre, layout)
    cast = lambda t: t.astype(acc)  # noqa: E731
    c_n, c_v, c_x = (cast(c_out[:width]), cast(c_in_pinv[:, 0]),
                     cast(c_in_pinv[:, 1:1 + width]))
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
        a2 = cast(c_in_pinv[:, _carried(width, layout)]) @ cast(c_out[width:])
        g_b = jnp.einsum("bpj,bpi->ji", f2, b)
        per_in = (per_in + a2 ** 2 * v0[:, None] + 2 * c_v[:, None] * a2 * g_b
                  + 2 * a1 * a2 * v1[:, None])
    return per_in.T


# --- the forms ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LayerNormInForm(Form):
    """The section ``x -> (var(x), x)`` at every position: the variance of the first
    ``width - 1`` coordinates (the last is the folded bias), then the input itself; with
    ``centre=False`` (RMSNorm) their mean square instead. With ``layout="parallel"`` the input is
    ``(y, x)``, two residual copies, and the section ``(y, x) -> (var(x), x, y)`` (GPT-NeoX's
    ``ln2``). Its edges are exact, also where edge sources were asked for (they cost nothing
    extra)."""

    centre: bool = True
    layout: str = SEQUENTIAL
    label = "closed form of a normaliser's statistic"

    def __post_init__(self):
        _check_layout(self.layout)

    def zero(self, task, params):
        return super().zero(task, params) if task.kind == EDGES else \
            LNInMoments.zeros(task.d_in)

    def batch_sums(self, task, plan, params, x, sample_weights, signs, c_in_pinv, c_next):
        sample_weights = task.row_weights(sample_weights)  # 0 at skipped positions
        if task.kind == M_PRIME:
            return ln_in_moments(x, sample_weights, task.alphas, task.quad_weights,
                                 task.acc_dtype, self.centre, self.layout)
        return ln_in_edges(x, sample_weights, c_in_pinv, c_next, task.alphas, task.quad_weights,
                           task.acc_dtype, self.centre, self.layout)

    def finish(self, task, params, sums, c_next):
        if task.kind == EDGES:
            return sums
        return ln_in_m_prime(sums, next_k(task, c_next), self.layout)


@dataclasses.dataclass(frozen=True)
class LayerNormOutForm(Form):
    """The section ``(v, x) -> (n, x)`` (or ``n`` alone without ``keep_resid``) at every
    position, ``n = ((x_j - mean) / sqrt(max(v, 0) + eps))_j`` over the first ``width - 1``
    coordinates followed by the constant 1; with ``centre=False`` (RMSNorm) nothing is
    subtracted. With ``layout="parallel"`` the input carries a second residual copy ``y`` and the
    section is ``(v, x, y) -> (n, y)`` (GPT-NeoX's ``ln2_out``; needs ``keep_resid``). Exact
    edges, as for :class:`LayerNormInForm`."""

    eps: float
    keep_resid: bool
    centre: bool = True
    layout: str = SEQUENTIAL
    label = "closed form of a normalisation"

    def __post_init__(self):
        _check_layout(self.layout)
        if self.layout == PARALLEL and not self.keep_resid:
            raise ValueError("a parallel normalisation passes its second residual copy through: "
                             "it needs keep_resid=True")

    def zero(self, task, params):
        return super().zero(task, params) if task.kind == EDGES else \
            LNOutMoments.zeros(ln_out_width(task.d_in, self.layout))

    def batch_sums(self, task, plan, params, x, sample_weights, signs, c_in_pinv, c_next):
        sample_weights = task.row_weights(sample_weights)  # 0 at skipped positions
        if task.kind == M_PRIME:
            return ln_out_moments(x, sample_weights, task.alphas, task.quad_weights, self.eps,
                                  task.acc_dtype, self.centre, self.layout)
        return ln_out_edges(x, sample_weights, c_in_pinv, c_next, task.alphas, task.quad_weights,
                            self.eps, self.keep_resid, task.acc_dtype, self.centre, self.layout)

    def finish(self, task, params, sums, c_next):
        if task.kind == EDGES:
            return sums
        return ln_out_m_prime(sums, next_k(task, c_next), self.keep_resid, self.centre,
                              self.layout)
