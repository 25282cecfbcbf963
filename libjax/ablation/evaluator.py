"""Evaluating a sectioned model with an intervention at one node layer: a node ablation's
rotation (:class:`Evaluator`) or an edge ablation's mask (:class:`EdgeForward`).

Evaluation runs in ``dtype`` (float32 in the paper) with the parameters and bases cast to it, on
fixed-shape padded batches; each node layer (node ablation) and each layer pair (edge ablation)
compiles one program that takes the rotation matrix or the edge mask as an argument, so no
schedule point recompiles. The activations in front of the ablated layer are computed once and
reused for every point, and an edge ablation evaluates the section once per distinct row pattern
of the mask it has not met before.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from libjax.ablation.masks import group_rows
from libjax.ablation.metrics import METRICS, combine, metric_sums
from libjax.errors import ConfigError, DataError
from libjax.runtime.batching import padded_batches


def _cast(tree, dtype):
    return jax.tree.map(
        lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
        else jnp.asarray(a), tree)


class Evaluator:
    """Scores a sectioned model on labelled data, with an intervention at one node layer.

    Data are cut into equal, padded batches (padding has weight 0) so each jitted program
    compiles once. Activations at the node layer in front of an intervention are computed once per
    layer and kept.
    """

    def __init__(self, model, inputs, labels, metric: str = "accuracy",
                 batch_size: int = 99999, dtype=np.float32):
        if metric not in METRICS:
            raise ConfigError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
        if labels is None:
            raise DataError("ablations need labelled data; this dataset has no labels")
        if len(inputs) == 0 or len(inputs) != len(labels):
            raise DataError(f"need as many labels as inputs (and at least one): got {len(inputs)} "
                            f"inputs and {len(labels)} labels")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.metric, self.dtype = model, metric, jnp.dtype(dtype)
        self.params = _cast(model.params, self.dtype)
        self.batches = [(jnp.asarray(x), jnp.asarray(y), jnp.asarray(w)) for _, (x, y), w
                        in padded_batches(min(batch_size, len(inputs)), inputs, labels)]
        self._acts: dict[int, list] = {}
        self._base: Optional[float] = None
        self._jitted: dict = {}

    def cast(self, matrix):
        return jnp.asarray(np.asarray(matrix), self.dtype)

    def program(self, key, make):
        """The jitted ``make()``, compiled once per evaluator and ``key``."""
        if key not in self._jitted:
            self._jitted[key] = jax.jit(make())
        return self._jitted[key]

    def _score(self, program, per_batch_args) -> float:
        sums = [program(*args) for args in per_batch_args]
        return combine(self.metric, [(float(t), float(c)) for t, c in sums])

    def base(self) -> float:
        """The unablated score."""
        if self._base is None:
            model, metric = self.model, self.metric

            def make():
                def run(params, x, y, w):
                    logits = jax.vmap(lambda s: model.forward(params, s))(x)
                    return metric_sums(metric, logits, y, w)
                return run
            run = self.program("base", make)
            self._base = self._score(run, [(self.params, x, y, w) for x, y, w in self.batches])
        return self._base

    def acts(self, index: int) -> list:
        """Per-batch activations at node layer ``index`` (only the latest layer is kept)."""
        if index not in self._acts:
            model = self.model
            run = self.program(("acts", index), lambda: lambda params, x: jax.vmap(
                lambda s: model.run_to(params, s, index))(x))
            self._acts = {index: [run(self.params, x) for x, _, _ in self.batches]}
        return self._acts[index]

    def node_score(self, index: int, rotation) -> float:
        """Score with the activations at node layer ``index`` replaced by ``acts @ rotation``."""
        model, metric = self.model, self.metric

        def make():
            def run(params, acts, rot, y, w):
                logits = jax.vmap(lambda a: model.run_from(params, a @ rot, index))(acts)
                return metric_sums(metric, logits, y, w)
            return run
        run = self.program(("node", index), make)
        rot = self.cast(rotation)
        return self._score(run, [(self.params, a, rot, y, w)
                                 for a, (_, y, w) in zip(self.acts(index), self.batches)])


class EdgeForward:
    """The model with only some edges from node layer ``index`` to the next one (docs/method.md
    3.3).

    Output node ``o`` of the section is computed from the input nodes kept by row ``o`` of the
    mask, ``y_o = F((x_hat * m_o) C_in^+) . C_out[:, o]``, then all output nodes are mapped back
    with ``C_out^+`` (no ``C_out`` at a layer without a basis, e.g. ``output``).

    Rows sharing a pattern share one section evaluation: the distinct patterns, padded to a fixed
    ``(out, in)`` array, are visited by a ``fori_loop`` whose trip count is an argument, so one
    compiled program serves every mask, at a cost proportional to the number of patterns. A row's
    output depends only on its own pattern, so rows computed for earlier masks (a bisection
    revisits most rows unchanged) are reused from a cache bounded by ``cache_bytes``, and rows
    that keep every input are computed once.
    """

    def __init__(self, ev: Evaluator, index: int, c_in, c_in_pinv, out_basis=None,
                 cache_bytes: int = 2**28):
        self.ev, self.index, self.cache_bytes = ev, index, cache_bytes
        self.c_in, self.c_in_pinv = ev.cast(c_in), ev.cast(c_in_pinv)
        rotated = out_basis is not None
        self.c_out, self.c_out_pinv = ((ev.cast(out_basis[0]), ev.cast(out_basis[1])) if rotated
                                       else (None, None))
        model, metric, section = ev.model, ev.metric, ev.model.sections[index]

        def out_nodes(params, x_hat, c_in_pinv, c_out):
            y = jax.vmap(lambda a: section.fn(params, a))(x_hat @ c_in_pinv)
            return y @ c_out if rotated else y

        def prepare(params, acts, c_in, c_in_pinv, c_out):
            x_hat = acts @ c_in
            return x_hat, out_nodes(params, x_hat, c_in_pinv, c_out)

        def run(params, x_hat, init, c_in_pinv, c_out, c_out_pinv, y, w, patterns, inverse, n):
            def body(u, out):
                return jnp.where(inverse == u, out_nodes(params, x_hat * patterns[u], c_in_pinv,
                                                         c_out), out)
            out_hat = jax.lax.fori_loop(0, n, body, init)
            acts = out_hat @ c_out_pinv if rotated else out_hat
            logits = jax.vmap(lambda a: model.run_from(params, a, index + 1))(acts)
            return metric_sums(metric, logits, y, w), out_hat

        prep = ev.program(("edge_prep", index, rotated), lambda: prepare)
        self._run = ev.program(("edge", index, rotated), lambda: run)
        self._prepared = [prep(ev.params, a, self.c_in, self.c_in_pinv, self.c_out)
                          for a in ev.acts(index)]
        full = self._prepared[0][1]
        self.shape = (full.shape[-1], self.c_in.shape[1])  # (out nodes, in nodes)
        self._step_bytes = sum(f.size * f.dtype.itemsize for _, f in self._prepared)
        self._steps: dict[int, list] = {}  # step id -> per-batch output nodes of that mask
        self._cached: dict[tuple[int, bytes], int] = {}  # (row, pattern) -> step id
        self._next_step = 0

    def score(self, mask) -> float:
        """Score of the model with the boolean ``(out, in)`` edge ``mask``."""
        mask = np.asarray(mask, bool)
        if mask.shape != self.shape:
            raise ConfigError(f"edge mask has shape {mask.shape}, expected {self.shape}")
        keys = [row.tobytes() for row in mask]
        source = {o: self._cached.get((o, k)) for o, k in enumerate(keys)}
        compute = np.array([not mask[o].all() and source[o] is None for o in range(len(keys))])
        patterns, inverse = group_rows(mask, compute)
        padded = np.zeros(self.shape, np.float32)
        padded[:len(patterns)] = patterns
        ev = self.ev
        args = (jnp.asarray(padded, ev.dtype), jnp.asarray(inverse), jnp.int32(len(patterns)))
        sums, outs = [], []
        for b, ((x_hat, full), (_, y, w)) in enumerate(zip(self._prepared, ev.batches)):
            init = self._initial(b, full, source)
            total, out_hat = self._run(ev.params, x_hat, init, self.c_in_pinv, self.c_out,
                                       self.c_out_pinv, y, w, *args)
            sums.append(total)
            outs.append(out_hat)
        self._remember(outs, [(o, k) for o, k in enumerate(keys) if not mask[o].all()])
        return combine(ev.metric, [(float(t), float(c)) for t, c in sums])

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
