"""Closed forms of ``M'`` and the squared edges for MLP-shaped sections (docs/method.md 1.7,
2.2-2.3).

A section declared as :class:`MLPForm` is, at every position,
``F(x) = x R + act(x B) D``, so its integrated Jacobian is ``J = R + B diag(d) D`` with
``d = sum_k w_k act'(alpha_k x B)``. With ``K = C C^T`` of the next layer's basis,

    M' = sum_rows J K J^T
       = B [(D K D^T) * S_dd] B^T + B diag(s_d) D K R^T + (its transpose) + n R K R^T,

where only ``n`` (rows), ``s_d = sum d`` and ``S_dd = sum d d^T`` depend on the data: a pass over
the data costs ``O(m^2)`` per token instead of one VJP per output direction. Exact edges need the
per-token matrix ``C_in^+ J C_out``, which is formed directly (no probes, no re-linearisation):
``r_in m r_out`` per token. That is ``P_out`` times the cost of the stochastic estimate
(docs/method.md 2.3) in closed form, which needs only sign-weighted token sums per source; so when
sources are asked for, the section gets the reference's estimate, with the very signs of the general
path. All agree with the general VJP path to round-off (tests).

A gated MLP ``F(x) = x R + (act(x B_g) * (x B_u)) D`` (``gated=True``) is the same form with two
*branches*: ``B = [B_g | B_u]`` ``(d_in, 2m)``, ``D`` stacked twice ``[D; D]`` ``(2m, d_out)`` and
the ``2m`` derivatives ``d = (sum_k w_k alpha_k act'(alpha_k g) u, sum_k w_k act(alpha_k g))``
(``g = x B_g``, ``u = x B_u``; docs/method.md 1.7.1). The stacked ``D`` is never formed: products
with it add the branches' halves first (:func:`_fold`), so the edges cost what a plain MLP of
width ``m`` costs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from libjax.forms import EDGES, M_PRIME, Form, as_float64, as_rows, next_k
from libjax.method.probes import ProbeSet
from libjax.runtime import memory


@struct.dataclass
class DerivativeMoments:
    """Sums over (sample, position) rows of an MLP section's activation derivatives."""

    rows: jnp.ndarray  # ()
    s_d: jnp.ndarray  # (m,)
    s_dd: jnp.ndarray  # (m, m)

    @classmethod
    def zeros(cls, m: int) -> DerivativeMoments:
        return cls(np.zeros(()), np.zeros(m), np.zeros((m, m)))  # host: no compile

    def __add__(self, other):
        return jax.tree.map(jnp.add, self, other)


def _slope(act, z):
    """``act'(z)`` elementwise."""
    return jax.jvp(act, (z,), (jnp.ones_like(z),))[1]


def integrated_derivative(act, pre, alphas, weights):
    """``sum_k w_k act'(alpha_k pre)`` elementwise (``pre`` is linear in the input)."""
    return sum(w * _slope(act, a * pre) for a, w in zip(alphas, weights))


def gated_integrated_derivative(act, pre, alphas, weights):
    """The ``2m`` derivatives of ``act(g) * u`` integrated along ``alpha (g, u)``, for
    ``pre = (g, u)`` side by side ``(..., 2m)``: ``(sum_k w_k alpha_k act'(alpha_k g) u,
    sum_k w_k act(alpha_k g))``, the gate's and the up projection's."""
    g, u = jnp.split(pre, 2, axis=-1)
    d_gate = sum(w * a * _slope(act, a * g) for a, w in zip(alphas, weights)) * u
    d_up = sum(w * act(a * g) for a, w in zip(alphas, weights))
    return jnp.concatenate([d_gate, d_up], axis=-1)


def _fold(a, branches: int):
    """``a @ [I; ...; I]``: the sum of the ``branches`` equal-width blocks of ``a``'s last axis
    (a product with ``D`` stacked ``branches`` times is ``_fold(a) @ D``)."""
    if branches == 1:
        return a
    return jnp.sum(a.reshape(*a.shape[:-1], branches, -1), axis=-2)


