"""Node and edge ablation experiments of a graph (docs/method.md 3.1, 3.3), and the same as
timed, self-describing result records (3.5).

Counting follows the reference exactly: schedules count directions against the layer's
**original** width (so truncated bases line up), ``m = max(n_ablated - (orig - rib), 0)`` columns
are zeroed, ``m = 0`` reuses the unablated score; edges are counted against ``orig_in * orig_out``
and the constant input node's edges (column 0 of a centred build) are kept for free.
``scripts/ablate.py`` and :mod:`libjax.analysis.comparison` both write their records through
:func:`node_experiment` and :func:`edge_experiment`, so records from either read the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence

import numpy as np

from libjax.ablation.edge_forward import EdgeForward
from libjax.ablation.evaluator import Evaluator
from libjax.ablation.masks import edge_mask, rotation_matrix
from libjax.ablation.metrics import is_good
from libjax.ablation.records import EdgeResult, edge_record, node_record
from libjax.ablation.schedules import Bisect, Schedule, bisect
from libjax.basis import Basis, error_factors
from libjax.errors import ConfigError
from libjax.kinds import kind_of
from libjax.pipeline.config import skip_positions_of
from libjax.runtime.progress import Meter
from libjax.storage.graph import Graph

log = logging.getLogger("libjax")

# Node ablation bases: the graph's own basis C, or the PCA projection W of its Gram matrix.
NODE_BASES = {"lib": ("C", "C_pinv"), "pca": ("W", "W_pinv")}


def _check_layers(graph: Graph, layers: Sequence[str], what: str) -> None:
    for name in layers:
        if name not in graph.node_layers:
            raise ConfigError(f"unknown node layer {name!r} for {what}; the graph's node layers "
                              f"are {', '.join(graph.node_layers)}")


def _check_model(model, graph: Graph) -> None:
    if tuple(model.node_layers) != tuple(graph.node_layers):
        raise ConfigError(f"the model is cut at {list(model.node_layers)} but the graph at "
                          f"{list(graph.node_layers)}; load the model with the graph's node layers")
    dims = {layer.name: layer.width for layer in model.layers}
    wrong = [n for n in graph.node_layers if dims[n] != graph.orig_dims[n]]
    if wrong:
        raise ConfigError(f"the model's widths at {wrong} ({[dims[n] for n in wrong]}) differ "
                          f"from the graph's ({[graph.orig_dims[n] for n in wrong]}); use the "
                          "checkpoint the graph was built from")


def _error(b: Basis):
    """``(A, B)`` with ``A B = I - C C^+`` where ``b``'s kind keeps its reconstruction error as a
    node (docs/method.md 1.14), else None; None too where the error is zero."""
    if not kind_of(b).keeps_error:
        return None
    a, b_ = error_factors(b.C, b.C_pinv)
    return (a, b_) if a.shape[1] else None


def _with_error(c, c_pinv, error):
    """``C`` and ``C^+`` with the error's factors as extra last columns and rows: the section then
    sees ``(f_hat * m) C^+ + f - f C C^+`` where the mask keeps the error columns."""
    if error is None:
        return c, c_pinv
    return np.concatenate([c, error[0]], axis=1), np.concatenate([c_pinv, error[1]], axis=0)


def _rotation(c, c_pinv, m: int, error) -> np.ndarray:
    """The node ablation's rotation zeroing ``m`` directions, plus ``I - C C^+`` where the error
    is kept."""
    r = rotation_matrix(c, c_pinv, m)
    return r if error is None else r + error[0] @ error[1]


def node_ablation(ev: Evaluator, graph: Graph, layers: Sequence[str], schedule: Schedule,
                  basis: str = "lib") -> dict[str, dict[int, float]]:
    """Score after ablating the least important directions of each layer in ``layers``.

    Args:
      ev: the evaluator (model, data, metric).
      graph: supplies ``C, C^+`` (``basis="lib"``: the graph's own basis) or ``W, W^+``
        (``"pca"``: the PCA projection of the layer's Gram matrix).
      layers: node layers to ablate, one at a time.
      schedule: which numbers of directions to ablate.
    Returns:
      ``{layer: {n_remaining: score}}``, keys descending; ``n_remaining = width - n_ablated``
      with ``width = max(orig, rib)`` (``orig`` but for an overcomplete given basis).

    A basis whose kind keeps its reconstruction error (a given basis) keeps it through every
    point: ``x <- x C_abl C^+ + (x - x C C^+)`` (docs/method.md 1.14).
    """
    if basis not in NODE_BASES:
        raise ConfigError(f"unknown ablation basis {basis!r}; use one of {', '.join(NODE_BASES)}")
    _check_model(ev.model, graph)
    ev.use_skip_positions(skip_positions_of(graph.config))  # neither ablated nor scored
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
        if c is None:
            raise ConfigError(f"node layer {name!r} has a {b.kind} basis, which has no PCA "
                              f"projection W; ablate it in its own basis (basis='lib')")
        error = _error(b)  # only a given basis keeps one, and it has only its own C to ablate in
        orig, rib = c.shape
        width = max(orig, rib)
        index = graph.node_layers.index(name)
        scores: dict[int, float] = {}
        first = None
        points = schedule.n_ablated(width)
        meter = Meter(len(points), f"node ablation of {name}", "points")
        for n_ablated in reversed(points):
            m = max(n_ablated - (width - rib), 0)
            score = ev.base() if m == 0 else ev.node_score(index, _rotation(c, c_pinv, m, error))
            scores[width - n_ablated] = score
            meter.tick(f"{width - n_ablated} remaining: {score:.6g}")
            first = score if first is None else first
            threshold = schedule.early_stopping_threshold
            if threshold is not None and abs(score - first) > threshold:
                log.info("%s: stopping early at %d remaining (score %.4g)", name,
                         orig - n_ablated, score)
                break
        results[name] = dict(sorted(scores.items(), reverse=True))
        log.info("node ablation of %s: %d points", name, len(scores))
    return results


def edge_scorer(ev: Evaluator, graph: Graph, a: str, b: str):
    """The score of the model with a boolean ``(out, in)`` mask on the edges ``a -> b`` (the
    graph's edge matrix's shape), as :func:`edge_ablation` evaluates it: where a basis's kind
    keeps its reconstruction error, the error's edges are kept whatever the mask
    (docs/method.md 1.14). Its ``release()`` frees the memory it holds once it is no longer
    needed."""
    b_in, b_out = graph.basis(a), graph.basis(b)
    err_in = _error(b_in)
    err_out = None if b_out is None else _error(b_out)
    forward = EdgeForward(ev, graph.node_layers.index(a),
                          *_with_error(b_in.C, b_in.C_pinv, err_in),
                          None if b_out is None else _with_error(b_out.C, b_out.C_pinv, err_out))
    extra = ((0, 0 if err_out is None else err_out[0].shape[1]),
             (0, 0 if err_in is None else err_in[0].shape[1]))
    def score(mask) -> float:
        return forward.score(np.pad(np.asarray(mask, bool), extra, constant_values=True))

    score.release = forward.release
    return score


def edge_ablation(ev: Evaluator, graph: Graph, pairs: Sequence[tuple[str, str]],
                  cfg: Bisect) -> dict[str, EdgeResult]:
    """For each consecutive pair, bisect for the fewest edges keeping the score within
    ``cfg.score_target_difference`` of the unablated model (docs/method.md 3.3).

    Uses ``C, C^+`` at both layers (the identity for a basis-less layer such as ``output``). The
    constant input node's edges are kept for free when the graph was built centred. Where a
    basis's kind keeps its reconstruction error (a given basis), the error is an input node
    whose edges are all kept, and the output layer's error keeps its unablated value
    (docs/method.md 1.14). Edges are counted against ``orig_in * orig_out``, or the edge
    matrix's size where an overcomplete basis makes it larger.
    """
    _check_model(ev.model, graph)
    ev.use_skip_positions(skip_positions_of(graph.config))  # neither ablated nor scored
    cfg.validate()
    centred = bool(graph.config.get("center", True))
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
        score = edge_scorer(ev, graph, a, b)
        free_const = kind_of(graph.basis(a)).constant_first(graph.basis(a), centred)
        n = max(graph.orig_dims[a] * graph.orig_dims[b], edges.size)
        scores: dict[int, float] = {}
        meter = Meter(cfg.max_steps(n), f"edge ablation {a}->{b}", "bisection steps (about)")

        def evaluate(n_ablated: int) -> float:
            keep = n - n_ablated
            mask = edge_mask(edges, keep, free_const)
            scores[keep] = base if mask.all() else score(mask)
            meter.tick(f"{keep} edges kept: {scores[keep]:.6g}")
            return scores[keep]

        try:
            lower, _ = bisect(evaluate, good, n, cfg)
        finally:
            score.release()
        required = n - lower
        out[a] = EdgeResult(dict(sorted(scores.items(), reverse=True)), required,
                            edge_mask(edges, required, free_const))
        log.info("edge ablation %s->%s: %d of %d edges needed (%d evaluations)", a, b, required, n,
                 len(scores))
    return out


def node_config(common: dict, layers: Sequence[str], schedule: Schedule,
                basis: str) -> dict:
    """The configuration of a node ablation in ``basis`` of ``layers``: ``common`` plus the
    ablation type (the basis), the layers and the schedule."""
    return dict(common, ablation_type=basis, node_layers=list(layers),
                schedule=dataclasses.asdict(schedule))


def edge_config(common: dict, pairs: Sequence[tuple[str, str]], bisect: Bisect) -> dict:
    """The configuration of an edge ablation of ``pairs``: ``common`` plus the ablation type,
    the input layers, the pairs and the bisection."""
    return dict(common, ablation_type="edge", node_layers=[a for a, _ in pairs],
                pairs=[f"{a}->{b}" for a, b in pairs],
                schedule={"schedule_type": "bisect", **dataclasses.asdict(bisect)})


def node_experiment(ev: Evaluator, graph: Graph, layers: Sequence[str],
                    schedule: Schedule, basis: str, common: dict) -> dict:
    """Node ablation of each of ``layers`` (one at a time) as a timed result record."""
    t0, c0 = time.perf_counter(), time.process_time()
    results = node_ablation(ev, graph, layers, schedule, basis)
    return node_record(results, ev.base(), node_config(common, layers, schedule, basis),
                                time.perf_counter() - t0, time.process_time() - c0)


def edge_experiment(ev: Evaluator, graph: Graph, pairs: Sequence[tuple[str, str]],
                    bisect: Bisect, common: dict) -> dict:
    """Edge ablation (bisection for the edges required) of each of ``pairs`` as a timed result
    record."""
    t0, c0 = time.perf_counter(), time.process_time()
    results = edge_ablation(ev, graph, pairs, bisect)
    return edge_record(results, ev.base(), edge_config(common, pairs, bisect),
                                time.perf_counter() - t0, time.process_time() - c0)
