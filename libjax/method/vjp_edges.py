"""Squared edges between consecutive node layers, exact or stochastic (SPEC 2.2, 2.3).

With ``F^(f^)`` the section written in LIB coordinates on both sides, the attribution of input
node ``j`` to output node ``i`` at output position ``t`` is the integrated gradient

    A[t,i,j] = sum_k w_k sum_s dF^_{t,i}/df^_{s,j} (alpha_k f^) * f^_{s,j},

and ``E_ij = sum_b sum_t A[t,i,j]^2`` (to be divided by ``N * P_in * R``). Stochastic edges replace
the sum over ``t`` by ``R`` Rademacher combinations of positions (exact when ``P_out = 1``). For a
positionwise section ``A[t,i,j] = g_i[t,j] f^_{t,j}`` with one probe per output dim (see
:mod:`libjax.method.probes`), squared per position.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from libjax.method.vjp import probe_vjps, scan_probe_chunks
from libjax.method.probes import ProbeSet


def squared_edges_sum(fn: Callable, xs, sample_weights, probes: ProbeSet, signs, alphas, weights,
                      chunk: int):
    """Unnormalised squared edges ``(d_out, d_in)`` of one batch, accumulated in float64.

    Args:
      fn: per-sample section in basis coordinates, ``(P_in, d_in) -> (P_out, d_out)``.
      xs: inputs in the input layer's basis ``(batch, P_in, d_in)``.
      probes: exact or position-stochastic probes over ``fn``'s output.
      Other arguments as in :func:`libjax.method.vjp.m_prime_sum`.
    """
    def add_chunk(acc, ids):
        g = probe_vjps(fn, xs, signs, probes, ids, alphas, weights)
        terms = (g * xs[:, None]).astype(jnp.float64)  # (batch, k, P_in, d_in)
        a2 = jnp.sum(terms ** 2, axis=2) if probes.positionwise else jnp.sum(terms, axis=2) ** 2
        contrib = jnp.einsum("b,bkj->kj", sample_weights.astype(jnp.float64), a2)
        return acc.at[probes.output_index(ids)].add(contrib)

    init = jnp.zeros((probes.dim, xs.shape[-1]), jnp.float64)
    return scan_probe_chunks(probes, chunk, add_chunk, init)