def derivative_moments(derivative, b, xs, sample_weights, acc=jnp.float64) -> DerivativeMoments:
    """The data-dependent part of ``M'`` for one batch ``xs`` ``(batch, pos, d_in)``, in ``acc``;
    ``derivative`` maps ``x B`` to the integrated derivatives ``d``."""
    d = derivative(xs @ b).astype(acc)
    w = as_rows(sample_weights.astype(acc), d.shape[:2])  # (batch,) or (batch, pos) weights
    return DerivativeMoments(jnp.sum(w), jnp.einsum("bp,bpm->m", w, d),
                             weighted_gram(w, d, GRAM_PANEL))


GRAM_PANEL = 512  # columns per product of a wide Gram (GPT-2's 3072: 1.5x faster than whole)


def weighted_gram(w, a, panel: int):
    """``sum_bp w_bp a_bp a_bp^T`` ``(m, m)`` for ``a`` ``(batch, pos, m)``. Wider than
    ``panel``, only the upper block triangle is multiplied (each panel of ``panel`` columns
    against the columns from it on, ``1/2 + panel / 2m`` of the work) and its upper triangle
    mirrored (exactly symmetric): the same sums as the whole product, to round-off."""
    m = a.shape[-1]
    if m <= panel:
        return jnp.einsum("bp,bpm,bpn->mn", w, a, a)
    rows = a.reshape(-1, m)
    weighted = w.reshape(-1, 1) * rows
    upper = jnp.concatenate([jnp.pad(weighted[:, i:i + panel].T @ rows[:, i:], ((0, 0), (i, 0)))
                             for i in range(0, m, panel)])
    return jnp.where(np.tri(m, dtype=bool).T, upper, upper.T)


def m_prime(matrices: dict, moments: DerivativeMoments, k, branches: int = 1):
    """Unnormalised ``M'`` from the derivative moments; ``k = C C^T`` of the next layer (or I).

    ``matrices`` are the section's ``B``, ``D``, ``R`` (float64), ``D`` standing for itself
    stacked ``branches`` times; for a linear section only ``moments.rows`` is used.
    """
    b, d, r = matrices.get("B"), matrices.get("D"), matrices.get("R")
    total = 0.0
    if r is not None:
        total = moments.rows * (r @ k @ r.T)
    if b is not None:
        dk = k if d is None else d @ k  # (m, d_out)
        dkd = dk if d is None else dk @ d.T  # (m, m)
        if branches > 1:
            dk, dkd = np.tile(dk, (branches, 1)), np.tile(dkd, (branches, branches))
        total = total + b @ (dkd * moments.s_dd) @ b.T
        if r is not None:
            cross = (b * moments.s_d) @ (dk @ r.T)
            total = total + cross + cross.T
    return total


def _basis_matrices(matrices: dict, c_in_pinv, c_out, branches: int):
    """``(P, Q, R^)`` = ``(C_in^+ B, D C_out, C_in^+ R C_out)``, None where the section lacks the
    term: per token the Jacobian in basis coordinates is ``R^ + _fold(P diag(d)) Q``
    ``(r_in, r_out)``."""
    b, d, r = matrices.get("B"), matrices.get("D"), matrices.get("R")
    right = lambda a: a if c_out is None else a @ c_out  # noqa: E731
    r_hat = None if r is None else right(c_in_pinv @ r)
    if b is None:
        return None, None, r_hat
    m = b.shape[1] // branches
    return c_in_pinv @ b, right(jnp.eye(m, dtype=b.dtype) if d is None else d), r_hat


def _linear_edges(r_hat, mass):
    """Squared edges of a linear section: ``A = diag(a) R^`` with ``sum a^2 = mass``."""
    return (r_hat.astype(mass.dtype) ** 2 * mass[:, None]).T


