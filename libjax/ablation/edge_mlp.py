"""An MLP section's output nodes under an edge mask, each from its own input nodes (the third
shortcut of :mod:`libjax.ablation.edge_forward`, docs/method.md 3.3).

For a section ``F(z) = z R + act(z B) D`` (gated or not) output node ``o`` is ``act(pre_o) .
(D C_out[:, o]) + (x_hat * m_o) C_in^+ R C_out[:, o]`` with ``pre_o = (x_hat * m_o) h``, ``h =
C_in^+ B``: the sum of ``x_hat_i h_i`` over the row's kept input nodes, or, where the row keeps
more than it ablates, the unablated pre-activation less the ablated nodes' terms, or, shorter
still in a bisection, held sums plus the nodes the row keeps and they do not, less the others:
the pre-activation the row was last computed with, or one another row was just computed with
(:mod:`libjax.ablation.held_rows`, where memory allows;
:func:`~libjax.ablation.masks.cheapest_lists`). A row costs the length of that list ``x
width(B)`` per token instead of a section evaluation.

One compiled program serves every mask: the rows, by generation then by list length,
go in groups of ``GROUP``; each group's lists are summed in blocks of ``BIG`` nodes, then of
``SMALL`` (the rest), in loops whose trip counts are arguments, one tile of ``TILE`` tokens at a
time. Few rows per group and long blocks keep the batched products nearer the matmul rate; small
tiles keep the ``(rows, tokens, width(B))`` pre-activations and the activation on them in cache
(whole, they cost more than the products).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from libjax.ablation.held_rows import HeldRows, starting_sums
from libjax.ablation.masks import cheapest_lists, longest_list


class MLPRows:
    """The output nodes of an MLP section from their own input nodes (module docstring), for an
    :class:`~libjax.ablation.edge_forward.EdgeForward` with ``n_out`` output nodes and the
    per-batch ``x_hats``. The sizes are read when it is made (tests make them small); ``BIG``
    is a multiple of ``SMALL``. ``held_bytes`` bounds the held pre-activations (None: a share
    of the device's memory; 0: none)."""

    GROUP, TILE, BIG, SMALL = 4, 128, 256, 32

    def __init__(self, ev, form, x_hats, h, r_c, d_c, row_bytes: int, held_bytes=None):
        self.ev, self.form, self.n_out = ev, form, d_c.shape[1]
        self.n_in, width = h.shape
        self._group, self._big, self._small = min(self.GROUP, self.n_out), self.BIG, self.SMALL
        tokens = x_hats[0].shape[0] * x_hats[0].shape[1]
        self._tile = max(1, min(self.TILE, tokens, row_bytes // (
            4 * self._group * width * np.dtype(ev.dtype).itemsize)))
        self._n_tiles = -(-tokens // self._tile)
        big = self._big  # lists padded to the longest list, in whole blocks
        self._width = max(big, -(-longest_list(self.n_in) // big) * big)
        self._h = ev.cast(np.concatenate([h, np.zeros((1, width))]))  # node n_in: zero
        self._r_c, self._d_c = ev.cast(r_c), ev.cast(d_c)
        self._x = [self._tiles(x) for x in x_hats]
        self._pre_full = [x @ self._h for x in self._x]
        self.held = HeldRows((self._n_tiles, self.n_out, self._tile, width), len(x_hats),
                              ev.dtype, self.n_in, row_axis=1, budget=held_bytes)
        self._run = jax.jit(self._rows, donate_argnums=3)  # held sums updated in place

    @classmethod
    def of(cls, ev, form, reference, x_hats, c_in_pinv, c_out, row_bytes: int,
           held_bytes=None):
        """The rows of ``form`` (an MLP form with an activation) if its matrices reproduce the
        section (``reference``: ``(dtype, params, raw)`` of ``EdgeForward._reference_section``)
        on the first batch whole and under a random mask, to ``sqrt(eps)`` of that dtype, else
        None. ``c_in_pinv``, ``c_out``: float64 (``c_out`` None at a layer without a basis);
        ``row_bytes`` bounds a tile's pre-activations, ``held_bytes`` the held ones."""
        dtype, params, raw = reference
        mats = {k: None if v is None else np.asarray(v, np.float64)
                for k, v in form.matrices(params).items()}
        b, d, r = mats.get("B"), mats.get("D"), mats.get("R")
        d_in = c_in_pinv.shape[1]
        d = np.eye(b.shape[1] // form.branches) if d is None else d
        r = np.zeros((d_in, d.shape[1])) if r is None else r
        x_hat = np.asarray(x_hats[0], np.float64)
        kept = np.random.default_rng(0).random(c_in_pinv.shape[0]) < 0.5
        z = np.concatenate([x_hat, x_hat * kept]) @ c_in_pinv  # (2 batch, pos, d_in)
        exact = np.asarray(raw(params, jnp.asarray(z, dtype)), np.float64)
        formula = z @ r + np.asarray(_hidden(form, jnp.asarray(z @ b)), np.float64) @ d
        size = max(np.abs(exact).max(), np.abs(z @ r).max(), 1e-30)
        if not np.abs(exact - formula).max() <= np.sqrt(np.finfo(dtype).eps) * size:
            return None
        c_out = np.eye(d.shape[1]) if c_out is None else c_out
        return cls(ev, form, x_hats, c_in_pinv @ b, c_in_pinv @ r @ c_out, d @ c_out,
                   row_bytes, held_bytes)

    def _tiles(self, x):
        """``(batch, pos, in)`` -> ``(tiles, TILE, in + 1)``: tokens in tiles (the last padded
        with zeros), and the zero input node ``in`` that pads the lists."""
        x = x.reshape(-1, x.shape[-1])
        x = jnp.pad(x, ((0, self._n_tiles * self._tile - len(x)), (0, 1)))
        return x.reshape(self._n_tiles, self._tile, -1)

    # --- the program ----------------------------------------------------------------------------

    def _rows(self, x, pre_full, out, held, h, lin_mat, d_c, lists, signs, rows, bases, sources,
              writes, trips, n_groups):
        """``(out, held)``: ``out`` ``(batch, pos, out)`` with groups ``0..n_groups-1`` of rows
        recomputed (``rows`` ``(groups, GROUP)``, padding rows: index ``out``; ``lists`` and
        their ``signs`` ``(groups, GROUP, width)``, padding: node ``in``; ``bases``: what each
        list is added to, ``masks.ZERO``, ``FULL`` or ``HELD``, the held sums of row
        ``sources``, written by an earlier group or an earlier mask; ``trips`` ``(groups, 2)``:
        blocks of ``BIG`` and of ``SMALL`` nodes), and ``held`` ``(tiles, held rows, TILE,
        width(B))`` (or None) with their pre-activations where ``writes`` (``HeldRows.writes``)
        says; ``lin_mat = C_in^+ R C_out * mask^T``."""
        lin = jnp.einsum("nti,io->nto", x[..., :-1], lin_mat)
        big, small = self._big, self._small

        def group(k, carry):
            out, held = carry
            idx, sign, r, src, w = lists[k], signs[k], rows[k], sources[k], writes[k]
            base = bases[k][:, None, None]
            n_big, n_small = trips[k, 0], trips[k, 1]
            cols = jnp.take(d_c, r, axis=1, mode="fill", fill_value=0)

            def block(xt, start, size):
                nodes = jax.lax.dynamic_slice_in_dim(idx, start, size, axis=1)  # (group, size)
                signed = jnp.take(xt, nodes, axis=1) * jax.lax.dynamic_slice_in_dim(
                    sign, start, size, axis=1)
                return jnp.einsum("tgk,gkw->gtw", signed, h[nodes])

            def tile(t, carry):
                vals, held = carry
                xt = x[t]
                pre = starting_sums(base, pre_full[t], held, (t, src))
                pre = jax.lax.fori_loop(0, n_big, lambda j, p: p + block(xt, j * big, big), pre)
                pre = jax.lax.fori_loop(0, n_small, lambda j, p: p + block(
                    xt, n_big * big + j * small, small), pre)
                if held is not None:
                    held = held.at[t, w].set(pre, mode="drop")
                hidden = jnp.einsum("gtm,mg->tg", _hidden(self.form, pre), cols)
                return vals.at[t].set(hidden), held

            vals, held = jax.lax.fori_loop(0, x.shape[0], tile, (
                jnp.zeros((*x.shape[:2], len(r)), h.dtype), held))
            vals = vals + jnp.take(lin, r, axis=-1, mode="fill", fill_value=0)
            vals = vals.reshape(-1, len(r))[:out.shape[0] * out.shape[1]]
            return out.at[..., r].set(vals.reshape(*out.shape[:2], -1), mode="drop"), held

        return jax.lax.fori_loop(0, n_groups, group, (out, held))

    # --- host side ------------------------------------------------------------------------------

    def plan(self, mask, rows) -> tuple:
        """What :meth:`apply` needs for the output nodes ``rows`` under the boolean ``(out, in)``
        ``mask``: each row's cheap list (``masks.cheapest_lists``) in groups, each group's trip
        counts."""
        g = self._group
        plan = cheapest_lists(mask, rows, g, self._width, self.held.usable_patterns)
        writes = self.held.writes(plan.rows, plan.lengths, plan.sourced)
        longest = plan.lengths.reshape(-1, g).max(1)
        big, small = self._big, self._small
        trips = np.stack([longest // big, -(-(longest % big) // small)], 1).astype(np.int32)
        mask_t = np.zeros((self.n_in, self.n_out), np.float32)
        mask_t[:, rows] = mask[rows].T
        shape = (-1, g, self._width)
        args = (self._r_c * self.ev.cast(mask_t), self._d_c,
                jnp.asarray(plan.lists.reshape(shape)), self.ev.cast(plan.signs.reshape(shape)),
                *(jnp.asarray(a.reshape(-1, g)) for a in (plan.rows, plan.bases, plan.sources,
                                                          writes)),
                jnp.asarray(trips), jnp.int32(plan.n_groups))
        return args, plan.n_groups, (mask, writes)

    def apply(self, outs: list, plan) -> list:
        """Every batch's output nodes ``outs`` with the planned rows recomputed (their
        pre-activations held for the next mask)."""
        args, n_groups, (mask, writes) = plan
        if not n_groups:
            return outs
        return self.held.update(self._run, outs, list(zip(self._x, self._pre_full)),
                                (self._h, *args), mask, writes)


def _hidden(form, pre):
    """``act(pre)``, or for a gated form ``act(gate) * up`` of the two halves of ``pre``."""
    if form.gated:
        half = pre.shape[-1] // 2
        return form.act(pre[..., :half]) * pre[..., half:]
    return form.act(pre)
