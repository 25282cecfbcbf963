"""``M'`` and the squared edges of attention sections with few positions, from low-rank factors.

:mod:`libjax.forms.attention` writes, for a weighting ``rho`` of the output positions, the matrix
``G_s = sum_t rho_t (dF_t/dx_s) C`` at input position ``s`` as a value, a key and a query path.
Each path is a sum over positions of rank-one terms per head:

    G_s = c_s0 Res + sum_h c_sh W_V[h] O_h
          + sum_{h,t} (W_K[h] rho_t p_hts q_ht / scale) ((v_hs - z_ht) O_h)
          + [s a query] sum_{h,u} (W_Q[h] rho_s p_hsu k_hu / scale) ((v_hu - z_hs) O_h),

with ``O_h = W_O[h] C``, ``Res = C`` placed on the residual coordinates, ``c_s0 = rho_s`` at
output positions and ``c_sh = sum_t rho_t p_hts``. Writing the rank-one terms of one ``(rho, s)``
as ``W_g x_a (O_g^T y_a)^T`` (group ``g`` = key or query weights of a head),

    M' = sum G_s G_s^T = sum_mm' S_mm' Z_m Z_m'^T + sum_m,g (Z_m O_g^T S^ZL_mg W_g^T + transpose)
                         + sum_gg' W_g S^LL_gg' W_g'^T,

where ``S = sum c c^T``, ``S^ZL_mg = sum c_m y_a x_a^T`` and ``S^LL_gg' = sum x_a
(y_a^T O_g O_g'^T y_a') x_a'^T`` are head-sized sums over samples and positions. The edges need
per sample ``A = sum_s diag(f^_s) C_in^+ G_s``, which is the same sum of rank-one terms. With
``P`` positions and ``n`` samples this costs ``O(n P^2 H^2 d_head^2)`` instead of the
``O(n P d^2 r)`` of forming every ``G_s``: the modular-addition model (``P = 3``, one output
position) needs ~35x fewer FLOPs (10 GFLOP instead of 360). When the ranks approach ``d_head``
(long contexts) the dense method of :mod:`libjax.forms.attention.dense` is cheaper.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import libjax.forms.attention.rotary as rotary
import libjax.forms.attention.sums as sums_lib
from libjax.runtime import memory


def rank_per_head(n_alphas: int, n_out: int, n_pos: int) -> int:
    """Rank-one terms per head and ``(rho, s)`` at a query position."""
    return n_alphas * max(n_out, n_pos)


def _factors(form, w, x, rho, alpha, weight):
    """One sample's factors at the evaluation point ``alpha x``, scaled by the quadrature
    ``weight``: ``c`` ``(R, P, 1 + H)``, the key terms ``xk`` ``(R, P, H, Pq, dh)``, ``yk``
    ``(P, H, Pq, dv)`` and the query terms ``xq`` ``(R, Pq, H, P, dh)``, ``yq``
    ``(Pq, H, P, dv)`` (``Pq`` output positions)."""
    q, k, v, p, z = sums_lib.attention(form, w, alpha * x)
    scaled = weight / form.scale
    n_pos = x.shape[0]
    # rotary: the factors at input position s carry Theta_s^T (see rotary.py)
    xk = jnp.einsum("rt,hts,hte->rshte", rho, p, q) * scaled
    xk = rotary.turn(form, xk, np.arange(n_pos), n_pos, axis=1, inverse=True)
    yk = jnp.swapaxes(v, 0, 1)[:, :, None, :] - z[None]
    xq = jnp.einsum("rt,htu,hue->rthue", rho, p, k) * scaled
    xq = rotary.turn(form, xq, sums_lib.queries(form, n_pos), n_pos, axis=1, inverse=True)
    yq = jnp.swapaxes(v[:, None] - z[:, :, None], 0, 1)
    return weight * sums_lib.coefficients(form, rho, p, n_pos), xk, yk, xq, yq


def _row_sets(form, w, xs, rho, sw, alphas, weights, merge_queries: bool, acc):
    """Coefficients ``c`` ``(B, R, P, M)`` and sets of terms ``(positions, groups, x, y)`` with
    ``x`` ``(G, B, R, S, a, dh)``, ``y`` ``(G, B, S, a, dv)``, one group per head and kind.

    ``merge_queries`` (for ``M'``, whose cross terms need them together): at the output (query)
    positions the key and query terms of every head (``G = 2H``, key terms zero-padded to the
    query terms' count), elsewhere the key terms only; else (edges) the key terms at every
    position and the query terms at the query positions. Each sample's ``c`` and ``x`` are scaled
    by its weight ``sw`` (0 for padding; ``(B, P)``: per input position, 0 where skipped);
    everything is in ``acc``."""
    parts = [jax.vmap(lambda x, r: _factors(form, w, x, r, a, wt))(xs, rho)
             for a, wt in zip(alphas, weights)]
    n_pos = xs.shape[1]
    queries = sums_lib.queries(form, n_pos)
    # per-sample weights (B, 1), or per input position (B, P): 0 at skipped positions
    at, at_queries = (sw[:, None], sw[:, None]) if sw.ndim == 1 else (sw, sw[:, queries])
    c = sum(part[0] for part in parts) * at[:, None, :, None]
    xk, yk, xq, yq = (jnp.concatenate([part[i] for part in parts], axis=-2) for i in range(1, 5))
    xk = xk * at[:, None, :, None, None, None]
    xq = xq * at_queries[:, None, :, None, None, None]
    if merge_queries:
        others = np.setdiff1d(np.arange(n_pos), queries)
        pad = xq.shape[-2] - xk.shape[-2]
        pad_k = lambda a: jnp.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, pad), (0, 0)])  # noqa: E731
        sets = [(queries, ("K", "Q"), jnp.concatenate([pad_k(xk[:, :, queries]), xq], axis=3),
                 jnp.concatenate([pad_k(yk[:, queries]), yq], axis=2))]
        if len(others):
            sets.append((others, ("K",), xk[:, :, others], yk[:, others]))
    else:
        sets = [(np.arange(n_pos), ("K",), xk, yk), (queries, ("Q",), xq, yq)]
    cast = lambda a: a.astype(acc)  # noqa: E731
    return cast(c), [(positions, groups, cast(jnp.moveaxis(x, 3, 0)), cast(jnp.moveaxis(y, 2, 0)))
                    for positions, groups, x, y in sets]


def _images(o_g, y):
    """``m = O_g^T y`` ``(G, B, S, a, r)``: the output-side vectors of the rank-one terms."""
    g, b, s, a, f = y.shape
    return (y.reshape(g, b * s * a, f) @ o_g.astype(y.dtype)).reshape(g, b, s, a, -1)


def _m_prime_sums(form, w, o, xs, sw, rho, alphas, weights, acc):
    """One chunk's head-sized sums: ``S`` and, per row set, ``S^ZL`` and ``S^LL``. Every large
    contraction is a matrix product over samples x positions x terms."""
    c, sets = _row_sets(form, w, xs, rho, sw, alphas, weights, True, acc)
    flat = c.reshape(-1, c.shape[-1])
    sums = [flat.T @ flat]
    for positions, groups, x, y in sets:
        g, b, r, s, a, e = x.shape
        m = _images(sums_lib.group_weights(w, o, groups)[1], y)
        # kappa[b, s, (g a), (G a')] = m . m', the same for every weighting r
        rows = jnp.moveaxis(m, 0, 2).reshape(b, s, g * a, -1)
        kappa = (rows @ jnp.swapaxes(rows, -1, -2)).reshape(b, s, g, a, g, a)
        # S^ZL[mm, g] = sum c_mm y x^T
        cx = jnp.einsum("brsm,gbrsae->gbsame", c[:, :, positions], x)
        s_zl = jnp.swapaxes(y.reshape(g, b * s * a, -1), 1, 2) @ cx.reshape(g, b * s * a, -1)
        s_zl = jnp.moveaxis(s_zl.reshape(g, -1, c.shape[-1], e), 2, 0)  # (M, G, dv, dh)
        # S^LL[g, G] = sum x_a kappa_aa' x_a'^T
        t = jnp.einsum("bsgaGc,Gbrscf->gbrsaGf", kappa, x)
        s_ll = jnp.swapaxes(x.reshape(g, -1, e), 1, 2) @ t.reshape(g, b * r * s * a, g * e)
        sums += [s_zl, s_ll.reshape(g, e, g, e).transpose(0, 2, 1, 3)]
    return sums


def m_prime_sum(form, w, o, xs, sample_weights, rho, alphas, weights, samples: int, acc):
    """One batch's head-sized sums of ``M'`` (:func:`sums_lib.zero_head_sums`), ``samples``
    samples per step, accumulated in ``acc``."""
    def step(total, chunk):
        new = _m_prime_sums(form, w, o, *chunk, alphas, weights, acc)
        return jax.tree.map(jnp.add, total, new), None

    shapes = jax.eval_shape(lambda *a: _m_prime_sums(form, w, o, *a, alphas, weights, acc),
                            xs[:1], sample_weights[:1], rho[:1])
    init = [jnp.zeros(s.shape, s.dtype) for s in shapes]
    batches = memory.in_chunks(samples, xs, sample_weights, rho)
    s_cc, s_zl, s_ll, *keys_only = jax.lax.scan(step, init, batches)[0]
    if keys_only:  # the key terms away from the query positions: the key groups come first
        heads = keys_only[1].shape[0]
        s_zl = s_zl.at[:, :heads].add(keys_only[0])
        s_ll = s_ll.at[:heads, :heads].add(keys_only[1])
    return {"cc": s_cc, "zl": s_zl, "ll": s_ll}


def _attributions(form, w, o, pz, c_in_pinv, x_hat, sw, rho, alphas, weights, acc):
    """Per sample and weighting, ``A^T = (sum_s diag(f^_s) C_in^+ G_s)^T`` ``(B, R, r, r_in)``:
    the residual and value terms (``pz``: :func:`sums_lib.z_projections`), then all rank-one
    terms in one batched matrix product."""
    xs = x_hat @ c_in_pinv  # evaluated at the reconstruction, as the reference does
    coeffs, sets = _row_sets(form, w, xs, rho, sw, alphas, weights, False, acc)
    u = jnp.einsum("brsm,bsj->brmj", coeffs, x_hat.astype(coeffs.dtype))
    a_t = sums_lib.z_attributions(pz, u)
    lefts, rights = [], []
    for positions, groups, x, y in sets:
        w_g, o_g = sums_lib.group_weights(w, o, groups)
        g, b, r, s, a, e = x.shape
        pw = jnp.einsum("ji,gie->gej", c_in_pinv[:, :w_g.shape[1]], w_g).astype(x.dtype)
        left = (x.reshape(g, -1, e) @ pw).reshape(g, b, r, s, a, -1)
        left = left * x_hat[None, :, None, positions, None, :]
        lefts.append(jnp.moveaxis(left, 0, 3).reshape(b, r, s * g * a, -1))
        rights.append(jnp.moveaxis(_images(o_g, y), 0, 2).reshape(b, s * g * a, -1))
    left, right = jnp.concatenate(lefts, axis=2), jnp.concatenate(rights, axis=1)
    return a_t + jnp.einsum("bko,brkj->broj", right, left)


def squared_edges_sum(form, w, c, o, c_in_pinv, x_hat, sample_weights, rho, alphas, weights,
                      samples: int, acc):
    """Unnormalised squared edges ``(r, r_in)`` of one batch, ``samples`` samples per step,
    accumulated in ``acc``."""
    pz = sums_lib.z_projections(form, w, c, o, c_in_pinv)

    def step(total, chunk):
        a_t = _attributions(form, w, o, pz, c_in_pinv, *chunk, alphas, weights, acc)
        return total + jnp.sum(a_t * a_t, axis=(0, 1)), None

    init = jnp.zeros((c.shape[1], x_hat.shape[-1]), acc)
    batches = memory.in_chunks(samples, x_hat, sample_weights, rho)
    return jax.lax.scan(step, init, batches)[0]