def squared_edges_sum(derivative, matrices: dict, x_hat, sample_weights, c_in_pinv, c_out,
                      chunk: int, acc=jnp.float64, branches: int = 1):
    """Exact unnormalised squared edges ``(r_out, r_in)`` of one batch, for a positionwise MLP
    section: per token ``A_t = diag(x^_t) (R^ + P diag(d_t) Q)``, squared and summed.

    Args:
      derivative: ``x B -> d``, the integrated derivatives (None if linear).
      matrices: ``B``, ``D``, ``R`` in the model dtype.
      x_hat: inputs in the input basis ``(batch, pos, r_in)``.
      c_in_pinv: ``(r_in, d_in)``; c_out: ``(d_out_neurons, r_out)`` or None.
      chunk: tokens per step (memory ~ chunk * r_in * r_out).
      acc: the accumulation dtype.
      branches: how many times ``D`` is stacked (2: a gated MLP).
    """
    p_hat, q_hat, r_hat = _basis_matrices(matrices, c_in_pinv, c_out, branches)
    r_in = x_hat.shape[-1]
    tokens = x_hat.reshape(-1, r_in)
    w = as_rows(sample_weights, x_hat.shape[:2]).reshape(-1).astype(acc)
    if p_hat is None:  # linear: the per-token matrix is constant
        return _linear_edges(r_hat, jnp.einsum("t,tj->j", w, (tokens ** 2).astype(acc)))

    r_out = q_hat.shape[1]
    q_hat = _pad_columns(q_hat, 16)  # full register tiles: ~10% faster GEMMs on CPU (measured)
    r_hat = None if r_hat is None else _pad_columns(r_hat, 16)

    def body(total, inputs):
        f_hat, wt = inputs
        dbar = derivative((f_hat @ c_in_pinv) @ matrices["B"])
        per_token = _fold(p_hat[None] * dbar[:, None, :], branches) @ q_hat  # (chunk, r_in, r_out)
        if r_hat is not None:
            per_token = per_token + r_hat
        a2 = (per_token * f_hat[:, :, None]).astype(acc) ** 2
        return total + jnp.einsum("t,tji->ij", wt, a2), None

    init = jnp.zeros((q_hat.shape[1], r_in), acc)
    return jax.lax.scan(body, init, memory.in_chunks(chunk, tokens, w))[0][:r_out]


def _pad_columns(a, multiple: int):
    """``a`` with zero columns appended up to a multiple of ``multiple``."""
    return jnp.pad(a, ((0, 0), (0, -a.shape[1] % multiple)))


def stochastic_squared_edges_sum(derivative, matrices: dict, x_hat, sample_weights, rho,
                                 c_in_pinv, c_out, chunk: int, acc=jnp.float64,
                                 branches: int = 1):
    """The stochastic estimate (docs/method.md 2.3) of a positionwise MLP section's squared edges
    ``(r_out, r_in)``, unnormalised, for one batch.

    Per sample and source ``A = sum_t rho_t diag(x^_t) (R^ + P diag(d_t) Q)
    = diag(u) R^ + (P * H) Q`` with ``u = sum_t rho_t x^_t`` and ``H = sum_t rho_t x^_t d_t^T``
    (one GEMM over tokens): ``r_in m (P_out + r_out)`` per source instead of the
    ``P_out r_in m r_out`` of the exact edges. With the general path's signs as ``rho`` this is its
    estimate to round-off, so asking for sources buys the reference's numbers cheaply.

    Args:
      rho: position weightings ``(batch, R, pos)`` in the model dtype.
      chunk: samples per step (memory ~ chunk * R * r_in * (pos + m + r_out)).
      Others as in :func:`squared_edges_sum`.
    """
    p_hat, q_hat, r_hat = _basis_matrices(matrices, c_in_pinv, c_out, branches)
    w = sample_weights.astype(acc)
    if p_hat is None:
        u = jnp.einsum("brt,btj->brj", rho, x_hat).astype(acc)
        return _linear_edges(r_hat, jnp.einsum("b,brj->j", w, u ** 2))

    def body(total, inputs):
        f_hat, rho_c, wt = inputs
        dbar = derivative((f_hat @ c_in_pinv) @ matrices["B"])  # (chunk, pos, branches * m)
        weighted = rho_c[..., None] * f_hat[:, None]  # (chunk, R, pos, r_in)
        a = _fold(p_hat * jnp.einsum("crtj,ctm->crjm", weighted, dbar), branches) @ q_hat
        if r_hat is not None:
            a = a + jnp.sum(weighted, axis=2)[..., None] * r_hat
        return total + jnp.einsum("c,crji->ij", wt, a.astype(acc) ** 2), None

    init = jnp.zeros((q_hat.shape[1], x_hat.shape[-1]), acc)
    return jax.lax.scan(body, init, memory.in_chunks(chunk, x_hat, rho, w))[0]


