"""Closed forms of ``M'`` and the squared edges for attention sections (docs/method.md 1.7, 2.2,
4.3).

The section maps ``x`` (positions ``P``) to ``F_t = r_t + sum_h sum_s p_hts v_hs W_O[h]`` at the
output positions ``t`` (every position, or the last one only), with ``q = n W_Q``, ``k = n W_K``,
``v = n W_V`` per head, ``p = softmax(q k^T / scale)`` under the mask, ``z = p v``, and ``n``, ``r``
read from ``x`` (``shared``: both are ``x``; ``split``: ``x = (n, r)``).

For a weighting ``rho`` of the output positions (one per exact output position, or the Rademacher
signs of a position source) the probes of every output direction together need, at each input
position ``s``, the matrix ``G_s = sum_t rho_t (dF_t/dx_s) C`` (``d_in x r``), and

    M' = sum_rho sum_s G_s G_s^T,       A_ij = sum_s (C_in^+ G_s)_ji f^_sj  (edges: E += A^2).

Writing ``O_h = W_O[h] C``, the value, key and query paths of ``G_s`` are

    V: sum_h beta_hs W_V[h] O_h,                    beta_hs = sum_t rho_t p_hts
    K: sum_h W_K[h] (a_hs (v_hs O_h) - B_hs O_h) / scale,
       a_hs = sum_t rho_t p_hts q_ht,  B_hs = sum_t rho_t p_hts q_ht z_ht^T
    Q: rho_s sum_h W_Q[h] (L_hs - kappa_hs z_hs^T) O_h / scale   (s a query position),
       kappa_hs = sum_u p_hsu k_hu,   L_hs = sum_u p_hsu k_hu v_hu^T

and the residual adds ``rho_s C`` at output positions (``rho_s (C_1 + C_2)`` when the output is
``(r_t + attn_t, r_t)``, as in parallel blocks, with ``C = [C_1; C_2]`` and ``O_h = W_O[h] C_1``).

Rotary embeddings (:mod:`.rotary`) rotate each query and key head by its position's orthogonal
``Theta``: ``q_ht = n_t W_Q[h] Theta_t``, ``k_hs = n_s W_K[h] Theta_s``. Then ``q``, ``k``, ``p``,
``z``, ``a``, ``B``, ``kappa``, ``L`` above are the rotated ones, and the key and query paths read
``W_K[h] Theta_s`` and ``W_Q[h] Theta_s`` in place of ``W_K[h]``, ``W_Q[h]`` (``d score_ts / d n_s
= W_K Theta_s q_ht^T``):

    K: sum_h W_K[h] Theta_s (a_hs (v_hs O_h) - B_hs O_h) / scale
    Q: rho_s sum_h W_Q[h] Theta_s (L_hs - kappa_hs z_hs^T) O_h / scale

Both methods multiply their head-sized factors at ``s`` by ``Theta_s`` (elementwise in cos and
sin: the inverse rotation of the row vectors, :func:`.rotary.turn`), so
the sums keep the unrotated head weights and no per-position ``D x dh`` matrix is formed.
Grouped-query attention is the same form with ``W_K``, ``W_V`` repeated for each query head of its
group. Positions left out of a build (docs/method.md 1.13): ``rho`` is zero at skipped output
positions and ``G_s`` is weighted 0 at skipped input positions ``s`` (the sample weights become
``(batch, P)`` row weights), so no term ``dF_t/dx_s`` with ``t`` or ``s`` skipped is added. Neither
method forms ``G_s``: both reduce ``M'`` to head-sized sums over samples and positions, added over
batches and assembled into ``M'`` once (:func:`.sums.assemble`), and the edges to
head-sized products, instead of one VJP per output direction through ``W_O`` and ``W_QKV``.
:mod:`.lowrank` writes the key and query paths as rank-one terms (cheapest with few positions:
modular addition), :mod:`.dense` as one ``(2 d_head, d_v)`` matrix per head and position (long
contexts); :func:`.plan.plan` picks one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from libjax.forms import EDGES, Form
from libjax.forms.attention import dense, lowrank, plan, sums
from libjax.method.probes import ProbeSet


@dataclasses.dataclass(frozen=True)
class AttentionForm(Form):
    """An attention section ``x -> r_t + sum_h softmax(q k^T / scale) v W_O[h]`` at the output
    positions (all, or the last only), ``q, k, v`` from ``n``; ``n`` and ``r`` are both ``x``
    (``layout="shared"``) or its two halves (``"split"``, ``x = (n, r)``). ``matrices(params)``
    gives ``W_Q``, ``W_K`` ``(H, D, dh)``, ``W_V`` ``(H, D, dv)``, ``W_O`` ``(H, dv, D)``, one
    per query head (grouped-query attention: ``W_K``, ``W_V`` repeated per group);
    ``mask(P)`` the allowed ``(query, key)`` pairs. ``rotary_angles(P)``, if given, are the
    ``cos, sin`` tables ``(P, r)`` of rotary embeddings on the first ``r`` dims of each query and
    key head (:mod:`.rotary`). ``keep_resid``: the output is ``(r_t + attn_t, r_t)`` (parallel
    blocks). Position sources give the reference's estimates with the general path's signs;
    hidden sources are left to the general path."""

    matrices: Callable[[Any], dict]
    mask: Callable[[int], Any]
    scale: float
    layout: str
    last_only: bool
    rotary_angles: Callable[[int], tuple] | None = None
    keep_resid: bool = False
    label = "closed form of an attention section"

    def __post_init__(self):
        if self.keep_resid and self.last_only:
            raise ValueError("an attention form keeping the input residual (keep_resid) outputs "
                             "every position; last_only is not supported with it")

    def applies(self, section, task):
        return task.hidden_sources is None

    def probes(self, task):
        return ProbeSet(task.n_pos_out, task.out_dim, task.pos_sources, skip=task.skip_out)

    def plan(self, task, params) -> tuple[str, int, int]:
        n_weightings = task.n_pos_out if task.pos_sources is None else task.pos_sources
        return plan.plan(self, params, task.n_pos, n_weightings, task.out_dim, task.in_dim,
                         task.d_in, len(task.alphas), task.per_device, task.budget_gb)

    def zero(self, task, params):
        if task.kind == EDGES:
            return super().zero(task, params)
        return sums.zero_head_sums(self, params)

    def batch_sums(self, task, plan, params, x, sample_weights, signs, c_in_pinv, c_next):
        rho = self.probes(task).position_weights(signs).astype(x.dtype)  # 0 at skipped outputs
        if task.skip_in:  # (batch, P): 0 at skipped input positions
            sample_weights = task.row_weights(sample_weights)
        return self.weighted_sums(task.kind, plan, params, x, sample_weights, rho, c_in_pinv,
                                  c_next, task.alphas, task.quad_weights, task.acc_dtype)

    def weighted_sums(self, kind, plan, params, x, sample_weights, rho, c_in_pinv, c_next,
                      alphas, weights, acc=jnp.float64):
        """One batch ``x`` ``(batch, P, d_in or r_in)``'s head-sized sums of ``M'``
        (:func:`.sums.assemble` makes ``M'`` of them) or unnormalised edges ``(r_out, r_in)``,
        for position weightings ``rho`` ``(batch, R, P_out)``, accumulated in ``acc``.
        ``sample_weights``: ``(batch,)``, or ``(batch, P)`` weighting each input position ``s``
        (0: its terms are left out, docs/method.md 1.13)."""
        method, positions, samples = plan
        w, c, o = sums.prepare(self, params, c_next)
        data = (x, sample_weights, rho, alphas, weights)
        chunks = (samples,) if method == "lowrank" else (positions, samples)
        module = lowrank if method == "lowrank" else dense
        if kind == EDGES:
            return module.squared_edges_sum(self, w, c, o, c_in_pinv, *data, *chunks, acc)
        return module.m_prime_sum(self, w, o, *data, *chunks, acc)

    def finish(self, task, params, total, c_next):
        if task.kind == EDGES:
            return total
        return sums.assemble(self, params, total, c_next, task.d_in)

    def describe(self, task, plan):
        return f"{super().describe(task, plan)}, {plan[0]} method"
