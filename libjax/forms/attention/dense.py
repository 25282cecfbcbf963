"""``M'`` and the squared edges of attention sections from per-position head matrices (the dense
method of :mod:`libjax.forms.attention`, for long contexts).

At input position ``s`` and weighting ``rho``, the key and query paths of ``G_s`` are
``sum_h [W_K[h] W_Q[h]] Y_hs O_h`` with the ``(2 d_head, d_v)`` matrix ``Y_hs = [T_hs; U_hs]``,

    T_hs = sum_t rho_t p_hts q_ht (v_hs - z_ht)^T / scale,
    U_hs = rho_s sum_u p_hsu k_hu (v_hu - z_hs)^T / scale     (s a query position, else 0),

so ``M'`` needs ``S^ZL_mh = sum c_m Y_hs^T`` and ``S^LL_hh' = sum Y_hs O_h O_h'^T Y_h's^T``
(head-sized: ``O(H^2 d_head^2 d_v)`` per position instead of the ``O(d^2 r)`` of forming ``G_s``),
and the edges ``sum_s Y_hs^T (C_in^+ [W_K W_Q])^T diag(f^_s)`` per head. Samples and positions
are processed in chunks, so memory stays ``O(samples x positions x H^2 d_head d_v)`` per step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import libjax.forms.attention.rotary as rotary
import libjax.forms.attention.sums as sums_lib
from libjax.runtime import memory


def _patterns(form, w, xs, alphas):
    """The attention of every sample at every evaluation point ``alpha x`` (see
    :func:`sums_lib.attention`), batched: one tuple per point."""
    return [jax.vmap(lambda x: sums_lib.attention(form, w, a * x))(xs) for a in alphas]


def _per_head(fun, *args):
    """``fun`` of each head's slices of ``args`` (head axis first), stacked: one head's
    ``P x d_head d_v`` products live at a time instead of every head's."""
    return jax.lax.map(lambda a: fun(*a), args)


def _head_matrices(form, att, rho, weight, n_pos: int, idx, is_query, slot, window):
    """One sample's ``c`` ``(R, S, M)`` and ``Y`` ``(H, R, S, 2 dh, dv)`` at the positions
    ``idx``, from its attention ``att`` at one evaluation point with quadrature ``weight``;
    ``window = (lo, hi)``: ``p_hts`` is zero for query positions ``t < lo`` and ``p_hsu`` for
    keys ``u >= hi`` at these positions (causal masks), so the sums skip them.

    The quadratic sums are one matrix product per head over the positions ``t`` (``u``), with
    the weights times the queries (keys) as its left factor: ``B_hs = sum_t (w_hst q_ht) z_ht^T``
    with ``w_hst = rho_t p_hts``, and ``L_hs = sum_u (p_hsu k_hu) v_hu^T``; a chunk of ``S``
    positions makes it ``(R S dh, P) x (P, dv)``, which runs at the matmul rate (and forms
    ``R S dh P`` products, not the ``P dh dv`` outer products of every pair)."""
    q, k, v, p, z = att
    c = sums_lib.coefficients(form, rho, p, n_pos)[:, idx]
    lo, hi = window
    w = jnp.einsum("rt,hts->hrst", rho[:, lo:], p[:, lo:, idx])  # (H, R, S, Pq - lo)

    def quadratic(w_h, q_h, z_h, p_h, k_h, v_h):
        wq = (w_h[..., None, :] * q_h.T).reshape(-1, q_h.shape[0])  # ((R S dh), t)
        pk = (p_h[:, None, :] * k_h.T).reshape(-1, k_h.shape[0])  # ((S dh), u)
        return wq @ z_h, pk @ v_h

    rows = p[:, slot, :hi]  # (H, S, hi): the query rows at the chunk's positions
    b, l_kv = _per_head(quadratic, w, q[:, lo:], z[:, lo:], rows, k[:, :hi], v[:, :hi])
    heads, n_r, size = w.shape[0], w.shape[1], idx.shape[0]
    b = b.reshape(heads, n_r, size, q.shape[-1], z.shape[-1])
    a = jnp.einsum("hrst,hte->hrse", w, q[:, lo:])
    t = a[..., None] * v[:, None, idx, None, :] - b
    rho_s = rho[:, slot] * is_query  # (R, S): the query path's weight
    kappa = jnp.einsum("hsu,hue->hse", rows, k[:, :hi])
    lz = (l_kv.reshape(heads, size, k.shape[-1], v.shape[-1])
          - kappa[..., None] * z[:, slot, None, :])
    u = rho_s[None, :, :, None, None] * lz[:, None]
    # rotary: Theta_s^T on the d_head rows at input position s (see rotary.py)
    t, u = (jnp.swapaxes(rotary.turn(form, jnp.swapaxes(m, -1, -2), idx, n_pos, axis=-3,
                                     inverse=True), -1, -2) for m in (t, u))
    return weight * c, weight / form.scale * jnp.concatenate([t, u], axis=-2)


