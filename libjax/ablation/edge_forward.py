"""The model with only some edges between two consecutive node layers (docs/method.md 3.3).

Output node ``o`` of the section is computed from the input nodes kept by row ``o`` of the mask,
``y_o = F((x_hat * m_o) C_in^+) . C_out[:, o]``, at every position alike, then all output nodes
are mapped back with ``C_out^+`` (no ``C_out`` at a layer without a basis, e.g. ``output``) and
the model runs on from the next node layer. Five ways to get the ``y_o``, the same numbers:

* an **affine** section (``F(x) = x A + b`` at every position, e.g. the projections into a
  gated MLP) has ``y_o = sum_i m_oi x_hat_i G_io + beta_o`` with ``G = C_in^+ A C_out``: one
  matrix product per mask, ``x_hat @ (G * mask^T) + beta``. ``G`` comes from the section applied
  to the rows of ``C_in^+``; the section is taken as affine only if ``G`` reproduces it on the
  evaluation data, whole and under a random mask, to the evaluation dtype's precision.
* output nodes given by **masked products** (positionwise sections): where every coordinate
  of the section's output that ``C_out[:, o]`` reads is ``F_k(z) = (z a_k) / sqrt(max(z_s, 0)
  + eps) + z b_k + c_k``, with ``z_s`` the statistic coordinate of a normalisation's input and
  ``eps`` its epsilon (``a_k = 0``: an affine coordinate), ``y_o`` is ``num_o / sqrt(max(stat_o,
  0) + eps) + lin_o + beta_o`` with ``num = x_hat @ (G_a * mask^T)``, ``stat = x_hat @ (g_s *
  mask^T)``, ``lin = x_hat @ (G_b * mask^T)`` (``G_a = C_in^+ A C_out``, ``g_s = C_in^+[:, s]``,
  ``G_b = C_in^+ B C_out``): three products per mask instead of a section evaluation per row.
  Every output node of a normalisation's second half (``ln*_out -> next``) is such a node, and
  of its first half (``ln* -> ln*_out``, whose statistic is quadratic) all but those reading
  the statistic (one, where the build isolates it). ``A, B, c`` are read off the section (in
  float64 where JAX has it) on unit inputs, and a coordinate counts only if they reproduce it on
  random inputs and on the evaluation data, whole and under a random mask.
* the output nodes of an **MLP section** (its form ``F(z) = z R + act(z B) D``, gated or not)
  each from their own input nodes: ``pre_o = (x_hat * m_o) C_in^+ B`` summed over the kept
  nodes only, or, where a row keeps more than it ablates, the unablated ``x_hat C_in^+ B`` less
  the ablated nodes' terms; then ``act(pre_o) . (D C_out[:, o])`` plus the masked product of
  ``C_in^+ R C_out``. A row costs ``min(kept, ablated) x width(B)`` per token instead of a
  section evaluation (``in x d_in`` for ``z`` alone), and most of a bisection's probes keep few
  edges. Used where the form reproduces the section on the evaluation data
  (:mod:`libjax.ablation.edge_mlp`, one compiled program for every mask); rows come from the
  cache below as the pattern loop's do.
* the output nodes of an **attention section** likewise (:mod:`libjax.ablation.edge_attention`):
  the residual and each head's values as masked products, each row's queries and keys summed
  over a cheap list, then the row's ``T x T`` scores per head. Both keep each row's sums for
  the next mask and for the rows after it (:mod:`libjax.ablation.held_rows`): in a bisection, a
  row's list is usually the few nodes it has gained or lost since, or those it differs in from a
  row computed before it.
* any other output node is evaluated once per distinct row pattern of the mask, in one of two
  ways, whichever costs fewer FLOPs: a pattern shared by many rows is evaluated once and
  projected on all of ``C_out`` (``fori_loop`` over a padded ``(out, in)`` array of patterns);
  the rows of rarer patterns are evaluated a few rows at a time, each projected on its own
  column of ``C_out`` only (``d_out`` instead of ``d_out x out`` per token). Trip counts are
  arguments, so one compiled program serves every mask. A row's output depends only on its own
  pattern, so rows computed for earlier masks (a bisection revisits most rows unchanged) are
  reused from a cache bounded by ``cache_bytes``, and rows that keep every input are computed
  once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from libjax.ablation.edge_attention import AttentionRows
from libjax.ablation.edge_mlp import MLPRows
from libjax.ablation.masks import group_rows
from libjax.errors import ConfigError
from libjax.forms.attention import AttentionForm
from libjax.forms.layernorm import LayerNormOutForm
from libjax.forms.mlp import MLPForm


class EdgeForward:
    """Scores of the model with an edge mask from node layer ``index`` to the next one
    (``try_affine=False``, ``try_products=False``: always the pattern loop, the general path
    that the shortcuts are tested against; ``held_bytes``: room for the rows' held sums,
    :mod:`libjax.ablation.held_rows`, None for a share of the device's memory)."""

    def __init__(self, ev, index: int, c_in, c_in_pinv, out_basis=None,
                 cache_bytes: int = 2**28, try_affine: bool = True, row_bytes: int = 2**28,
                 try_products: bool = True, held_bytes=None):
        self.ev, self.index, self.cache_bytes = ev, index, cache_bytes
        self._row_bytes = row_bytes
        self.c_in, self.c_in_pinv = ev.cast(c_in), ev.cast(c_in_pinv)
        self.rotated = out_basis is not None
        self.c_out, self.c_out_pinv = ((ev.cast(out_basis[0]), ev.cast(out_basis[1]))
                                       if self.rotated else (None, None))
        self.section = ev.model.sections[index]
        self._programs: dict = {}
        prep = self._program("prep", lambda: self._prepare)
        self._prepared = [prep(ev.params, a, self.c_in, self.c_in_pinv, self.c_out)
                          for a in ev.acts(index)]
        full = self._prepared[0][1]
        self.shape = (full.shape[-1], self.c_in.shape[1])  # (out nodes, in nodes)
        self.affine = (self._affine_map() if try_affine and self.section.positionwise
                       else None)
        self.products = None  # (output nodes, their matrices) of the masked products
        self.rows = None  # MLPRows or AttentionRows: the section's rows from their own inputs
        if self.affine is not None:
            self._run = self._program("affine", lambda: self._run_affine)
        elif try_products and (self.section.positionwise
                               or isinstance(self.section.form, AttentionForm)):
            # the shortcuts, read off one float64 copy of the parameters
            reference = self._reference_section()
            c_in64 = np.asarray(c_in_pinv, np.float64)
            c_out64 = None if out_basis is None else np.asarray(out_basis[0], np.float64)
            if self.section.positionwise:
                self.products = self._products(reference, c_in64, c_out64)
            form = self.section.form
            if self.section.positionwise and isinstance(form, MLPForm) and form.act is not None:
                self.rows = MLPRows.of(ev, form, reference, [x for x, _ in self._prepared],
                                       c_in64, c_out64, row_bytes, held_bytes)
            if isinstance(form, AttentionForm):
                self.rows = AttentionRows.of(ev, form, reference, [x for x, _ in self._prepared],
                                             c_in64, c_out64, row_bytes, held_bytes)
        if self.affine is None:
            self._run = self._program("patterns", lambda: self._run_patterns)
        self._step_bytes = sum(f.size * f.dtype.itemsize for _, f in self._prepared)
        x_hat = self._prepared[0][0]
        d_in, d_out, (n_out, n_in) = self.c_in_pinv.shape[1], full.shape[-1], self.shape
        if self.rotated:  # FLOPs per token: a pattern's evaluation against a row's
            d_out = self.c_out.shape[0]
            per_pattern, per_row = n_in * d_in + d_out * n_out, n_in * d_in + d_out
            self._shared_rows = -(-per_pattern // per_row)
        else:  # the output nodes are the section's outputs: nothing to save row by row
            self._shared_rows = 1
        tokens, itemsize = x_hat.shape[0] * x_hat.shape[1], x_hat.dtype.itemsize
        self._rows_per_chunk = int(max(1, min(n_out, row_bytes // (
            3 * tokens * max(n_in, d_in, d_out) * itemsize))))
        self._steps: dict[int, list] = {}  # step id -> per-batch output nodes of that mask
        self._cached: dict[tuple[int, bytes], int] = {}  # (row, pattern) -> step id
        self._next_step = 0

    def _program(self, name: str, make):
        """The jitted ``make()``, once per forward. Not the evaluator's cache: a program bound
        to a forward would keep its arrays (and held sums) alive after its bisection."""
        if name not in self._programs:
            self._programs[name] = jax.jit(make())
        return self._programs[name]

    # --- traced pieces ------------------------------------------------------------------------

    def _section_out(self, params, x, c_out):
        """The section on inputs ``x`` ``(batch, pos, d_in)``, in the output basis."""
        y = jax.vmap(lambda a: self.section.fn(params, a))(x)
        return y @ c_out if self.rotated else y

    def _prepare(self, params, acts, c_in, c_in_pinv, c_out):
        x_hat = acts @ c_in
        return x_hat, self._section_out(params, x_hat @ c_in_pinv, c_out)

    def _loop(self, params, x_hat, init, c_in_pinv, c_out, patterns, inverse, n):
        """Output nodes with each row's pattern: ``init`` with the rows of patterns ``0..n-1``
        (``inverse``: each row's pattern, -1 for rows ``init`` already holds) recomputed."""
        def body(u, out):
            masked = self.ev.at_kept(x_hat * patterns[u], x_hat)  # skipped positions: whole
            y = self._section_out(params, masked @ c_in_pinv, c_out)
            return jnp.where(inverse == u, y, out)
        return jax.lax.fori_loop(0, n, body, init)

    def _finish(self, params, out_hat, c_out_pinv, acts, y, w):
        """The metric's sums once the output nodes are known."""
        ev = self.ev
        nxt = out_hat @ c_out_pinv if self.rotated else out_hat
        if ev.skip_positions:  # positions outside the graph: as the model computes them
            nxt = ev.at_kept(nxt, jax.vmap(lambda a: self.section.fn(params, a))(acts))
        logits = jax.vmap(lambda a: ev.model.run_from(params, a, self.index + 1))(nxt)
        return ev.sums(logits, ev.reference(params, acts, self.index), y, w)

    def _row_loop(self, params, x_hat, out, c_in_pinv, c_out, row_masks, rows, n_chunks):
        """``out`` with the listed rows recomputed from their own masks, a chunk of rows at a
        time (``rows`` ``(chunks, size)``, ``row_masks`` ``(chunks, size, in)``), each projected
        on its own column of ``C_out``; padding rows hold index ``out`` and are dropped. The
        chunk size comes from the shapes: a jitted program is shared by every EdgeForward of
        the same evaluator and layer pair."""
        def body(k, out):
            r, m = rows[k], row_masks[k]
            masked = self.ev.at_kept(x_hat[None] * m[:, None, None, :], x_hat[None])
            x = masked @ c_in_pinv  # (rows, batch, pos, d_in)
            y = jax.vmap(lambda xr: jax.vmap(lambda a: self.section.fn(params, a))(xr))(x)
            cols = jnp.take(c_out, r, axis=1, mode="fill", fill_value=0)
            vals = jnp.einsum("rbpd,dr->bpr", y, cols)
            return out.at[..., r].set(vals, mode="drop")
        return jax.lax.fori_loop(0, n_chunks, body, out)

    @staticmethod
    def _product_nodes(x_hat, mask_t, g_a, g_s, g_b, beta, has_ratio, eps):
        """The output nodes given by masked products (module docstring); ``mask_t``: their rows
        of the mask, transposed ``(in, nodes)``."""
        stat = x_hat @ (g_s[:, None] * mask_t)
        ratio = (x_hat @ (g_a * mask_t)) / jnp.sqrt(jnp.maximum(stat, 0) + eps)
        return jnp.where(has_ratio, ratio, 0) + x_hat @ (g_b * mask_t) + beta

    def _run_patterns(self, params, x_hat, init, c_in_pinv, c_out, c_out_pinv, acts, y, w,
                      patterns, inverse, n, row_masks, rows, n_chunks, product_rows,
                      product_mask_t, *products):
        out_hat = self._loop(params, x_hat, init, c_in_pinv, c_out, patterns, inverse, n)
        if self.rotated:
            out_hat = self._row_loop(params, x_hat, out_hat, c_in_pinv, c_out, row_masks, rows,
                                     n_chunks)
        out_hat = out_hat.at[..., product_rows].set(
            self._product_nodes(x_hat, product_mask_t, *products))
        return self._finish(params, out_hat, c_out_pinv, acts, y, w), out_hat

    def _run_affine(self, params, x_hat, masked_g, beta, c_out_pinv, acts, y, w):
        return self._finish(params, x_hat @ masked_g + beta, c_out_pinv, acts, y, w)

    # --- the affine shortcut --------------------------------------------------------------------

    def _affine_map(self):
        """``(G, beta)`` if the section is affine and the same at every position, else None."""
        ev, n_pos = self.ev, self._prepared[0][0].shape[1]
        rows = np.asarray(self.c_in_pinv)  # (in nodes, d_in): one token each
        n_in, d_in = rows.shape
        count = -(-n_in // n_pos) + 1  # whole samples of tokens, and one sample of zeros
        tokens = np.zeros((count * n_pos, d_in), rows.dtype)
        tokens[n_pos:n_pos + n_in] = rows
        probe = self._program("affine_probe", lambda: self._section_out)
        out = np.asarray(probe(ev.params, jnp.asarray(tokens.reshape(count, n_pos, d_in)),
                               self.c_out), np.float64).reshape(count * n_pos, -1)
        beta, g = out[0], out[n_pos:n_pos + n_in] - out[0]
        x_hat, full = (np.asarray(a, np.float64) for a in self._prepared[0])
        tol = np.sqrt(np.finfo(ev.dtype).eps) * max(np.abs(full).max(), 1e-30)

        def close(a, b):
            return bool(np.all(np.isfinite(a)) and np.abs(a - b).max() <= tol)

        if not (close(out[:n_pos], beta) and close(x_hat @ g + beta, full)):
            return None
        mask = np.random.default_rng(0).random(self.shape) < 0.5
        patterns, inverse = group_rows(mask, np.ones(self.shape[0], bool))
        loop = self._program("loop", lambda: self._loop)
        exact = loop(ev.params, self._prepared[0][0], self._prepared[0][1], self.c_in_pinv,
                     self.c_out, jnp.asarray(patterns, ev.dtype), jnp.asarray(inverse),
                     jnp.int32(len(patterns)))
        if not close(x_hat @ (g * mask.T) + beta, np.asarray(exact, np.float64)):
            return None
        return ev.cast(g), ev.cast(beta)

    def _reference_section(self):
        """``(dtype, params, raw)``: the section as the shortcuts read it off and check it, in
        float64 where JAX has 64-bit types (else the evaluation dtype); ``raw(params, x)`` maps
        ``(samples, pos, d_in)`` to the section's outputs in the neuron basis."""
        ev = self.ev
        dtype = np.float64 if jax.config.read("jax_enable_x64") else np.dtype(ev.dtype)
        params = jax.tree.map(lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(a.dtype,
                              jnp.floating) else a, ev.params)
        raw = self._program("raw", lambda: lambda p, x: jax.vmap(
            lambda a: self.section.fn(p, a))(x))
        return dtype, params, raw

    # --- masked products -------------------------------------------------------------------------

    def _products(self, reference, c_in_pinv, c_out):
        """``(rows, (G_a, g_s, G_b, beta, has_ratio, eps))`` for the output nodes given by masked
        products (module docstring), or None where there are none. ``reference``: the
        section's :meth:`_reference_section`; ``c_in_pinv``, ``c_out``: float64 (``c_out`` None
        at a layer without a basis)."""
        ev, n_pos = self.ev, self._prepared[0][0].shape[1]
        dtype, params, raw = reference
        d_in = c_in_pinv.shape[1]

        def section(z):  # (tokens, d_in) -> (tokens, d_out), packed into samples of n_pos tokens
            count = -(-len(z) // n_pos)
            packed = np.zeros((count * n_pos, d_in), dtype)
            packed[:len(z)] = z
            out = raw(params, jnp.asarray(packed.reshape(count, n_pos, d_in)))
            return np.asarray(out, np.float64).reshape(count * n_pos, -1)[:len(z)]

        # The statistic of a normalisation's second half is coordinate 0 of its input (v, x).
        form = self.section.form
        stat, eps = (0, float(form.eps)) if isinstance(form, LayerNormOutForm) else (None, 1.0)
        scale = lambda v: 1 / np.sqrt(np.maximum(v, 0) + eps)  # noqa: E731
        eye = np.eye(d_in)
        bias = section(np.zeros((1, d_in)))[0]
        if stat is None:
            lin, ratio = section(eye) - bias, np.zeros((d_in, len(bias)))
        else:  # unit inputs at two values of the statistic: F = a scale(v) + b + v b_stat
            lin = np.zeros((d_in, len(bias)))
            lin[stat] = section(eye[stat:stat + 1])[0] - bias
            values = (1 - eps, 4 - eps)
            first, second = (section(eye + v * eye[stat]) - bias - v * lin[stat] for v in values)
            ratio = (first - second) / (scale(values[0]) - scale(values[1]))
            ratio[stat] = 0
            keep = np.arange(d_in) != stat
            lin[keep] = (first - ratio * scale(values[0]))[keep]

        # Which output coordinates the formula reproduces: random inputs (the statistic of
        # either sign), the evaluation data whole and under a random mask.
        rng = np.random.default_rng(0)
        x_hat = np.asarray(self._prepared[0][0], np.float64).reshape(-1, c_in_pinv.shape[0])
        kept = rng.random(c_in_pinv.shape[0]) < 0.5
        z = np.concatenate([rng.standard_normal((max(64, n_pos), d_in)), x_hat @ c_in_pinv,
                            (x_hat * kept) @ c_in_pinv])
        parts = [z @ lin, np.broadcast_to(bias, (len(z), len(bias)))]
        if stat is not None:
            parts.append((z @ ratio) * scale(z[:, stat])[:, None])
        exact = section(z)
        with np.errstate(invalid="ignore"):
            size = np.max([np.abs(q).max(0) for q in parts + [exact]], axis=0)
            good = np.abs(exact - sum(parts)).max(0) <= np.sqrt(np.finfo(dtype).eps) * size
        good &= np.isfinite(exact).all(0)
        c_out = np.eye(len(bias)) if c_out is None else c_out
        rows = np.flatnonzero(~(c_out[~good] != 0).any(0))
        if not len(rows):
            return None
        c = c_out[:, rows]
        g_a = c_in_pinv @ ratio @ c
        g_s = c_in_pinv[:, stat] if stat is not None else np.zeros(c_in_pinv.shape[0])
        matrices = (g_a, g_s, c_in_pinv @ lin @ c, bias @ c)
        return rows.astype(np.int32), (*(ev.cast(m) for m in matrices),
                                       jnp.asarray(np.any(g_a != 0, axis=0)), ev.cast(eps))

    # --- scoring --------------------------------------------------------------------------------

    def score(self, mask) -> float:
        """Score of the model with the boolean ``(out, in)`` edge ``mask``."""
        mask = np.asarray(mask, bool)
        if mask.shape != self.shape:
            raise ConfigError(f"edge mask has shape {mask.shape}, expected {self.shape}")
        ev = self.ev
        acts = ev.acts(self.index)
        if self.affine is not None:
            g, beta = self.affine
            masked_g = g * jnp.asarray(mask.T, ev.dtype)
            return ev.combine([self._run(ev.params, x_hat, masked_g, beta, self.c_out_pinv, a, y, w)
                               for (x_hat, _), a, (_, y, w)
                               in zip(self._prepared, acts, ev.batches)])
        if self.products is None:
            none = ev.cast(np.zeros((self.shape[1], 0)))
            product_rows, products = np.zeros(0, np.int32), (
                none, ev.cast(np.zeros(self.shape[1])), none, ev.cast(np.zeros(0)),
                jnp.zeros(0, bool), ev.cast(1.0))
        else:
            product_rows, products = self.products
        looped = np.ones(self.shape[0], bool)
        looped[product_rows] = False
        keys = [row.tobytes() for row in mask]
        source = {o: self._cached.get((o, keys[o])) for o in np.flatnonzero(looped)}
        compute = np.array([looped[o] and not mask[o].all() and source[o] is None
                            for o in range(len(keys))])
        rows_plan = None
        if self.rows is not None:  # every row from its own input nodes
            rows_plan = self.rows.plan(mask, np.flatnonzero(compute))
            compute = np.zeros_like(compute)
        patterns, inverse = group_rows(mask, compute)
        rows_of = np.bincount(inverse[compute], minlength=len(patterns))  # rows per pattern
        by_row = compute.copy()
        by_row[compute] = rows_of[inverse[compute]] < self._shared_rows
        patterns, inverse = group_rows(mask, compute & ~by_row)
        rows = np.flatnonzero(by_row)
        size = self._rows_per_chunk
        slots = -(-self.shape[0] // size)
        padded_rows = np.full(slots * size, self.shape[0], np.int32)
        padded_rows[:len(rows)] = rows
        row_masks = np.zeros((slots * size, self.shape[1]), np.float32)
        row_masks[:len(rows)] = mask[rows]
        padded_rows = padded_rows.reshape(slots, size)
        row_masks = row_masks.reshape(slots, size, -1)
        n_chunks = -(-len(rows) // size)
        padded = np.zeros(self.shape, np.float32)
        padded[:len(patterns)] = patterns
        args = (jnp.asarray(padded, ev.dtype), jnp.asarray(inverse), jnp.int32(len(patterns)),
                jnp.asarray(row_masks, ev.dtype), jnp.asarray(padded_rows), jnp.int32(n_chunks),
                jnp.asarray(product_rows), jnp.asarray(mask[product_rows].T, ev.dtype), *products)
        sums, outs = [], []
        inits = [self._initial(b, full, source) for b, (_, full) in enumerate(self._prepared)]
        if rows_plan is not None:
            inits = self.rows.apply(inits, rows_plan)
        for (x_hat, _), init, a, (_, y, w) in zip(self._prepared, inits, acts, ev.batches):
            total, out_hat = self._run(ev.params, x_hat, init, self.c_in_pinv, self.c_out,
                                       self.c_out_pinv, a, y, w, *args)
            sums.append(total)
            outs.append(out_hat)
        self._remember(outs, [(o, keys[o]) for o in np.flatnonzero(looped) if not mask[o].all()])
        return ev.combine(sums)

    def release(self) -> None:
        """Drop the cached rows and the rows' held sums once a bisection is done, so that the
        next transition has the memory at once (a forward and its compiled programs reference
        each other: only the garbage collector frees them)."""
        self._steps, self._cached = {}, {}
        if self.rows is not None:
            self.rows.held.release()

    def _initial(self, batch: int, full, source):
        """Output nodes known before the pattern loop: full rows, and cached rows."""
        rows_by_step: dict[int, list[int]] = {}
        for o, step in source.items():
            if step is not None:
                rows_by_step.setdefault(step, []).append(o)
        if not rows_by_step:
            return full
        init = np.array(full)
        for step, rows in rows_by_step.items():
            init[..., rows] = np.asarray(self._steps[step][batch])[..., rows]
        return jnp.asarray(init)

    def _remember(self, outs: list, rows: list[tuple[int, bytes]]) -> None:
        """Keep this mask's output nodes; ``rows`` (row, pattern) now point at them."""
        if not rows or self._step_bytes > self.cache_bytes:
            return
        while self._steps and (len(self._steps) + 1) * self._step_bytes > self.cache_bytes:
            oldest = min(self._steps)
            del self._steps[oldest]
            self._cached = {k: v for k, v in self._cached.items() if v != oldest}
        step, self._next_step = self._next_step, self._next_step + 1
        self._steps[step] = outs
        self._cached.update({key: step for key in rows})
        live = set(self._cached.values())
        self._steps = {s: v for s, v in self._steps.items() if s in live}
