"""Closed forms of ``M'`` and the squared edges for attention sections (SPEC 1.7, 2.2, 4.3).

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

and the residual adds ``rho_s C`` at output positions. Neither method forms ``G_s``: both reduce
``M'`` to head-sized sums over samples and positions (:func:`attention_sums.assemble`) and the
edges to head-sized products, instead of one VJP per output direction through ``W_O`` and
``W_QKV``. :mod:`libjax.forms.attention.lowrank` writes the key and query paths as rank-one terms
(cheapest with few positions: modular addition), :mod:`libjax.forms.attention.dense` as one
``(2 d_head, d_v)`` matrix per head and position (long contexts); :func:`plan` picks one.
"""

from __future__ import annotations

from libjax.forms.attention import dense as attention_dense
from libjax.forms.attention import lowrank as attention_lowrank
from libjax.runtime import memory
from libjax.forms.attention import sums as sums_lib


def plan(form, params, n_pos: int, n_weightings: int, out_dim: int, in_dim: int, d_in: int,
         n_alphas: int, per_device: int, budget_gb: float) -> tuple[str, int, int]:
    """``(method, positions, samples)`` per step: the low-rank method while its rank per head is
    well below ``d_head``, else the dense one; chunk sizes keep the working set near
    ``budget_gb`` (``in_dim``: the input basis's width for the edges, 0 for ``M'``)."""
    w = form.weights(params)
    heads, d_head, d_v = w["W_Q"].shape[0], w["W_Q"].shape[2], w["W_V"].shape[2]
    rank = attention_lowrank.rank_per_head(n_alphas, len(sums_lib.queries(form, n_pos)), n_pos)
    if 4 * rank <= d_head:
        terms = n_weightings * n_pos * 2 * heads * rank
        per_sample = 8 * (terms * (2 * d_head + out_dim + in_dim + 2 * heads * rank)
                          + 2 * n_weightings * out_dim * in_dim)
        return "lowrank", n_pos, memory.rows_per_step(3 * per_sample, budget_gb, per_sample,
                                                     limit=per_device)
    per_row = 8 * 2 * n_weightings * heads * (2 * d_head * d_v * (3 + heads) + d_v * in_dim
                                              + n_pos * (2 * d_head + d_v) + d_in)
    rows = memory.rows_per_step(per_row, budget_gb)
    positions = min(n_pos, rows)
    return "dense", positions, int(max(1, min(per_device, rows // positions)))


def m_prime_sum(form, params, xs, sample_weights, rho, c, alphas, weights, method: str,
                positions: int, samples: int):
    """Unnormalised ``M'`` ``(d_in, d_in)`` of one batch.

    Args:
      xs: ``(batch, P, d_in)`` inputs in the neuron basis; rho: ``(batch, R, P_out)`` weightings.
      c: the next layer's ``C`` ``(D, r)`` or None.
      method, positions, samples: from :func:`plan`.
    """
    w, c, o = sums_lib.prepare(form, params, c)
    if method == "lowrank":
        return attention_lowrank.m_prime_sum(form, w, c, o, xs, sample_weights, rho, alphas,
                                             weights, samples)
    return attention_dense.m_prime_sum(form, w, c, o, xs, sample_weights, rho, alphas, weights,
                                       positions, samples)


def squared_edges_sum(form, params, x_hat, sample_weights, rho, c_in_pinv, c_out, alphas, weights,
                      method: str, positions: int, samples: int):
    """Unnormalised squared edges ``(r_out, r_in)`` of one batch; ``x_hat`` ``(batch, P, r_in)``
    in the input basis, evaluated (as the reference does) at ``x_hat C_in^+``."""
    w, c, o = sums_lib.prepare(form, params, c_out)
    if method == "lowrank":
        return attention_lowrank.squared_edges_sum(form, w, c, o, c_in_pinv, x_hat,
                                                   sample_weights, rho, alphas, weights, samples)
    return attention_dense.squared_edges_sum(form, w, c, o, c_in_pinv, x_hat, sample_weights, rho,
                                             alphas, weights, positions, samples)
