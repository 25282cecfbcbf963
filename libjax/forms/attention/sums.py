"""Pieces shared by the two closed-form methods for attention sections (see
:mod:`libjax.forms.attention` for the math): the attention pattern, the residual and value
paths' terms of the edges, and ``M'`` assembled from head-sized sums, once per build."""

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


def prepare(form, params, c, xp=jnp):
    """The section's weights, the residual's matrix ``C_r`` ``(D, r)`` and ``O = W_O C_a``
    ``(H, dv, r)``, from the next layer's ``C`` (identity if None). One output: ``C_r = C_a =
    C``; with ``keep_resid`` (output ``(r + attn, r)``, ``C = [C_1; C_2]``): ``C_a = C_1``,
    ``C_r = C_1 + C_2``. ``xp=np``: float64 NumPy, on the host (:func:`assemble`)."""
    w = form.matrices(params)
    if xp is np:
        w = {key: np.asarray(v, np.float64) for key, v in w.items()}
        c = None if c is None else np.asarray(c, np.float64)
    d = w["W_O"].shape[-1]
    if c is None:
        c = xp.eye((2 if form.keep_resid else 1) * d, dtype=w["W_O"].dtype)
    c_attn, c_res = (c[:d], c[:d] + c[d:]) if form.keep_resid else (c, c)
    return w, c_res, xp.einsum("hed,do->heo", w["W_O"], c_attn)


def residual_rows(form, d: int) -> slice:
    """Where the residual sits in the section's input: its second half (``split``), or all
    of it (``shared``, the attention input's rows too)."""
    return slice(d, 2 * d) if form.layout == "split" else slice(0, d)


def group_weights(w, o, groups):
    """``W_g`` ``(G, D, dh)`` and ``O_g`` ``(G, dv, r)`` of the key (``"K"``) and query
    (``"Q"``) groups, one per head each."""
    mats = {"K": w["W_K"], "Q": w["W_Q"]}
    return (jnp.concatenate([mats[g] for g in groups]),
            jnp.concatenate([o for _ in groups]))


def zero_head_sums(form, params) -> dict:
    """The empty ``M'`` accumulator (host arrays): ``cc`` ``S = sum c c^T`` ``(M, M)``, ``zl``
    ``S^ZL`` ``(M, 2H, dv, dh)`` and ``ll`` ``S^LL`` ``(2H, 2H, dh, dh)``, the groups being the
    key then the query weights of every head (see :func:`assemble`)."""
    w = form.matrices(params)
    heads, d_head, d_v = w["W_Q"].shape[0], w["W_Q"].shape[2], w["W_V"].shape[2]
    return {"cc": np.zeros((heads + 1, heads + 1)),
            "zl": np.zeros((heads + 1, 2 * heads, d_v, d_head)),
            "ll": np.zeros((2 * heads, 2 * heads, d_head, d_head))}


def assemble(form, params, head_sums: dict, c_next, width: int) -> np.ndarray:
    """``M'`` ``(width, width)`` from the head-sized sums of :func:`zero_head_sums`, once per
    build on the host in float64:

        M' = sum S_mm' Z_m Z_m'^T + sum (Z_m O_g^T S^ZL_mg W_g^T + transpose)
             + sum W_g S^LL_gg' W_g'^T,

    with ``Z_0 = C_r`` (on the residual rows) and ``Z_h = W_V[h] O_h``. Every term is a product
    ``Lambda Mid Lambda^T`` with ``Lambda = [I_res | W_V | W_K | W_Q]``, so the work is
    ``O(D^2 (D + 3 H d_head))``, independent of the data's size."""
    w, c_res, o = prepare(form, params, c_next, np)
    d = w["W_O"].shape[-1]
    heads, d_v, r = o.shape
    cc, zl, ll = (np.asarray(head_sums[k], np.float64) for k in ("cc", "zl", "ll"))
    groups, d_head = ll.shape[0], ll.shape[2]
    # right-hand factors: R_0 = C_r, R_h = O_h, and O_g of each key/query group
    rz = np.concatenate([c_res, o.reshape(heads * d_v, r)])
    block = np.concatenate([np.zeros(d, int), np.repeat(np.arange(1, heads + 1), d_v)])
    zz = (rz @ rz.T) * cc[np.ix_(block, block)]
    x = (rz @ np.concatenate([o, o]).reshape(groups * d_v, r).T).reshape(-1, groups, d_v)
    zg = np.concatenate([
        np.einsum("igf,gfe->ige", x[:d], zl[0]).reshape(d, -1),
        np.einsum("higf,hgfe->hige", x[d:].reshape(heads, d_v, groups, d_v),
                  zl[1:]).reshape(heads * d_v, -1)])
    gg = ll.transpose(0, 2, 1, 3).reshape(groups * d_head, groups * d_head)
    mid = np.block([[zz, zg], [zg.T, gg]])
    # Lambda = [I on the residual rows | the head weights on the attention-input rows]
    lam = np.concatenate([w["W_V"].transpose(1, 0, 2).reshape(d, -1)] + [
        w[k].transpose(1, 0, 2).reshape(d, -1) for k in ("W_K", "W_Q")], axis=1)
    res = residual_rows(form, d)
    total = np.zeros((width, width))
    total[res, res] += mid[:d, :d]
    cross = mid[:d, d:] @ lam.T
    total[res, :d] += cross
    total[:d, res] += cross.T
    total[:d, :d] += lam @ mid[d:, d:] @ lam.T
    return total


def z_projections(form, w, c, o, c_in_pinv):
    """``(C_in^+ Z_m)^T`` ``(M, r, r_in)``: the residual's ``C_in^+ C_r`` and the value terms'
    ``(C_in^+ W_V[h]) O_h`` (``Z_h = W_V[h] O_h`` has rank ``d_v``: the product in this order
    costs ``O(H r_in D d_v)`` rather than ``O(H r_in D r)``), once per batch."""
    d = c.shape[0]
    res = residual_rows(form, d)
    values = jnp.einsum("hje,heo->hoj", jnp.einsum("jd,hde->hje", c_in_pinv[:, :d], w["W_V"]), o)
    return jnp.concatenate([(c_in_pinv[:, res] @ c).T[None], values])


def z_attributions(pz, u):
    """The residual and value terms of ``A^T = (sum_s diag(f^_s) C_in^+ G_s)^T``
    ``(B, R, r, r_in)``, from :func:`z_projections` and ``u_m = sum_s c_sm f^_s``
    ``(B, R, M, r_in)``."""
    pz = pz.astype(u.dtype)
    # a handful of terms: unrolled, XLA fuses them into one elementwise pass (an einsum over m
    # transposes its output and ran 5x slower)
    return sum(pz[m] * u[:, :, m, None, :] for m in range(pz.shape[0]))
