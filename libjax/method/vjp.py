"""Integrated Jacobian-transpose products and the ``M'`` matrix of the LIB basis (SPEC 1.7).

For a per-sample section ``fn: (P_in, d_in) -> (P_out, d_out)`` (already followed by the next
layer's basis), a probe ``phi`` gives ``g_phi = sum_k w_k VJP_fn(alpha_k x)(phi)``, and

    M' = sum_b sum_phi sum_s g_phi[s]^T g_phi[s]      (to be divided by N * P_in * S).

Probes are processed ``chunk`` at a time inside a ``lax.scan`` (memory bounded by the chunk), each
chunk as ``vmap`` over samples of ``vmap`` over probes of one VJP; nothing loops in Python over
samples, probes or output dimensions.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from libjax.method.probes import ProbeSet


def integrated_vjps(fn: Callable, x, cotangents, alphas, weights):
    """``sum_k weights[k] * VJP of fn at alphas[k] * x`` for each cotangent.

    Args:
      fn: per-sample function ``(P_in, d_in) -> (P_out, d_out)``.
      x: one sample's input ``(P_in, d_in)``.
      cotangents: ``(k, P_out, d_out)``.
      alphas, weights: quadrature points and weights (SPEC 2.5).
    Returns:
      ``(k, P_in, d_in)``.
    """
    def at(alpha):
        _, vjp = jax.vjp(fn, alpha * x)
        return jax.vmap(lambda c: vjp(c)[0])(cotangents)

    grads = jax.vmap(at)(jnp.asarray(alphas, x.dtype))
    return jnp.tensordot(jnp.asarray(weights, x.dtype), grads, axes=1)


def scan_probe_chunks(probes: ProbeSet, chunk: int, add_chunk: Callable, init):
    """Fold ``add_chunk(acc, ids)`` over all probe ids, ``chunk`` at a time (last chunk padded)."""
    chunk = max(1, min(chunk, probes.n_probes))
    n_chunks = math.ceil(probes.n_probes / chunk)

    def body(acc, c):
        return add_chunk(acc, c * chunk + jnp.arange(chunk)), None

    return jax.lax.scan(body, init, jnp.arange(n_chunks))[0]


def probe_vjps(fn, xs, signs, probes: ProbeSet, ids, alphas, weights):
    """Integrated VJPs ``(batch, k, P_in, d_in)`` of the probes numbered ``ids`` for each sample.

    Each chunk re-linearises its samples: measured faster on CPU than keeping one linearisation
    of the whole batch across chunks (less memory traffic), and it bounds memory by the chunk."""
    def per_sample(x, s):
        return integrated_vjps(fn, x, probes.make(s, ids, x.dtype), alphas, weights)
    return jax.vmap(per_sample)(xs, signs)


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

    def add_chunk(acc, ids):
        g = probe_vjps(fn, xs, signs, probes, ids, alphas, weights).astype(jnp.float64)
        gw = g * sample_weights.astype(jnp.float64)[:, None, None, None]
        return acc + jnp.einsum("bksi,bksj->ij", gw, g)

    return scan_probe_chunks(probes, chunk, add_chunk, jnp.zeros((dim, dim), jnp.float64))
