"""The general path: ``M'`` (docs/method.md 1.7) and the squared edges (docs/method.md 2.2, 2.3)
from integrated Jacobian-transpose products, for any section.

For a per-sample section ``fn: (P_in, d_in) -> (P_out, d_out)`` (already followed by the next
layer's basis), a probe ``phi`` gives ``g_phi = sum_k w_k VJP_fn(alpha_k x)(phi)``, and

    M' = sum_b sum_phi sum_s g_phi[s]^T g_phi[s]      (to be divided by N * P_in * S).

Probes are processed ``chunk`` at a time inside a ``lax.scan`` (memory bounded by the chunk), each
chunk as ``vmap`` over samples of ``vmap`` over probes of one VJP; nothing loops in Python over
samples, probes or output dimensions.

Edges: with ``F^(f^)`` the section written in basis coordinates on both sides, the attribution
of input node ``j`` to output node ``i`` at output position ``t`` is the integrated gradient

    A[t,i,j] = sum_k w_k sum_s dF^_{t,i}/df^_{s,j} (alpha_k f^) * f^_{s,j},

and ``E_ij = sum_b sum_t A[t,i,j]^2`` (to be divided by ``N * P_in * R``). Stochastic edges replace
the sum over ``t`` by ``R`` Rademacher combinations of positions (exact when ``P_out = 1``). For a
positionwise section ``A[t,i,j] = g_i[t,j] f^_{t,j}`` with one probe per output dim (see
:mod:`libjax.method.probes`), squared per position.

Positions left out of a build (docs/method.md 1.13): the probes are zero at skipped output
positions ``t``, and skipped input positions ``s`` are dropped from the sum over ``s`` (``M'``:
outside the outer product; edges: inside the square), so no term ``dF_t/df_s`` with ``t`` or
``s`` skipped is added.

:class:`VJPPath` offers both through the protocol of :mod:`libjax.forms`, for sections without
a closed form (and for every section with ``BuildConfig(fast_paths=False)``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from libjax.forms import EDGES, Form, kept
from libjax.method.probes import ProbeSet


def integrated_vjps(fn: Callable, x, cotangents, alphas, weights):
    """``sum_k weights[k] * VJP of fn at alphas[k] * x`` for each cotangent.

    Args:
      fn: per-sample function ``(P_in, d_in) -> (P_out, d_out)``.
      x: one sample's input ``(P_in, d_in)``.
      cotangents: ``(k, P_out, d_out)``.
      alphas, weights: quadrature points and weights (docs/method.md 2.5).
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
                chunk: int, acc=jnp.float64, keep_in=None):
    """Unnormalised ``M'`` ``(d_in, d_in)`` of one batch, accumulated in ``acc``.

    Args:
      fn: per-sample section (into the next layer's basis).
      xs: inputs ``(batch, P_in, d_in)`` (neuron basis).
      sample_weights: ``(batch,)``, 1 for real samples, 0 for padding.
      probes: the probe set over ``fn``'s output (zero at skipped output positions); ``signs``
        its per-sample random signs.
      alphas, weights: quadrature rule.
      chunk: probes per VJP batch.
      acc: the accumulation dtype.
      keep_in: ``(P_in,)``, 0 at the input positions left out (docs/method.md 1.13); None: all.
    """
    dim = xs.shape[-1]

    def add_chunk(total, ids):
        g = probe_vjps(fn, xs, signs, probes, ids, alphas, weights).astype(acc)
        gw = g * sample_weights.astype(acc)[:, None, None, None]
        if keep_in is not None:
            gw = gw * jnp.asarray(keep_in, acc)[:, None]
        return total + jnp.einsum("bksi,bksj->ij", gw, g)

    return scan_probe_chunks(probes, chunk, add_chunk, jnp.zeros((dim, dim), acc))


def squared_edges_sum(fn: Callable, xs, sample_weights, probes: ProbeSet, signs, alphas, weights,
                      chunk: int, acc=jnp.float64, keep_in=None):
    """Unnormalised squared edges ``(d_out, d_in)`` of one batch, accumulated in ``acc``.

    Args:
      fn: per-sample section in basis coordinates, ``(P_in, d_in) -> (P_out, d_out)``.
      xs: inputs in the input layer's basis ``(batch, P_in, d_in)``.
      probes: exact or position-stochastic probes over ``fn``'s output.
      Other arguments as in :func:`m_prime_sum`; ``keep_in`` drops the skipped input positions'
        terms from inside the square.
    """
    def add_chunk(total, ids):
        g = probe_vjps(fn, xs, signs, probes, ids, alphas, weights)
        terms = (g * xs[:, None]).astype(acc)  # (batch, k, P_in, d_in)
        if keep_in is not None:
            terms = terms * jnp.asarray(keep_in, acc)[:, None]
        a2 = jnp.sum(terms ** 2, axis=2) if probes.positionwise else jnp.sum(terms, axis=2) ** 2
        contrib = jnp.einsum("b,bkj->kj", sample_weights.astype(acc), a2)
        return total.at[probes.output_index(ids)].add(contrib)

    init = jnp.zeros((probes.dim, xs.shape[-1]), acc)
    return scan_probe_chunks(probes, chunk, add_chunk, init)


def probe_chunk(probes: ProbeSet, batch: int, in_elems: int, n_alphas: int,
                budget_gb: float) -> int:
    """Probes per VJP batch so that gradients, cotangents and the backward pass fit the budget."""
    per_probe = 8 * batch * n_alphas * (in_elems + probes.n_pos * probes.dim) * 4
    return int(max(1, min(probes.n_probes, budget_gb * 2**30 // per_probe)))


@dataclasses.dataclass(frozen=True)
class VJPPath(Form):
    """The general path for a section ``fn``, as a :class:`libjax.forms.Form`. With
    ``positionwise`` (a positionwise section, fast paths on) one probe per output direction
    sums over positions exactly, so position sources are not drawn."""

    fn: Callable
    positionwise: bool = False
    label = "general path"

    def applies(self, section, task):
        return True

    def probes(self, task):
        pos_sources = None if self.positionwise else task.pos_sources
        return ProbeSet(task.n_pos_out, task.out_dim, pos_sources, task.hidden_sources,
                        positionwise=self.positionwise, skip=task.skip_out)

    def plan(self, task, params) -> int:
        width = task.in_dim if task.kind == EDGES else task.d_in
        return probe_chunk(self.probes(task), task.per_device, task.n_pos * width,
                           len(task.alphas), task.budget_gb)

    def batch_sums(self, task, plan, params, x, sample_weights, signs, c_in_pinv, c_next):
        def section(y):
            out = self.fn(params, y)
            return out if c_next is None else out @ c_next
        keep_in = kept(task.n_pos, task.skip_in) if task.skip_in else None
        args = (self.probes(task), signs, task.alphas, task.quad_weights, plan, task.acc_dtype,
                keep_in)
        if task.kind == EDGES:
            return squared_edges_sum(lambda y: section(y @ c_in_pinv), x, sample_weights, *args)
        return m_prime_sum(section, x, sample_weights, *args)

    def describe(self, task, plan):
        return f"{super().describe(task, plan)}, {self.probes(task).n_probes} probes per sample"
