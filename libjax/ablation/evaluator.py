"""Evaluating a sectioned model with an intervention at one node layer: a node ablation's
rotation (:class:`Evaluator`) or an edge ablation's mask (:class:`EdgeForward`).

Evaluation runs in ``dtype`` (float32 in the paper) with the parameters and bases cast to it, on
fixed-shape padded batches; each node layer (node ablation) and each layer pair (edge ablation)
compiles one program that takes the rotation matrix or the edge mask as an argument, so no
schedule point recompiles. The activations in front of the ablated layer are computed once and
reused for every point, and only the sections from the ablated layer on are run again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from libjax.ablation.metrics import METRICS, NEEDS_REFERENCE, combine, metric_sums
from libjax.errors import ConfigError, DataError
from libjax.runtime.batching import padded_batches


def _cast(tree, dtype):
    return jax.tree.map(
        lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
        else jnp.asarray(a), tree)


class Evaluator:
    """Scores a sectioned model on labelled data, with an intervention at one node layer.

    Data are cut into equal, padded batches (padding has weight 0) so each jitted program compiles
    once. Activations at the node layer in front of an intervention are computed once per layer and
    kept. Labels with a position axis are next tokens, scored at every position (docs/method.md 3.4)
    but the ``skip_positions`` a graph was built without: those are neither ablated nor scored
    (docs/method.md 1.13; the experiments take them from the graph's record,
    :meth:`use_skip_positions`). The ``kl`` metric compares with the unablated model's outputs,
    which each program recomputes from the kept activations (two passes downstream of the
    intervention, and memory for one batch of logits, not the whole evaluation set's).
    """

    def __init__(self, model, inputs, labels, metric: str = "accuracy",
                 batch_size: int = 99999, dtype=np.float32, skip_positions: Sequence[int] = ()):
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
        self.skip_positions: tuple[int, ...] = ()
        self.use_skip_positions(skip_positions)

    def use_skip_positions(self, skip_positions: Sequence[int]) -> None:
        """Leave these positions unablated and unscored from now on (a graph built without them
        cannot judge them); the unablated score and the programs are redone if they change."""
        skip = tuple(sorted(int(p) for p in skip_positions))
        if skip == self.skip_positions:
            return
        n_pos = self.batches[0][0].shape[1] if self.batches[0][0].ndim > 1 else 1
        if skip and (self.batches[0][1].ndim < 2 or not all(0 <= p < n_pos for p in skip)):
            raise ConfigError(f"cannot leave positions {list(skip)} out of the evaluation: the "
                              f"labels have no position axis, or fewer positions ({n_pos})")
        self.skip_positions, self._base, self._jitted = skip, None, {}

    def at_kept(self, new, old, axis: int = -2):
        """Traced: ``new`` at the kept positions, ``old`` at the skipped ones (positions: axis
        ``axis``, by default the second-last)."""
        if not self.skip_positions:
            return new
        keep = np.ones(new.shape[axis], bool)
        keep[list(self.skip_positions)] = False
        shape = [1] * new.ndim
        shape[axis] = -1
        return jnp.where(keep.reshape(shape), new, old)

    def cast(self, matrix):
        return jnp.asarray(np.asarray(matrix), self.dtype)

    def program(self, key, make):
        """The jitted ``make()``, compiled once per evaluator and ``key``."""
        if key not in self._jitted:
            self._jitted[key] = jax.jit(make())
        return self._jitted[key]

    def reference(self, params, acts, index: int):
        """Traced: the unablated logits from ``acts`` at node layer ``index`` where the metric
        compares with them, else None."""
        if self.metric not in NEEDS_REFERENCE:
            return None
        return jax.vmap(lambda a: self.model.run_from(params, a, index))(acts)

    def sums(self, logits, reference, y, w):
        """Traced: the metric's per-batch ``(total, count)``, over the kept positions."""
        if self.skip_positions:
            keep = np.setdiff1d(np.arange(y.shape[1]), self.skip_positions)
            logits, y = logits[:, keep], y[:, keep]
            reference = None if reference is None else reference[:, keep]
        return metric_sums(self.metric, logits, y, w, reference)

    def combine(self, sums) -> float:
        return combine(self.metric, [(float(t), float(c)) for t, c in sums])

    def base(self) -> float:
        """The unablated score."""
        if self._base is None:
            def make():
                def run(params, x, y, w):
                    logits = jax.vmap(lambda s: self.model.forward(params, s))(x)
                    return self.sums(logits, logits, y, w)
                return run
            run = self.program("base", make)
            self._base = self.combine([run(self.params, x, y, w) for x, y, w in self.batches])
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
        """Score with the activations at node layer ``index`` replaced by ``acts @ rotation``
        (at the kept positions)."""
        def make():
            def run(params, acts, rot, y, w):
                logits = jax.vmap(lambda a: self.model.run_from(
                    params, self.at_kept(a @ rot, a), index))(acts)
                return self.sums(logits, self.reference(params, acts, index), y, w)
            return run
        run = self.program(("node", index), make)
        rot = self.cast(rotation)
        return self.combine([run(self.params, a, rot, y, w)
                             for a, (_, y, w) in zip(self.acts(index), self.batches)])
