"""The rows of an edge-masked attention section, each from its own input nodes (docs/method.md
3.3): the exact shortcut of :class:`~libjax.ablation.edge_forward.EdgeForward` for attention.

An attention section (:class:`~libjax.forms.attention.AttentionForm`) is
``F_t = r_t + sum_h sum_s p_hts (n_s W_V[h] W_O[h])`` with ``p_ht = softmax(q_ht k_h^T / scale)``
under the mask, ``q_ht = n_t W_Q[h] Theta_t``, ``k_hs = n_s W_K[h] Theta_s`` (rotary, or none),
``(n, r)`` the input's two halves (``split``) or both the input (``shared``), and biases folded
into the weights. Everything but the pattern is linear in the input, so output node ``o`` of the
masked section, ``y_o = F((x_hat * m_o) C_in^+) . C_out[:, o]``, is

    y_ot = (x_hat_t * m_o) . G_r[:, o]  +  sum_h sum_s p^o_hts v^o_hs,
    v^o_hs = (x_hat_s * m_o) . U_h[:, o],   U_h = C_in^+[n] W_V[h] W_O[h] C_out[attn],

a masked product for the residual and one per head for the values, one matmul for a chunk of
rows (``G_r = C_in^+[r] C_out[resid]``; parallel blocks' output ``(r + attn, r)`` reads ``r``
twice). Row ``o``'s queries and keys ``(x_hat * m_o) C_in^+[n] W_Q`` (``W_K``) are summed over
a cheap list: its kept nodes, its ablated ones (taken from the unablated queries and keys), the
nodes it gained or lost since it was last computed (from its held queries and keys,
:mod:`libjax.ablation.held_rows`, where memory allows) or those it differs in from a row computed
before it (from that row's new ones; :func:`~libjax.ablation.masks.cheapest_lists`), rotated
after the sum; keys once per key
head, the query heads of a key head side by side (grouped-query attention: one product per key
head). Then per row and head the ``T x T`` scores, the masked softmax (normalised after the
product with the values) and ``sum_s p_ts v_s``; the queries in ``QUERY_BLOCKS`` blocks, each
reading only the keys it may (causal: about half). A row costs the length of that list ``x (H +
H_kv) d_head`` per token for its queries and keys and about ``H T d_head`` for its scores,
instead of a whole section evaluation (``in x d_in`` for the input alone).

Rows go a chunk at a time (intermediates within ``row_bytes`` and ``CHUNK_BYTES``), by
generation then by list length, each chunk's lists a traced number of fixed blocks of ``BLOCK``
nodes: one compiled program serves every mask. Used only where the form reproduces the section
on the evaluation data, whole and under a random mask (in float64 where JAX has it). Positions
left out of the build (``skip_positions``) read the whole input: their queries, keys and values
are the unablated ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from libjax.ablation.held_rows import HeldRows, starting_sums
from libjax.ablation.masks import cheapest_lists, longest_list
from libjax.forms.attention import AttentionForm
from libjax.forms.attention.rotary import turn

BLOCK = 64  # input nodes per step of a row's list
QUERY_BLOCKS = 4  # each block of queries reads only the keys it may: about half of causal
CHUNK_BYTES = 2**26  # a chunk's intermediates at most: larger chunks run slower on CPUs


def form_section(form: AttentionForm, mats: dict, z):
    """The section as its form computes it, ``(batch, P, d_in) -> (batch, P_out, d_out)``."""
    d, n_pos = mats["W_Q"].shape[1], z.shape[1]
    n, r = (z[..., :d], z[..., d:]) if form.layout == "split" else (z, z)
    pos = np.arange(n_pos)
    q, k = (turn(form, jnp.einsum("bpd,hde->bphe", n, mats[w]), pos, n_pos, axis=1)
            for w in ("W_Q", "W_K"))
    scores = jnp.einsum("bqhe,bkhe->bhqk", q, k) / form.scale
    p = jax.nn.softmax(jnp.where(form.mask(n_pos), scores, -jnp.inf), axis=-1)
    v = jnp.einsum("bpd,hde->bphe", n, mats["W_V"])
    out = r + jnp.einsum("bhqk,bkhe,hef->bqf", p, v, mats["W_O"])
    if form.keep_resid:
        out = jnp.concatenate([out, r], axis=-1)
    return out[:, -1:] if form.last_only else out


class AttentionRows:
    """The output nodes of an edge-masked attention section, row by row from their own input
    nodes (module docstring), for an :class:`~libjax.ablation.edge_forward.EdgeForward` with
    the per-batch ``x_hats``; :meth:`of` makes one where the form reproduces the section.
    ``held_bytes`` bounds the held queries and keys (None: a share of the device's memory; 0:
    none)."""

    def __init__(self, ev, form, x_hats, qk, u, g_r, heads, row_bytes: int,
                 held_bytes=None):
        self.ev, self.form = ev, form
        self.heads = heads  # (key heads, query heads per key head, d_head)
        self.n_in, self.n_out = n_in, n_out = g_r.shape
        self._qk_pad = ev.cast(np.concatenate([qk, np.zeros((1, qk.shape[1]))]))
        self._u, self._g_r = ev.cast(u), ev.cast(g_r)
        # input nodes first, then tokens: a row's list gathers whole rows of both factors
        self._x_t = [jnp.concatenate([x.reshape(-1, n_in), jnp.zeros((x.shape[0] * x.shape[1], 1),
                                                                     x.dtype)], axis=1).T
                     for x in x_hats]
        self._qk_full = [x.reshape(-1, n_in) @ self._qk_pad[:-1] for x in x_hats]
        self._width = max(1, -(-longest_list(n_in) // BLOCK)) * BLOCK
        tokens, n_pos = x_hats[0].shape[0] * x_hats[0].shape[1], x_hats[0].shape[1]
        n_q = 1 if form.last_only else n_pos
        per_row = np.dtype(ev.dtype).itemsize * tokens * (
            3 * qk.shape[1] + 3 * heads[0] * heads[1] * n_q + u.shape[1])
        self.size = int(max(1, min(n_out, min(row_bytes, CHUNK_BYTES) // per_row)))
        self.held = HeldRows((n_out, tokens, qk.shape[1]), len(x_hats), ev.dtype, n_in,
                              row_axis=0, budget=held_bytes)
        self._run = jax.jit(self._rows, donate_argnums=3)  # held sums updated in place

    @classmethod
    def of(cls, ev, form, reference, x_hats, c_in_pinv, c_out, row_bytes: int,
           held_bytes=None):
        """The rows of ``form`` (an attention form) if it reproduces the section (``reference``:
        ``(dtype, params, raw)`` of ``EdgeForward._reference_section``) on the first batch whole
        and under a random mask, to ``sqrt(eps)`` of that dtype, else None. ``c_in_pinv``,
        ``c_out``: float64 (``c_out`` None at a layer without a basis); ``row_bytes`` bounds a
        chunk of rows' intermediates, ``held_bytes`` the held queries and keys."""
        if not isinstance(form, AttentionForm):
            return None
        dtype, params, raw = reference
        mats = {k: np.asarray(v, np.float64) for k, v in form.matrices(params).items()}
        d = mats["W_Q"].shape[1]
        if c_in_pinv.shape[1] != (2 * d if form.layout == "split" else d):
            return None
        x_hat = np.asarray(x_hats[0], np.float64)
        kept = np.random.default_rng(0).random(c_in_pinv.shape[0]) < 0.5
        z = np.concatenate([x_hat, x_hat * kept]) @ c_in_pinv
        exact = np.asarray(raw(params, jnp.asarray(z, dtype)), np.float64)
        formula = np.asarray(form_section(form, {k: jnp.asarray(v, dtype)
                                                 for k, v in mats.items()},
                                          jnp.asarray(z, dtype)), np.float64)
        size = max(np.abs(exact).max(), 1e-30)
        if not (exact.shape == formula.shape
                and np.abs(exact - formula).max() <= np.sqrt(np.finfo(dtype).eps) * size):
            return None
        c_out = np.eye(exact.shape[-1]) if c_out is None else c_out
        p_n = c_in_pinv[:, :d]
        p_r = c_in_pinv[:, d:] if form.layout == "split" else c_in_pinv
        c_attn = c_out[:d]
        c_resid = c_attn + c_out[d:] if form.keep_resid else c_attn
        # Key heads once each, the query heads reading one side by side (grouped-query
        # attention repeats them per query head): scores as one product per key head.
        h, dh = mats["W_Q"].shape[0], mats["W_Q"].shape[2]
        _, first, kv_of = np.unique(mats["W_K"].reshape(h, -1), axis=0, return_index=True,
                                    return_inverse=True)
        kv_of = np.ravel(kv_of)
        counts = np.bincount(kv_of)
        if np.all(counts == counts[0]):
            order, keys = np.argsort(kv_of, kind="stable"), first
        else:
            order, keys = np.arange(h), np.arange(h)
        w_qk = np.concatenate([mats["W_Q"][order].transpose(1, 0, 2).reshape(d, -1),
                               mats["W_K"][keys].transpose(1, 0, 2).reshape(d, -1)], axis=1)
        u = np.stack([p_n @ mats["W_V"][i] @ (mats["W_O"][i] @ c_attn) for i in order], 1)
        return cls(ev, form, x_hats, p_n @ w_qk, u, p_r @ c_resid,
                   (len(keys), h // len(keys), dh), row_bytes, held_bytes)

    # --- traced ---------------------------------------------------------------------------------

    def _rows(self, x_t, qk_full, out, held, qk_pad, u, g_r, rows, lists, signs, bases, sources,
              writes, row_masks, blocks, n_chunks):
        """``(out, held)``: ``out`` with the rows ``rows`` ``(chunks, size)`` (padding: index
        ``out``) recomputed from their own input nodes: ``lists`` ``(chunks, size, width)`` each
        row's cheapest list and its ``signs`` (padding: the zero node ``in`` of ``x_t``, ``(in +
        1, tokens)``), ``bases`` what it is added to (``masks.ZERO``, ``FULL`` or ``HELD``, the
        held sums of row ``sources``, written by an earlier chunk or an earlier mask),
        ``blocks`` each chunk's number of list blocks, ``row_masks`` the rows of the mask; and
        ``held`` ``(held rows, tokens, queries and keys)`` (or None) with their queries and keys
        where ``writes`` (``HeldRows.writes``) says."""
        form = self.form
        n_kv, group, dh = self.heads
        batch, n_pos = out.shape[0], x_t.shape[1] // out.shape[0]
        x_hat = x_t[:-1].T.reshape(batch, n_pos, -1)
        q_pos = np.arange(n_pos)[-1:] if form.last_only else np.arange(n_pos)
        allowed = np.asarray(form.mask(n_pos))[q_pos]
        blocks_of_queries = []  # the keys each block of queries may read (causal: half)
        step = -(-len(q_pos) // QUERY_BLOCKS)
        for a in range(0, len(q_pos), step):
            keys = np.flatnonzero(allowed[a:a + step].any(0))
            blocks_of_queries.append((a, min(a + step, len(q_pos)), keys[0], keys[-1] + 1))
        n_q = n_kv * group * dh

        def chunk(c, carry):
            out, held = carry
            r, idx, sign, m, w = rows[c], lists[c], signs[c], row_masks[c], writes[c]
            src = sources[c]
            base = bases[c][:, None, None]
            size = len(r)

            def add(j, qk):  # the signed terms of the listed nodes
                block = jax.lax.dynamic_slice_in_dim(idx, j * BLOCK, BLOCK, axis=1)
                signed = x_t[block] * jax.lax.dynamic_slice_in_dim(sign, j * BLOCK, BLOCK,
                                                                   axis=1)[..., None]
                return qk + jnp.einsum("gwt,gwm->gtm", signed, qk_pad[block])
            full = qk_full[None]
            qk = starting_sums(base, full, held, src)
            qk = jax.lax.fori_loop(0, blocks[c], add, qk)
            if held is not None:
                held = held.at[w].set(qk, mode="drop")
            shape = (batch, n_pos, -1)
            qk = self.ev.at_kept(qk.reshape(size, *shape), full.reshape(1, *shape))
            q = qk[:, :, q_pos, :n_q].reshape(size, batch, len(q_pos), n_kv, group, dh)
            q = turn(form, q, q_pos, n_pos, axis=2).transpose(1, 0, 3, 4, 2, 5)
            k = qk[..., n_q:].reshape(size, batch, n_pos, n_kv, dh)
            k = turn(form, k, np.arange(n_pos), n_pos, axis=2).transpose(1, 0, 3, 4, 2)
            u_rows = jnp.take(u, r, axis=2, mode="fill", fill_value=0)  # (in, H, size)
            v = jnp.einsum("bpi,ihg->bghp", x_hat, u_rows * m.T[:, None])
            v = self.ev.at_kept(v, jnp.einsum("bpi,ihg->bghp", x_hat, u_rows), axis=-1)
            v = v.reshape(batch, size, n_kv, group, n_pos)
            z = jnp.concatenate([self._attend(q[..., a:b, :], k[..., lo:hi], v[..., lo:hi],
                                              allowed[a:b, lo:hi])
                                 for a, b, lo, hi in blocks_of_queries], axis=-1)
            g_rows = jnp.take(g_r, r, axis=1, mode="fill", fill_value=0) * m.T
            vals = (jnp.swapaxes(z, 1, 2)
                    + jnp.einsum("bpi,ig->bpg", x_hat[:, q_pos], g_rows))
            return out.at[..., r].set(vals, mode="drop"), held
        return jax.lax.fori_loop(0, n_chunks, chunk, (out, held))

    def _attend(self, q, k, v, allowed):
        """``sum_h sum_s p_hts v_hs`` for queries ``q`` ``(batch, rows, H_kv, group, T, dh)``,
        keys ``k`` ``(batch, rows, H_kv, dh, S)``, values ``v`` ``(batch, rows, H_kv, group,
        S)`` and the allowed ``(T, S)``: one product per key head, softmax normalised after."""
        shape = q.shape
        scores = q.reshape(*shape[:3], -1, shape[-1]) @ k / self.form.scale
        scores = jnp.where(np.tile(allowed, (shape[3], 1)), scores, -jnp.inf)
        e = jnp.exp(scores - scores.max(-1, keepdims=True)).reshape(*shape[:-1], -1)
        return ((e @ v[..., None])[..., 0] / e.sum(-1)).sum((2, 3))

    # --- host -----------------------------------------------------------------------------------

    def plan(self, mask, rows) -> tuple | None:
        """What :meth:`apply` needs for the output nodes ``rows`` (None for none): each row's
        cheap list (``masks.cheapest_lists``) in chunks of ``size``, every array of a fixed
        shape."""
        if not len(rows):
            return None
        size = self.size
        plan = cheapest_lists(mask, rows, size, self._width, self.held.usable_patterns)
        writes = self.held.writes(plan.rows, plan.lengths, plan.sourced)
        blocks = -(-plan.lengths.reshape(-1, size).max(1) // BLOCK)
        ev, shape = self.ev, (-1, size, self._width)
        return (jnp.asarray(plan.rows.reshape(-1, size)), jnp.asarray(plan.lists.reshape(shape)),
                ev.cast(plan.signs.reshape(shape)),
                *(jnp.asarray(a.reshape(-1, size)) for a in (plan.bases, plan.sources, writes)),
                ev.cast(plan.kept.reshape(-1, size, self.n_in)),
                jnp.asarray(blocks, np.int32), jnp.int32(plan.n_groups)), (mask, writes)

    def apply(self, outs: list, plan) -> list:
        """Every batch's output nodes ``outs`` with the rows of ``plan`` recomputed (their
        queries and keys held for the next mask)."""
        if plan is None:
            return outs
        args, (mask, writes) = plan
        return self.held.update(self._run, outs, list(zip(self._x_t, self._qk_full)),
                                (self._qk_pad, self._u, self._g_r, *args), mask, writes)
