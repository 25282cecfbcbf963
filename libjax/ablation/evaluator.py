"""Node and edge ablations of an interaction graph, with their schedules and metrics (SPEC 3).

Two experiments measure how much of a model a graph's basis captures:

* **node ablation** (SPEC 3.1): at one node layer at a time, the activations are rotated into the
  basis, the least important directions are zeroed (mean-ablated, since coordinates are centred),
  and rotated back: ``x <- x C_abl C^+``. The score is tracked as directions are removed.
* **edge ablation** (SPEC 3.3): between one pair of consecutive node layers only the ``K``
  strongest edges are kept; output node ``o`` is computed from the input nodes its row of the
  edge mask keeps. A bisection finds the smallest ``K`` that keeps the score within ``Delta``.

Everything sees only a :class:`~libjax.model.SectionedModel` and a
:class:`~libjax.storage.graph.Graph`. Evaluation runs in ``dtype`` (float32 in the paper) with the
parameters and bases cast to it, on fixed-shape padded batches; each node layer (node ablation)
and each layer pair (edge ablation) compiles one program that takes the rotation matrix or the
edge mask as an argument, so no schedule point recompiles. The activations in front of the
ablated layer are computed once and reused for every point, and an edge ablation evaluates the
section once per distinct row pattern of the mask it has not met before (:class:`EdgeForward`).

Counting follows the reference exactly: schedules count directions against the layer's
**original** width (so truncated bases line up), ``m = max(n_ablated - (orig - rib), 0)`` columns
are zeroed, ``m = 0`` reuses the unablated score; edges are counted against ``orig_in * orig_out``
and the constant input node's edges (column 0 of a centred build) are kept for free.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Callable, Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from libjax.errors import ConfigError, DataError
from libjax.storage.graph import Graph

log = logging.getLogger("libjax")

METRICS = ("accuracy", "ce_loss")
NODE_BASES = {"lib": ("C", "C_pinv"), "rib": ("C", "C_pinv"), "orthogonal": ("W", "W_pinv")}


# --- schedules ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Schedule:
    """Which numbers of directions to ablate (SPEC 3.2).

    Attributes:
      kind: ``exponential`` (every value for the last ``ablate_every_vec_cutoff`` directions, then
        steps growing like ``exp_base**x``), ``linear`` (``n_points`` evenly spaced values) or
        ``explicit`` (only ``specific_points``).
      ablate_every_vec_cutoff: None = every value ``n..0``.
      exp_base: growth of the exponential steps.
      n_points: points of the linear schedule (``2 <= n_points <= n``).
      specific_points: numbers of directions **remaining** to evaluate as well (the only ones
        for ``explicit``); those ``> n`` are ignored, as the reference does.
      early_stopping_threshold: stop a layer once its score is further than this from the score
        of its first point (None = never).
    """

    kind: str = "exponential"
    ablate_every_vec_cutoff: Optional[int] = None
    exp_base: float = 2.0
    n_points: Optional[int] = None
    specific_points: tuple[int, ...] = ()
    early_stopping_threshold: Optional[float] = None

    def validate(self) -> None:
        if self.kind not in ("exponential", "linear", "explicit"):
            raise ConfigError(f"unknown schedule {self.kind!r}; use 'exponential', 'linear' or "
                              "'explicit'")
        if self.kind == "exponential":
            if self.ablate_every_vec_cutoff is not None and self.ablate_every_vec_cutoff < 0:
                raise ConfigError(f"ablate_every_vec_cutoff must be >= 0 (or unset for every "
                                  f"value), got {self.ablate_every_vec_cutoff}")
            if not self.exp_base >= 1.0:
                raise ConfigError(f"exp_base must be >= 1, got {self.exp_base}")
        elif self.kind == "linear" and (self.n_points is None or self.n_points < 2):
            raise ConfigError(f"a linear schedule needs n_points >= 2 (--n_points), got "
                              f"{self.n_points}")
        elif self.kind == "explicit" and not self.specific_points:
            raise ConfigError("an explicit schedule needs specific_points (numbers of directions "
                              "remaining, --specific_points)")
        if any(p < 0 for p in self.specific_points):
            raise ConfigError(f"specific_points are numbers of directions remaining and must be "
                              f">= 0, got {list(self.specific_points)}")
        if self.early_stopping_threshold is not None and self.early_stopping_threshold < 0:
            raise ConfigError("early_stopping_threshold must be >= 0")

    def n_ablated(self, n: int) -> list[int]:
        """The schedule for ``n`` directions: numbers to ablate, descending from ``n`` to 0."""
        self.validate()
        if self.kind == "exponential":
            values = exponential_schedule(n, self.ablate_every_vec_cutoff, self.exp_base)
        elif self.kind == "linear":
            values = linear_schedule(n, self.n_points)
        else:
            values = []
        return with_specific_points(values, n, self.specific_points)


def exponential_schedule(n: int, cutoff: Optional[int], base: float) -> list[int]:
    """``n, n-1, ..., n-cutoff``, then ``v = int(prev - base**x)`` for ``x = 0, 1, ...`` while
    ``v > 0``, then 0. E.g. ``(n=12, cutoff=3, base=2) -> [12, 11, 10, 9, 8, 6, 2, 0]``. With no
    cutoff, or one at least ``n`` (a narrow layer), every value ``n..0``."""
    if cutoff is not None and cutoff < 0:
        raise ConfigError(f"ablate_every_vec_cutoff must be >= 0, got {cutoff}")
    if cutoff is None or cutoff >= n:
        return list(range(n, -1, -1))
    values = list(range(n, n - cutoff - 1, -1))
    prev, x = values[-1], 0
    while True:
        v = int(prev - base**x)
        if v <= 0:
            break
        values.append(v)
        prev, x = v, x + 1
    return values + [0]


def linear_schedule(n: int, n_points: int) -> list[int]:
    """``int(linspace(n, 0, n_points))``, e.g. ``(n=12, n_points=3) -> [12, 6, 0]``."""
    if not 2 <= n_points <= n:
        raise ConfigError(f"a linear schedule needs 2 <= n_points <= {n} (the layer's width), "
                          f"got {n_points}")
    return [int(v) for v in np.linspace(n, 0, n_points).astype(int)]


def with_specific_points(values: Sequence[int], n: int, remaining: Iterable[int]) -> list[int]:
    """Merge numbers of directions *remaining* (``<= n``) into a schedule of numbers ablated."""
    extra = [n - r for r in remaining if r <= n]
    return sorted(set(values) | set(extra), reverse=True)


@dataclasses.dataclass(frozen=True)
class Bisect:
    """Bisection for the largest ablatable count (SPEC 3.2 "bisect").

    Attributes:
      score_target_difference: ``Delta``; a score is good when accuracy ``>= base - Delta`` (or
        loss ``<= base + Delta``).
      scaling: ``linear`` (midpoint) or ``logarithmic`` (geometric mean) proposals.
      tolerance: stop once ``upper - lower <= tolerance``.
    """

    score_target_difference: float = 0.001
    scaling: str = "linear"
    tolerance: int = 1

    def validate(self) -> None:
        if self.scaling not in ("linear", "logarithmic"):
            raise ConfigError(f"unknown bisect scaling {self.scaling!r}; use 'linear' or "
                              "'logarithmic'")
        if self.tolerance < 1:
            raise ConfigError(f"bisect tolerance must be >= 1, got {self.tolerance}")
        if not self.score_target_difference >= 0:
            raise ConfigError(f"score_target_difference must be >= 0, got "
                              f"{self.score_target_difference}")


def bisect(evaluate: Callable[[int], float], good: Callable[[float], bool], n: int,
           cfg: Bisect) -> tuple[int, int]:
    """Bisect ``n_ablated`` in ``[0, n]`` for the boundary between good and bad scores.

    ``lower`` starts at 0 (ablatable), ``upper`` at ``n``; each proposal (midpoint, or geometric
    mean of ``upper`` and ``lower + 1e-9``, nudged off the bounds) moves ``lower`` up when its score
    is good and ``upper`` down otherwise, until ``upper - lower <= tolerance``. Returns
    ``(lower, upper)``: ``lower`` is the largest count seen to be ablatable.
    """
    cfg.validate()
    lower, upper = 0, n
    while upper - lower > cfg.tolerance:
        if cfg.scaling == "linear":
            proposal = (upper + lower) // 2
        else:
            proposal = int(math.exp((math.log(upper) + math.log(lower + 1e-9)) / 2))
        proposal = min(max(proposal, lower + 1), upper - 1)
        if good(evaluate(proposal)):
            lower = proposal
        else:
            upper = proposal
    return lower, upper


# --- matrices -------------------------------------------------------------------------------------

def rotation_matrix(c, c_pinv, n_zeroed: int) -> np.ndarray:
    """``C_abl C^+`` with the last ``n_zeroed`` columns of ``C`` zeroed (SPEC 3.1); the identity
    for ``n_zeroed = 0`` (not the projector ``C C^+``), zero for ``n_zeroed = rib``."""
    c, c_pinv = np.asarray(c, np.float64), np.asarray(c_pinv, np.float64)
    rib = c.shape[1]
    if not 0 <= n_zeroed <= rib:
        raise ConfigError(f"cannot zero {n_zeroed} of {rib} directions")
    if n_zeroed == 0:
        return np.eye(c.shape[0])
    keep = rib - n_zeroed
    return c[:, :keep] @ c_pinv[:keep]


def edge_mask(edges, n_keep: int, free_const_column: bool) -> np.ndarray:
    """Boolean ``(out, in)`` mask keeping the ``n_keep`` strongest edges (SPEC 3.3).

    With ``free_const_column`` (a centred build) the edges of input node 0, the constant
    direction, are always kept and not counted. Entries ``>=`` the ``n_keep``-th largest
    candidate are kept, so ties may keep more; ``n_keep`` above the number of candidates keeps all.
    """
    edges = np.asarray(edges)
    if n_keep < 0:
        raise ConfigError(f"cannot keep a negative number of edges ({n_keep})")
    start = 1 if free_const_column else 0
    candidates = edges[:, start:]
    mask = np.ones(edges.shape, bool)
    if n_keep > candidates.size:
        return mask
    if n_keep == 0:
        mask[:, start:] = False
    else:
        k = candidates.size - n_keep
        threshold = np.partition(candidates.ravel(), k)[k]  # the n_keep-th largest
        mask[:, start:] = candidates >= threshold
    return mask


def group_rows(mask, compute) -> tuple[np.ndarray, np.ndarray]:
    """Group the rows of an edge mask that must be computed by their pattern of kept inputs.

    Returns ``(patterns, inverse)``: the distinct patterns of the rows with ``compute`` set, as
    0/1 floats ``(U, in)``, and for each row the index of its pattern, or -1 for the other rows.
    """
    mask, compute = np.asarray(mask, bool), np.asarray(compute, bool)
    inverse = np.full(mask.shape[0], -1, np.int32)
    if not compute.any():
        return np.zeros((0, mask.shape[1]), np.float32), inverse
    patterns, inv = np.unique(mask[compute], axis=0, return_inverse=True)
    inverse[compute] = np.ravel(inv)
    return patterns.astype(np.float32), inverse


# --- metrics --------------------------------------------------------------------------------------

def _metric_sums(metric: str, logits, labels, weights):
    """Per-batch sums of a metric: ``(total, count)`` over the real (weight 1) samples.

    Outputs with one position are compared with per-sample labels at their last position; label
    arrays with a position axis count every token (SPEC 3.4).
    """
    if labels.ndim == 1:
        logits = logits[:, -1]
        token_weights = weights
    else:
        token_weights = jnp.broadcast_to(weights[:, None], labels.shape)
    if metric == "accuracy":
        hits = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float64)
        return jnp.sum(hits * token_weights), jnp.sum(token_weights)
    logp = jax.nn.log_softmax(logits.astype(jnp.float64), axis=-1)
    nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * token_weights), jnp.sum(token_weights)


def combine(metric: str, sums: Sequence[tuple[float, float]]) -> float:
    """The score from per-batch ``(total, count)``: overall accuracy, or the mean over batches of
    the per-token cross-entropy (the reference's convention, SPEC 3.4)."""
    if metric == "accuracy":
        return float(sum(t for t, _ in sums) / sum(c for _, c in sums))
    return float(np.mean([t / c for t, c in sums]))


def is_good(metric: str, base: float, delta: float) -> Callable[[float], bool]:
    """Whether a score is within ``delta`` of ``base`` in the metric's good direction."""
    if metric == "accuracy":
        return lambda score: score >= base - delta
    return lambda score: score <= base + delta


# --- evaluation -----------------------------------------------------------------------------------

def _cast(tree, dtype):
    return jax.tree.map(
        lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
        else jnp.asarray(a), tree)


def _run_from(model, params, acts, index: int):
    """One sample's model output from its activations at node layer ``index``."""
    for section in model.sections[index:]:
        acts = section(params, acts)
    return model.tail(params, acts)


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
        size = min(batch_size, len(inputs))
        self.batches = []
        for start in range(0, len(inputs), size):
            x, y = inputs[start:start + size], labels[start:start + size]
            w = np.ones(size)
            if len(x) < size:
                w[len(x):] = 0.0
                pad = size - len(x)
                x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
                y = np.concatenate([y, np.repeat(y[-1:], pad, axis=0)])
            self.batches.append((jnp.asarray(x), jnp.asarray(y), jnp.asarray(w)))
        self._acts: dict[int, list] = {}
        self._base: Optional[float] = None
        self._jitted: dict = {}

    def cast(self, matrix):
        return jnp.asarray(np.asarray(matrix), self.dtype)

    def _program(self, key, make):
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
                    return _metric_sums(metric, logits, y, w)
                return run
            run = self._program("base", make)
            self._base = self._score(run, [(self.params, x, y, w) for x, y, w in self.batches])
        return self._base

    def acts(self, index: int) -> list:
        """Per-batch activations at node layer ``index`` (only the latest layer is kept)."""
        if index not in self._acts:
            model = self.model
            run = self._program(("acts", index), lambda: lambda params, x: jax.vmap(
                lambda s: model.run_to(params, s, index))(x))
            self._acts = {index: [run(self.params, x) for x, _, _ in self.batches]}
        return self._acts[index]

    def node_score(self, index: int, rotation) -> float:
        """Score with the activations at node layer ``index`` replaced by ``acts @ rotation``."""
        model, metric = self.model, self.metric

        def make():
            def run(params, acts, rot, y, w):
                logits = jax.vmap(lambda a: _run_from(model, params, a @ rot, index))(acts)
                return _metric_sums(metric, logits, y, w)
            return run
        run = self._program(("node", index), make)
        rot = self.cast(rotation)
        return self._score(run, [(self.params, a, rot, y, w)
                                 for a, (_, y, w) in zip(self.acts(index), self.batches)])


class EdgeForward:
    """The model with only some edges from node layer ``index`` to the next one (SPEC 3.3).

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
            y = jax.vmap(lambda a: section(params, a))(x_hat @ c_in_pinv)
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
            logits = jax.vmap(lambda a: _run_from(model, params, a, index + 1))(acts)
            return _metric_sums(metric, logits, y, w), out_hat

        prep = ev._program(("edge_prep", index, rotated), lambda: prepare)
        self._run = ev._program(("edge", index, rotated), lambda: run)
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


# --- experiments ----------------------------------------------------------------------------------

def _check_layers(graph: Graph, layers: Sequence[str], what: str) -> None:
    for name in layers:
        if name not in graph.node_layers:
            raise ConfigError(f"unknown node layer {name!r} for {what}; the graph's node layers "
                              f"are {', '.join(graph.node_layers)}")


def _check_model(model, graph: Graph) -> None:
    if tuple(model.node_layers) != tuple(graph.node_layers):
        raise ConfigError(f"the model is cut at {list(model.node_layers)} but the graph at "
                          f"{list(graph.node_layers)}; load the model with the graph's node layers")
    dims = {n: d for n, d in zip(model.node_layers, model.dims)}
    wrong = [n for n in graph.node_layers if dims[n] != graph.orig_dims[n]]
    if wrong:
        raise ConfigError(f"the model's widths at {wrong} ({[dims[n] for n in wrong]}) differ "
                          f"from the graph's ({[graph.orig_dims[n] for n in wrong]}); use the "
                          "checkpoint the graph was built from")


def node_ablation(ev: Evaluator, graph: Graph, layers: Sequence[str], schedule: Schedule,
                  basis: str = "lib") -> dict[str, dict[int, float]]:
    """Score after ablating the least important directions of each layer in ``layers``.

    Args:
      ev: the evaluator (model, data, metric).
      graph: supplies ``C, C^+`` (``basis="lib"``/``"rib"``) or ``W, W^+`` (``"orthogonal"``).
      layers: node layers to ablate, one at a time.
      schedule: which numbers of directions to ablate.
    Returns:
      ``{layer: {n_remaining: score}}``, keys descending; ``n_remaining = orig - n_ablated``.
    """
    if basis not in NODE_BASES:
        raise ConfigError(f"unknown ablation basis {basis!r}; use one of {', '.join(NODE_BASES)}")
    _check_model(ev.model, graph)
    _check_layers(graph, layers, "node ablation")
    schedule.validate()
    for name in layers:
        if graph.basis(name) is None:
            raise ConfigError(f"node layer {name!r} has no basis (it is the graph's unrotated "
                              f"final layer) and cannot be node-ablated; ablate one of "
                              f"{', '.join(graph.bases)}")
    c_key, pinv_key = NODE_BASES[basis]
    results = {}
    for name in layers:
        b = graph.basis(name)
        c, c_pinv = getattr(b, c_key), getattr(b, pinv_key)
        orig, rib = c.shape
        index = graph.node_layers.index(name)
        scores: dict[int, float] = {}
        first = None
        for n_ablated in reversed(schedule.n_ablated(orig)):
            m = max(n_ablated - (orig - rib), 0)
            score = ev.base() if m == 0 else ev.node_score(index, rotation_matrix(c, c_pinv, m))
            scores[orig - n_ablated] = score
            first = score if first is None else first
            threshold = schedule.early_stopping_threshold
            if threshold is not None and abs(score - first) > threshold:
                log.info("%s: stopping early at %d remaining (score %.4g)", name,
                         orig - n_ablated, score)
                break
        results[name] = dict(sorted(scores.items(), reverse=True))
        log.info("node ablation of %s: %d points", name, len(scores))
    return results


@dataclasses.dataclass(frozen=True)
class EdgeResult:
    """Edge-ablation outcome of one layer pair, keyed by its input layer.

    Attributes:
      scores: ``{n_edges_kept: score}`` of every probed count, descending.
      n_edges_required: ``n - lower`` (conservative), ``n = orig_in * orig_out``.
      mask: the edge mask keeping ``n_edges_required`` edges.
    """

    scores: dict[int, float]
    n_edges_required: int
    mask: np.ndarray


def edge_ablation(ev: Evaluator, graph: Graph, pairs: Sequence[tuple[str, str]],
                  cfg: Bisect) -> dict[str, EdgeResult]:
    """For each consecutive pair, bisect for the fewest edges keeping the score within
    ``cfg.score_target_difference`` of the unablated model (SPEC 3.3).

    Uses ``C, C^+`` at both layers (the identity for a basis-less layer such as ``output``). The
    constant input node's edges are kept for free when the graph was built centred.
    """
    _check_model(ev.model, graph)
    cfg.validate()
    free_const = bool(graph.config.get("center", True))
    base = ev.base()
    good = is_good(ev.metric, base, cfg.score_target_difference)
    out = {}
    for a, b in pairs:
        _check_layers(graph, (a, b), "edge ablation")
        if (a, b) not in graph.edges:
            have = ", ".join(f"{x}->{y}" for x, y in graph.edges) or "none"
            raise ConfigError(f"the graph has no edges {a}->{b}; edge ablation needs consecutive "
                              f"node layers of a build with edges (this graph has: {have})")
        if graph.basis(a) is None:
            raise ConfigError(f"node layer {a!r} has no basis; it cannot be the input of an edge "
                              "ablation")
        edges = np.asarray(graph.edges[(a, b)])
        b_in, b_out = graph.basis(a), graph.basis(b)
        forward = EdgeForward(ev, graph.node_layers.index(a), b_in.C, b_in.C_pinv,
                              None if b_out is None else (b_out.C, b_out.C_pinv))
        n = graph.orig_dims[a] * graph.orig_dims[b]
        scores: dict[int, float] = {}

        def evaluate(n_ablated: int) -> float:
            keep = n - n_ablated
            mask = edge_mask(edges, keep, free_const)
            scores[keep] = base if mask.all() else forward.score(mask)
            return scores[keep]

        lower, _ = bisect(evaluate, good, n, cfg)
        required = n - lower
        out[a] = EdgeResult(dict(sorted(scores.items(), reverse=True)), required,
                            edge_mask(edges, required, free_const))
        log.info("edge ablation %s->%s: %d of %d edges needed (%d evaluations)", a, b, required, n,
                 len(scores))
    return out


# --- result records -------------------------------------------------------------------------------

def node_record(results: dict[str, dict[int, float]], no_ablation_result: float, config: dict,
                seconds: float, cpu_seconds: Optional[float] = None) -> dict:
    """The JSON record of a node ablation (SPEC 3.5): ``results[layer][n_remaining] = score``,
    with the wall-clock (and CPU) time it took."""
    return {"config": config,
            "results": {name: {str(k): v for k, v in scores.items()}
                        for name, scores in results.items()},
            "no_ablation_result": no_ablation_result,
            "time_taken": f"{seconds:.1f} s", "time_taken_s": seconds, "cpu_time_s": cpu_seconds}


def edge_record(results: dict[str, EdgeResult], no_ablation_result: float, config: dict,
                seconds: float, cpu_seconds: Optional[float] = None) -> dict:
    """The JSON record of an edge ablation (SPEC 3.5): ``results[layer][n_edges_kept] = score``,
    ``n_edges_required``, and ``edge_masks[layer][n_edges_required]``: the mask of the required
    edges as one string of 0/1 per output node (compact, unlike nested lists)."""
    record = node_record({k: r.scores for k, r in results.items()}, no_ablation_result, config,
                         seconds, cpu_seconds)
    record["n_edges_required"] = {k: r.n_edges_required for k, r in results.items()}
    record["edge_masks"] = {
        k: {str(r.n_edges_required): ["".join("1" if v else "0" for v in row) for row in r.mask]}
        for k, r in results.items()}
    return record


def required_masks(record: dict) -> dict[str, np.ndarray]:
    """The masks of the required edges of an edge-ablation record, by input layer."""
    return {name: np.array([[c == "1" for c in row] for row in record["edge_masks"][name][str(n)]])
            for name, n in record["n_edges_required"].items()}
