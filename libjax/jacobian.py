"""Integrated Jacobian-transpose products and the ``M'`` matrix of the LIB basis (SPEC 1.7).

For a per-sample section ``fn: (P_in, d_in) -> (P_out, d_out)`` (already followed by the next
layer's basis), a probe ``phi`` gives ``g_phi = sum_k w_k VJP_fn(alpha_k x)(phi)``, and

    M' = sum_b sum_phi sum_s g_phi[s]^T g_phi[s]      (to be divided by N * P_in * S).

The batch is linearised once per quadrature point; probes are then processed ``chunk`` at a time
inside a ``lax.scan`` (memory bounded by the chunk), each chunk a ``vmap`` over probes of the
stored VJP; nothing loops in Python over samples, probes or output dimensions.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from libjax.probes import ProbeSet


def batch_vjp(fn: Callable, xs, alphas, weights) -> Callable:
    """Linearise the section once per quadrature point for a whole batch.

    Returns ``apply(cotangents)``: ``(batch, k, P_out, d_out) -> (batch, k, P_in, d_in)``, the
    integrated VJPs ``sum_k weights[k] * VJP_fn(alphas[k] * x)`` of every sample and probe.
    Samples are independent, so the VJP of the batched section with per-sample cotangents is the
    per-sample VJP; probes are ``vmap``-ed over the stored linearisation (no recomputed forward).
    """
    vjps = [jax.vjp(jax.vmap(fn), a * xs)[1] for a in jnp.asarray(alphas, xs.dtype)]

    def one_probe(cotangent):  # (batch, P_out, d_out)
        return sum(w * vjp(cotangent)[0] for vjp, w in zip(vjps, jnp.asarray(weights, xs.dtype)))

    return jax.vmap(one_probe, in_axes=1, out_axes=1)


def scan_probe_chunks(probes: ProbeSet, chunk: int, add_chunk: Callable, init):
    """Fold ``add_chunk(acc, ids)`` over all probe ids, ``chunk`` at a time (last chunk padded)."""
    chunk = max(1, min(chunk, probes.n_probes))
    n_chunks = math.ceil(probes.n_probes / chunk)

    def body(acc, c):
        return add_chunk(acc, c * chunk + jnp.arange(chunk)), None

    return jax.lax.scan(body, init, jnp.arange(n_chunks))[0]


def probe_cotangents(probes: ProbeSet, signs, ids, dtype):
    """The probes numbered ``ids`` for every sample, ``(batch, k, P_out, d_out)``."""
    return jax.vmap(lambda s: probes.make(s, ids, dtype))(signs)


def m_prime_sum(fn: Callable, xs, sample_weights, probes: ProbeSet, signs, alphas, weights,
                chunk: int):
    """Unnormalised ``M'`` ``(d_in, d_in)`` of one batch, accumulated in float64.

    Args:
      fn: per-sample section (into the next layer's basis).
      xs: inputs ``(batch, P_in, d_in)`` (neuron basis).
      sample_weights: ``(batch,)``, 1 for real samples, 0 for padding.
      probes: the probe set over ``fn``'s output; ``signs`` its per-sample random signs.
      alphas, weights: quadrature rule.
      chunk: probes per VJP batch.
    """
    dim = xs.shape[-1]
    vjp = batch_vjp(fn, xs, alphas, weights)

    def add_chunk(acc, ids):
        g = vjp(probe_cotangents(probes, signs, ids, xs.dtype)).astype(jnp.float64)
        gw = g * sample_weights.astype(jnp.float64)[:, None, None, None]
        return acc + jnp.einsum("bksi,bksj->ij", gw, g)

    return scan_probe_chunks(probes, chunk, add_chunk, jnp.zeros((dim, dim), jnp.float64))