@dataclasses.dataclass(frozen=True)
class MLPForm(Form):
    """A section that is, at every position, ``x -> x R + act(x B) D``, or with ``gated``
    ``x -> x R + (act(x B_g) * (x B_u)) D``.

    ``matrices(params)`` returns a dict with ``"B"`` ``(d_in, m)`` (gated: ``[B_g | B_u]``
    ``(d_in, 2m)``), ``"D"`` ``(m, d_out)`` (None: identity) and ``"R"``
    ``(d_in, d_out)`` (None: no such term); ``act`` is None for a linear section ``x -> x R``,
    whose ``M'`` needs no data. With edge sources the edges are the reference's stochastic
    estimate (its exact edges cost ``P_out`` times as much).
    """

    act: Optional[Callable]
    matrices: Callable[[Any], dict]
    gated: bool = False
    label = "closed form of an MLP section"

    def __post_init__(self):
        if self.gated and self.act is None:
            raise ValueError("a gated MLP form needs an activation (act=None is a linear section)")

    @property
    def branches(self) -> int:
        """How many derivative vectors of width ``m`` meet ``D``: 2 for a gated MLP."""
        return 2 if self.gated else 1

    def derivative(self, task) -> Optional[Callable]:
        """``x B -> d``, the integrated derivatives under the task's rule (None: linear)."""
        if self.act is None:
            return None
        rule = gated_integrated_derivative if self.gated else integrated_derivative
        return lambda pre: rule(self.act, pre, task.alphas, task.quad_weights)

    def probes(self, task):
        if task.kind == EDGES and task.pos_sources is not None:
            return ProbeSet(task.n_pos_out, task.out_dim, task.pos_sources, skip=task.skip_out)
        return None

    def plan(self, task, params) -> int:
        """``M'``: nothing to chunk. Edges: rows per step within the budget: tokens for the exact
        edges (whose per-token ``(r_in, m)`` products are also kept cache-sized), samples for the
        stochastic estimate (``m`` counts every branch)."""
        if task.kind == M_PRIME:
            return 0
        m = self.matrices(params)["B"].shape[1] if self.act else 0
        r_in, r_out, sources = task.in_dim, task.out_dim, task.pos_sources
        if sources is None:
            return memory.rows_per_step(8 * 3 * r_in * (m + r_out), task.budget_gb,
                                        cached_bytes_per_row=8 * r_in * max(m, r_out))
        per_row = 8 * (sources * r_in * (task.n_pos + 2 * m + 3 * r_out)
                       + task.n_pos * (3 * m + task.d_in))
        return memory.rows_per_step(per_row, task.budget_gb)

    def needs_data(self, task):
        return task.kind == EDGES or self.act is not None

    def zero(self, task, params):
        if task.kind == EDGES:
            return super().zero(task, params)
        return DerivativeMoments.zeros(self.matrices(params)["B"].shape[1])

    def batch_sums(self, task, plan, params, x, sample_weights, signs, c_in_pinv, c_next):
        w, derivative = self.matrices(params), self.derivative(task)
        if task.kind == M_PRIME:
            return derivative_moments(derivative, w["B"], x, task.row_weights(sample_weights),
                                      task.acc_dtype)
        if signs is None:
            return squared_edges_sum(derivative, w, x, task.row_weights(sample_weights),
                                     c_in_pinv, c_next, plan, task.acc_dtype, self.branches)
        rho = self.probes(task).position_weights(signs).astype(x.dtype)
        return stochastic_squared_edges_sum(derivative, w, x, sample_weights, rho, c_in_pinv,
                                            c_next, plan, task.acc_dtype, self.branches)

    def finish(self, task, params, sums, c_next):
        if task.kind == EDGES:
            return sums
        matrices = {key: as_float64(v) for key, v in self.matrices(params).items()}
        if sums is None:  # linear: M' is the number of rows times R K R^T
            sums = DerivativeMoments(np.float64(task.rows), None, None)
        return m_prime(matrices, sums, next_k(task, c_next), self.branches)
