"""Pieces shared by the two closed-form methods for attention sections (see
:mod:`libjax.forms.attention` for the math): the attention pattern, the matrices ``Z_m`` of the
residual and value paths, and ``M'`` assembled from head-sized sums."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import libjax.forms.attention.rotary as rotary


def queries(form, n_pos: int) -> np.ndarray:
    """The output (query) positions: all, or the last one only."""
    return np.arange(n_pos - 1, n_pos) if form.last_only else np.arange(n_pos)


def attention(form, w, x):
    """One sample's ``q`` ``(H, Pq, dh)``, ``k``, ``v`` ``(H, P, d)`` (``q``, ``k`` rotated if
    rotary), pattern ``p`` ``(H, Pq, P)`` and ``z = p v`` ``(H, Pq, dv)``."""
    n = x[:, :x.shape[-1] // 2] if form.layout == "split" else x
    n_pos = n.shape[0]
    rows = queries(form, n_pos)
    q = jnp.einsum("pd,hde->hpe", n, w["W_Q"])[:, rows]
    k = jnp.einsum("pd,hde->hpe", n, w["W_K"])
    q = rotary.turn(form, q, rows, n_pos, axis=-2)
    k = rotary.turn(form, k, np.arange(n_pos), n_pos, axis=-2)
    v = jnp.einsum("pd,hde->hpe", n, w["W_V"])
    scores = q @ jnp.swapaxes(k, -1, -2) / form.scale
    p = jax.nn.softmax(jnp.where(form.mask(n_pos)[rows], scores, -jnp.inf), axis=-1)
    return q, k, v, p, p @ v


def coefficients(form, rho, p, n_pos: int):
    """``c`` ``(R, P, 1 + H)``: of the residual (``rho_s`` at output positions) and of each
    head's value path (``beta_hs = sum_t rho_t p_hts``)."""
    residual = jnp.zeros((rho.shape[0], n_pos), rho.dtype).at[:, queries(form, n_pos)].set(rho)
    return jnp.concatenate([residual[..., None], jnp.einsum("rt,hts->rsh", rho, p)], axis=-1)


def prepare(form, params, c):
    """The section's weights, the residual's matrix ``C_r`` ``(D, r)`` and ``O = W_O C_a``
    ``(H, dv, r)``, from the next layer's ``C`` (identity if None). One output: ``C_r = C_a =
    C``; with ``keep_resid`` (output ``(r + attn, r)``, ``C = [C_1; C_2]``): ``C_a = C_1``,
    ``C_r = C_1 + C_2``."""
    w = form.matrices(params)
    d = w["W_O"].shape[-1]
    if c is None:
        c = jnp.eye((2 if form.keep_resid else 1) * d, dtype=w["W_O"].dtype)
    c_attn, c_res = (c[:d], c[:d] + c[d:]) if form.keep_resid else (c, c)
    return w, c_res, jnp.einsum("hed,do->heo", w["W_O"], c_attn)


def group_weights(w, o, groups):
    """``W_g`` ``(G, D, dh)`` and ``O_g`` ``(G, dv, r)`` of the key (``"K"``) and query
    (``"Q"``) groups, one per head each."""
    mats = {"K": w["W_K"], "Q": w["W_Q"]}
    return (jnp.concatenate([mats[g] for g in groups]),
            jnp.concatenate([o for _ in groups]))


def z_matrices(form, w, c, o, width: int):
    """``Z_m`` ``(1 + H, width, r)``: the residual's ``C_r`` (on the residual coordinates) and
    ``W_V[h] O_h`` (on the attention-input coordinates)."""
    d = c.shape[0]
    vo = jnp.einsum("hde,heo->hdo", w["W_V"], o)
    res_rows = slice(d, 2 * d) if form.layout == "split" else slice(0, d)
    res = jnp.zeros((1, width, c.shape[1]), c.dtype).at[0, res_rows].set(c)
    return jnp.concatenate([res, jnp.pad(vo, ((0, 0), (0, width - d), (0, 0)))])


def assemble(form, w, c, o, s_cc, group_sums, width: int):
    """``M'`` ``(width, width)`` from ``S = sum c c^T`` and, per group set, ``S^ZL``
    ``(M, G, dv, dh)`` and ``S^LL`` ``(G, G, dh, dh)``: ``sum S_mm' Z_m Z_m'^T
    + sum (Z_m O_g^T S^ZL_mg W_g^T + transpose) + sum W_g S^LL_gg' W_g'^T``."""
    cast = lambda a: a.astype(s_cc.dtype)  # noqa: E731 (the accumulation dtype)
    z = cast(z_matrices(form, w, c, o, width))
    total = jnp.einsum("mn,mio,njo->ij", s_cc, z, z)
    for groups, s_zl, s_ll in group_sums:
        w_g, o_g = (cast(a) for a in group_weights(w, o, groups))
        w_g = jnp.pad(w_g, ((0, 0), (0, width - w_g.shape[1]), (0, 0)))
        zo = jnp.einsum("mio,gfo->mgif", z, o_g)
        cross = jnp.einsum("mgif,mgfe,gje->ij", zo, s_zl, w_g)
        total = total + cross + cross.T + jnp.einsum("gie,gGef,Gjf->ij", w_g, s_ll, w_g)
    return total


def z_projections(form, w, c, o, c_in_pinv):
    """``(C_in^+ Z_m)^T`` ``(M, r, r_in)``: the residual and value terms' fixed matrices in the
    edges (computed once per batch, outside the chunk loops)."""
    return jnp.einsum("ji,mio->moj", c_in_pinv, z_matrices(form, w, c, o, c_in_pinv.shape[1]))


def z_attributions(pz, u):
    """The residual and value terms of ``A^T = (sum_s diag(f^_s) C_in^+ G_s)^T``
    ``(B, R, r, r_in)``, from :func:`z_projections` and ``u_m = sum_s c_sm f^_s``
    ``(B, R, M, r_in)``."""
    pz = pz.astype(u.dtype)
    # a handful of terms: unrolled, XLA fuses them into one elementwise pass (an einsum over m
    # transposes its output and ran 5x slower)
    return sum(pz[m] * u[:, :, m, None, :] for m in range(pz.shape[0]))