def _chunk_matrices(form, atts, rho, sw, weights, n_pos: int, idx, valid, window, acc):
    """``c`` ``(B, R, S, M)`` and ``Y`` ``(B, H, R, S, 2 dh, dv)`` of a chunk, summed over the
    quadrature points and scaled by the sample weights (``(B,)``, or ``(B, P)`` with skipped
    positions 0) and the position mask, in ``acc``."""
    if form.last_only:
        slot, is_query = jnp.zeros_like(idx), idx == n_pos - 1
    else:
        slot, is_query = idx, jnp.ones(idx.shape, bool)
    parts = [jax.vmap(lambda at, r: _head_matrices(form, at, r, wt, n_pos, idx, is_query, slot,
                                                   window))(att, rho)
             for att, wt in zip(atts, weights)]
    at = sw[:, None] if sw.ndim == 1 else sw[:, idx]  # per-sample or per-position weights
    mask = at[:, None, :] * valid[None, None, :]  # (B, 1, S)
    c = sum(part[0] for part in parts) * mask[..., None]
    y = sum(part[1] for part in parts) * mask[:, None, :, :, None, None]
    return c.astype(acc), y.astype(acc)


SEGMENTS = 4  # causal masks: position chunks in this many runs, each skipping its masked pairs


def _windows(form, n_pos: int, positions: int) -> list[tuple[int, int, int, int]]:
    """Runs of position chunks ``(first, last)`` (chunk indices, last excluded) and the
    ``(lo, hi)`` window of :func:`_head_matrices` valid for every chunk in a run. Under a causal
    mask (query ``t`` sees keys ``u <= t``) a run of positions ``[a, b)`` needs queries ``t >= a``
    and keys ``u < b``: ``SEGMENTS`` runs do ``(SEGMENTS + 1) / (2 SEGMENTS)`` of the pairs' work
    (each run is a scan of its own: static shapes, one program per run). Other masks, and a last
    query only: one run over everything."""
    n_steps = -(-n_pos // positions)
    mask = form.mask(n_pos)
    causal = (not form.last_only and isinstance(mask, np.ndarray)
              and not np.triu(mask, 1).any())
    if not causal:
        return [(0, n_steps, 0, n_pos)]
    cuts = sorted({round(i * n_steps / SEGMENTS) for i in range(SEGMENTS + 1)})
    return [(a, b, a * positions, min(n_pos, b * positions)) for a, b in zip(cuts, cuts[1:])]


def _scan(form, xs_list, sample_weights, samples: int, positions: int, n_pos: int, acc, start,
          step, finish):
    """Per chunk of samples (padding samples get weight 0): ``state = start(chunk)``, fold
    ``step(inner, state, idx, valid, window)`` over chunks of positions (padding positions have
    ``valid = False``; ``window``: :func:`_windows`) from ``state["inner"]``, then
    ``acc = finish(acc, inner, state)``."""
    positions = max(1, min(positions, n_pos))
    runs = _windows(form, n_pos, positions)
    batches = memory.in_chunks(samples, *xs_list, sample_weights)

    def over_samples(acc, chunk):
        state = start(chunk)
        inner = state["inner"]
        for first, last, lo, hi in runs:
            def over_positions(inner, i, window=(lo, hi)):
                idx = i * positions + jnp.arange(positions)
                return step(inner, state, jnp.minimum(idx, n_pos - 1), idx < n_pos,
                            window), None

            inner = jax.lax.scan(over_positions, inner, jnp.arange(first, last))[0]
        return finish(acc, inner, state), None

    return jax.lax.scan(over_samples, acc, batches)[0]


def _to_groups(s_zl, s_ll):
    """Head sums over ``[K; Q]`` rows to the key/query groups of :func:`sums_lib.assemble`:
    ``(M, H, dv, 2dh) -> (M, 2H, dv, dh)`` and ``(H, H, 2dh, 2dh) -> (2H, 2H, dh, dh)``."""
    m, h, f, e2 = s_zl.shape
    e = e2 // 2
    s_zl = s_zl.reshape(m, h, f, 2, e).transpose(0, 3, 1, 2, 4).reshape(m, 2 * h, f, e)
    s_ll = s_ll.reshape(h, h, 2, e, 2, e).transpose(2, 0, 4, 1, 3, 5).reshape(2 * h, 2 * h, e, e)
    return s_zl, s_ll


HEAD_GROUPS = 4  # S^LL: its upper block triangle in this many column groups of heads


def _column_groups(heads: int) -> list[tuple[int, int]]:
    """The heads ``[lo, hi)`` of each column group of ``S^LL``: the group's columns are summed
    against the rows ``h < hi`` only, and the blocks below mirrored at the end
    (:func:`_mirrored`): ``(HEAD_GROUPS + 1) / (2 HEAD_GROUPS)`` of the pairs' products."""
    cuts = sorted({round(i * heads / HEAD_GROUPS) for i in range(HEAD_GROUPS + 1)})
    return list(zip(cuts, cuts[1:]))


def _mirrored(blocks, groups, heads: int):
    """The symmetric ``S^LL`` ``(h, H, e, x)`` from its column groups' blocks ``(H, h < hi, e,
    x)``: ``S^LL_Hh = S^LL_hH^T``."""
    e = blocks[0].shape[-1]
    full = jnp.zeros((heads, heads, e, e), blocks[0].dtype)
    for (lo, hi), block in zip(groups, blocks):
        upper = block.transpose(1, 0, 2, 3)  # (h < hi, H in [lo, hi), e, x)
        full = full.at[:hi, lo:hi].set(upper)
        full = full.at[lo:hi, :lo].set(upper[:lo].transpose(1, 0, 3, 2))
    return full


def m_prime_sum(form, w, o, xs, sample_weights, rho, alphas, weights, positions: int,
                samples: int, acc):
    """One batch's head-sized sums of ``M'`` (:func:`sums_lib.zero_head_sums`), accumulated in
    ``acc``."""
    heads, dv, d_head = o.shape[0], o.shape[1], w["W_Q"].shape[2]
    n_m, n_pos = heads + 1, xs.shape[1]
    omega = jnp.einsum("hfo,Hgo->hHfg", o, o).astype(acc)
    groups = _column_groups(heads)
    zeros = tuple(jnp.zeros(shape, acc) for shape in (
        (n_m, n_m), (n_m, heads, dv, 2 * d_head))) + (tuple(
            jnp.zeros((hi - lo, hi, 2 * d_head, 2 * d_head), acc) for lo, hi in groups),)

    def start(chunk):
        x, r, sw = chunk
        return {"atts": _patterns(form, w, x, alphas), "rho": r, "sw": sw, "inner": zeros}

    def step(total, state, idx, valid, window):
        cc, y = _chunk_matrices(form, state["atts"], state["rho"], state["sw"], weights, n_pos,
                                idx, valid, window, acc)
        # S^LL_hH = sum Y_h Omega_hH Y_H^T, one column H at a time, rows h up to its group's
        # end: (h, e, (b r s), f) rows times Omega_hH, then one product over (b r s, g) with
        # Y_H (both in matmul layout)
        yt = y.transpose(1, 4, 0, 2, 3, 5).reshape(heads, 2 * d_head, -1, dv)
        s_ll = tuple(_per_head(lambda om, y_col, hi=hi: jnp.einsum(
            "hesg,xsg->hex", jnp.einsum("hesf,hfg->hesg", yt[:hi], om), y_col),
            omega[:hi, lo:hi].swapaxes(0, 1), yt[lo:hi]) for lo, hi in groups)  # (H, h, e, x)
        new = (jnp.einsum("brsm,brsn->mn", cc, cc), jnp.einsum("brsm,bhrsef->mhfe", cc, y),
               s_ll)
        return jax.tree.map(jnp.add, total, new)

    finish = lambda total, inner, state: jax.tree.map(jnp.add, total, inner)  # noqa: E731
    s_cc, s_zl, s_ll = _scan(form, [xs, rho], sample_weights, samples, positions, n_pos, zeros,
                             start, step, finish)
    s_zl, s_ll = _to_groups(s_zl, _mirrored(s_ll, groups, heads))
    return {"cc": s_cc, "zl": s_zl, "ll": s_ll}


def squared_edges_sum(form, w, c, o, c_in_pinv, x_hat, sample_weights, rho, alphas, weights,
                      positions: int, samples: int, acc):
    """Unnormalised squared edges ``(r, r_in)`` of one batch (the section evaluated at the
    reconstruction ``x_hat C_in^+``, as the reference does), accumulated in ``acc``."""
    w_kq = jnp.concatenate([w["W_K"], w["W_Q"]], axis=-1)  # (H, D, 2dh)
    pw = jnp.einsum("ji,hie->hej", c_in_pinv[:, :w_kq.shape[1]], w_kq).astype(acc)
    pz = sums_lib.z_projections(form, w, c, o, c_in_pinv)
    heads, dv = o.shape[:2]
    n_r, r_in, n_pos = rho.shape[1], x_hat.shape[-1], x_hat.shape[1]

    def start(chunk):
        f_hat, r, sw = chunk
        b = f_hat.shape[0]
        inner = (jnp.zeros((b, n_r, heads + 1, r_in), acc),
                 jnp.zeros((b, heads, n_r, dv, r_in), acc))
        return {"atts": _patterns(form, w, f_hat @ c_in_pinv, alphas), "rho": r, "sw": sw,
                "f_hat": f_hat, "inner": inner}

    def step(inner, state, idx, valid, window):
        cc, y = _chunk_matrices(form, state["atts"], state["rho"], state["sw"], weights, n_pos,
                                idx, valid, window, acc)
        f_s = state["f_hat"][:, idx].astype(acc)
        # per head: sum_{s,e} Y_se^T (pw_ej f^_sj), one product over (s, e): f^_s weights pw
        # first (S x 2dh x r_in, a 1/dv of the product's work), not the product's S x dv x r_in
        heads_part = _per_head(lambda y_h, pw_h: jnp.einsum(
            "brsef,bsej->brfj", y_h, pw_h[None, None] * f_s[:, :, None, :]),
            y.swapaxes(0, 1), pw)
        return (inner[0] + jnp.einsum("brsm,bsj->brmj", cc, f_s),
                inner[1] + heads_part.swapaxes(0, 1))

    def finish(total, inner, state):
        u, heads_part = inner
        a_t = sums_lib.z_attributions(pz, u)
        a_t = a_t + jnp.einsum("hfo,bhrfj->broj", o.astype(acc), heads_part)
        return total + jnp.sum(a_t * a_t, axis=(0, 1))

    init = jnp.zeros((c.shape[1], r_in), acc)
    return _scan(form, [x_hat, rho], sample_weights, samples, positions, n_pos, init, start, step,
                 finish)
