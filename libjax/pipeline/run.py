"""The LIB build pipeline: statistics -> bases (last node layer first) -> edges (docs/method.md
1.1).

Each phase streams over the data with a jitted step (:mod:`libjax.pipeline.steps`) on the path that
:func:`~libjax.pipeline.computations.choose_path` chooses, accumulating as the precision policy says
(:mod:`libjax.runtime.precision`); every finished stage is stored at once
(:mod:`libjax.storage.store`), so an interrupted build resumes where it stopped and gives exactly
the same graph (stochastic sources are keyed by seed, stage and batch).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from libjax import basis as basis_lib
from libjax import kinds
from libjax.errors import BasisError, ConfigError, NumericalError
from libjax.forms import EDGES, M_PRIME
from libjax.method import stats
from libjax.pipeline.ahead import Ahead
from libjax.pipeline.computations import choose_path, section_task
from libjax.pipeline.config import BuildConfig
from libjax.pipeline.held_layers import HeldLayers
from libjax.pipeline.progress_saves import Saves, SaveSchedule
from libjax.pipeline.steps import accumulate, accumulation_step, compile_ahead, stats_step
from libjax.runtime import precision, preemption
from libjax.runtime.batching import batch_size_for
from libjax.runtime.sharding import Placement
from libjax.storage import store
from libjax.storage.graph import (
    STATS_STAGE,
    Graph,
    basis_from_tree,
    basis_stage,
    basis_to_tree,
    edge_stage,
    summary,
)

log = logging.getLogger("libjax")


def _overflow_hint(model) -> str:
    floats = [a.dtype for a in jax.tree.leaves(model.params)
              if jnp.issubdtype(a.dtype, jnp.floating)]
    return "" if all(d == jnp.float64 for d in floats) else \
        " (a float32 model may overflow: try --dtype=float64)"


def _check_finite(value, what: str, model) -> None:
    if not np.all(np.isfinite(np.asarray(value))):
        raise NumericalError(f"{what} contains NaN or inf; check the model weights and "
                             f"inputs{_overflow_hint(model)}")


def _check_layout(model) -> None:
    """The basis algebra takes the constant coordinate last and an isolated variance first."""
    for layer in model.layers:
        if layer.constant not in (None, layer.width - 1) or layer.variance not in (None, 0):
            raise ConfigError(
                f"node layer {layer.name!r} declares its constant coordinate at {layer.constant} "
                f"and its variance at {layer.variance}; libjax needs the constant last "
                f"({layer.width - 1}) and the variance first (0)")


def compute_stats(model, inputs, cfg: BuildConfig, layers: Sequence[int],
                  placement: Placement | None = None, saves: Saves | None = None):
    """Means and Gram matrices of the node layers ``layers`` in one pass over ``inputs``
    (resumable with ``saves``)."""
    init = ([stats.Moments.zeros(model.layers[i].width) for i in layers],
            np.ones(len(layers), bool))
    with precision.scope(cfg.precision):
        step = stats_step(model, layers, cfg.precision, cfg.skip_positions)
        acc, finite = accumulate(step, init, inputs,
                                 cfg.gram_batch_size or cfg.batch_size, "means and Grams",
                                 cfg.seed, STATS_STAGE, placement or Placement(), model.params,
                                 saves=saves)
    if not np.all(finite):
        bad = [model.node_layers[i] for i, ok in zip(layers, finite) if not ok]
        raise NumericalError(f"NaN or inf in the activations of node layer(s) {bad} while "
                             "computing means and Grams; check the model weights and the "
                             f"inputs{_overflow_hint(model)}")
    means, grams = [], []
    for m, i in zip(acc, layers):
        has_constant = model.layers[i].constant is not None
        if has_constant:
            ones = m.mean[-1]
            if abs(ones - 1.0) > 1e-9 or m.scatter[-1, -1] > 1e-9 * m.count:
                raise NumericalError(
                    f"the last coordinate of node layer {model.node_layers[i]!r} is not the "
                    f"constant 1 of the folded biases (mean {ones}); the model is not bias-folded")
        mean, gram = stats.mean_and_gram(m, cfg.center, has_constant)
        _check_finite(gram, f"the Gram matrix of {model.node_layers[i]!r}", model)
        means.append(np.asarray(mean))
        grams.append(np.asarray(gram))
    return means, grams


def _section_job(model, index: int, kind: str, n_samples: int, cfg: BuildConfig, c_in, c_next,
                 placement: Placement):
    """The batch size, task, path and plan of ``M'`` or the edges across section ``index``."""
    size = cfg.batch_size if kind == M_PRIME else cfg.edge_batch_size or cfg.batch_size
    per_device = batch_size_for(n_samples, size, placement.size) // placement.size
    out_dim = model.layers[index + 1].width if c_next is None else c_next.shape[1]
    in_dim = 0 if c_in is None else c_in.shape[1]
    task = section_task(model, index, kind, cfg, n_samples, out_dim, in_dim, per_device)
    path = choose_path(model.sections[index], task, cfg.fast_paths)
    return size, task, path, path.plan(task, model.params)


def _section_sum(model, index: int, kind: str, inputs, cfg: BuildConfig, c_in, c_in_pinv, c_next,
                 placement: Placement, saves: Saves | None, ahead: Ahead | None = None):
    """``M'`` or the edges across section ``index``, normalised (docs/method.md 1.7, 2.2); the
    step's program may be compiling in ``ahead`` (key ``(kind, input node layer)``)."""
    size, task, path, plan = _section_job(model, index, kind, len(inputs), cfg, c_in, c_next,
                                          placement)
    a, b = model.node_layers[index], model.node_layers[index + 1]
    what, stage = ((f"M' {a}", basis_stage(a)) if kind == M_PRIME
                   else (f"edges {a}->{b}", edge_stage(a, b)))
    log.info("%s: %s", what, path.describe(task, plan))
    sums = None
    if path.needs_data(task):
        step = accumulation_step(model, index, path, task, plan, cfg.precision)
        if ahead is not None:
            ahead.wait((kind, a))
        with precision.scope(cfg.precision):
            sums = accumulate(step, path.zero(task, model.params), inputs, size, what, cfg.seed,
                              stage, placement, model.params, c_in, c_in_pinv, c_next,
                              saves=saves)
    result = np.asarray(path.finish(task, model.params, sums, c_next)) / \
        (task.rows * path.divisor(task))
    _check_finite(result, f"M' of node layer {a!r}" if kind == M_PRIME else f"the edges {a}->{b}",
                  model)
    return result


def _compile_edges_ahead(model, index: int, inputs, cfg: BuildConfig, b_in: basis_lib.Basis,
                         c_next, placement: Placement, ahead: Ahead) -> None:
    """Start compiling the edge step across section ``index`` in ``ahead``'s worker."""
    size, task, path, plan = _section_job(model, index, EDGES, len(inputs), cfg, b_in.C, c_next,
                                          placement)
    if not path.needs_data(task):
        return
    step = accumulation_step(model, index, path, task, plan, cfg.precision)
    args = (model.params, b_in.C, b_in.C_pinv, c_next)

    def compile_step():
        with precision.scope(cfg.precision):
            compile_ahead(step, path.zero(task, model.params), inputs, size, placement, *args)
    ahead.submit((EDGES, model.node_layers[index]), compile_step)


def compute_m_prime(model, index: int, inputs, cfg: BuildConfig, c_next,
                    placement: Placement | None = None, saves: Saves | None = None):
    """``M'`` (docs/method.md 1.7) of node layer ``index`` given the next layer's ``C`` (or
    None)."""
    return _section_sum(model, index, M_PRIME, inputs, cfg, None, None, c_next,
                        placement or Placement(), saves)


def compute_edges(model, index: int, inputs, cfg: BuildConfig, b_in: basis_lib.Basis, c_next,
                  placement: Placement | None = None, saves: Saves | None = None,
                  ahead: Ahead | None = None):
    """Squared edges (docs/method.md 2.2-2.3) from node layer ``index`` to the next,
    ``(out, in)``.

    With ``cfg.n_stochastic_sources_edges`` the stochastic estimate, except where a fast path is
    exact and cheap (positionwise sections without a form, LayerNorm forms): MLP forms and
    attention compute the estimate in closed form with the general path's signs (an MLP's exact
    edges cost ``P_out`` times as much), so ``fast_paths`` does not change the numbers there.
    """
    return _section_sum(model, index, EDGES, inputs, cfg, b_in.C, b_in.C_pinv, c_next,
                        placement or Placement(), saves, ahead)


def _stat_layers(model, cfg: BuildConfig) -> list[int]:
    """Node layers whose mean and Gram matrix the build needs."""
    last = len(model.node_layers) - 1
    needs_final = cfg.rotate_final_node_layer or model.layers[last].constant is not None
    return list(range(last)) + ([last] if needs_final else [])


def _build_info(model, cfg: BuildConfig, inputs, gram_inputs, model_id: str,
                data_record: dict | None) -> dict:
    digest = lambda a: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]  # noqa
    stat_layers = _stat_layers(model, cfg)
    info = {
        "family": model.name, "model": model_id, "node_layers": list(model.node_layers),
        "orig_dims": [layer.width for layer in model.layers],
        "stat_layers": [model.node_layers[i] for i in stat_layers],
        "config": cfg.to_json(), "n_samples": len(inputs), "data_sha256": digest(inputs),
        "n_gram_samples": len(gram_inputs), "gram_data_sha256": digest(gram_inputs),
        "params_sha256": _params_digest(model.params),
    }
    if data_record is not None:  # where the inputs came from (a language model's corpus)
        info["data"] = data_record
    return info


def _params_digest(params) -> str:
    """Fingerprint of the weights, dtype included: a build resumes only on the exact model it
    began with (a checkpoint retrained in place or another ``--dtype`` is a different build)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        a = np.ascontiguousarray(leaf)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def build(model, inputs, cfg: BuildConfig = BuildConfig(), gram_inputs=None,
          out_dir=None, overwrite: bool = False, model_id: str = "",
          placement: Placement | None = None,
          save_schedule: SaveSchedule = SaveSchedule(), data_record: dict | None = None) -> Graph:
    """Build the graph of ``model`` (a :class:`libjax.model.SectionedModel`).

    Args:
      model: the sectioned model; its node layers are the graph's.
      inputs: model inputs ``(N, ...)`` for the bases and edges.
      cfg: what to build.
      gram_inputs: inputs for means and Grams (default ``inputs``).
      out_dir: where stages are stored as they finish; rerunning resumes. None keeps them in
        memory.
      overwrite: replace a different build found in ``out_dir``.
      model_id: identifies the model (e.g. checkpoint path) in ``out_dir``'s build record.
      placement: the devices to use (default: a ``data`` mesh over every device).
      save_schedule: how often a pass saves its progress in ``out_dir`` (a stopped stage then
        resumes from its last save, bit for bit: :mod:`libjax.pipeline.progress_saves`).
      data_record: where ``inputs`` came from, recorded as ``"data"`` in ``build.json`` (so
        ablations and the explorer find the corpus and context again).

    A stop requested while it runs (SIGTERM with :func:`libjax.runtime.preemption.install`)
    saves the running pass's progress and raises :class:`libjax.runtime.preemption.Preempted`.
    """
    return build_many([model], inputs, cfg, gram_inputs, [out_dir], overwrite, model_id,
                      placement, save_schedule=save_schedule, data_record=data_record)[0]


@preemption.deferring
def build_many(models: Sequence, inputs, cfg: BuildConfig = BuildConfig(), gram_inputs=None,
               out_dirs: Sequence | None = None, overwrite: bool = False, model_id: str = "",
               placement: Placement | None = None, stats_model=None,
               save_schedule: SaveSchedule = SaveSchedule(),
               data_record: dict | None = None) -> list[Graph]:
    """Build the graphs of several cuts of one model, each as :func:`build` builds it alone.

    The means and Grams of every graph come from one pass over ``gram_inputs`` through
    ``stats_model``: a cut of the same model whose node layers include every node layer whose
    statistics a graph needs (e.g. the union of consecutive transformer blocks' node layers, where
    block ``L``'s last node layer is block ``L + 1``'s first). Then each graph's bases and edges
    are built in turn. Each graph has its own ``out_dirs`` entry (None: in memory), its own build
    record and stages, so each resumes, and reads back, like a build of that graph alone; the
    statistics pass runs for the node layers of the graphs whose statistics are not stored yet,
    saving its progress with the first of them.

    Args:
      models: one sectioned model per graph.
      stats_model: the cut the statistics are computed on (default, for one graph: that graph's
        model).
      out_dirs: one output directory (or None) per model; None: all in memory.
      The others as in :func:`build`.
    """
    models = list(models)
    if stats_model is None:
        if len(models) != 1:
            raise ValueError("build_many needs a stats_model for more than one graph")
        stats_model = models[0]
    out_dirs = [None] * len(models) if out_dirs is None else list(out_dirs)
    if len(out_dirs) != len(models):
        raise ValueError(f"{len(models)} models but {len(out_dirs)} output directories")
    save_schedule.validate()
    gram_inputs = inputs if gram_inputs is None else gram_inputs
    for model in models:
        cfg.validate(model)
        _check_layout(model)
        _check_stats_model(model, stats_model, cfg)
    precision.require(cfg.precision)
    if len(inputs) == 0 or len(gram_inputs) == 0:
        raise ConfigError("the dataset is empty; give at least one sample")
    placement = placement or Placement()
    stores = []
    try:  # each store locks its directory until the build ends, however it ends
        for model, out_dir in zip(models, out_dirs):
            stores.append(store.Store(out_dir,
                                      _build_info(model, cfg, inputs, gram_inputs, model_id,
                                                  data_record),
                                      overwrite, writer=placement.is_writer))
        return _build_stores(models, stores, inputs, cfg, gram_inputs, placement, stats_model,
                             save_schedule)
    finally:
        for st in stores:
            st.close()


def _build_stores(models, stores, inputs, cfg: BuildConfig, gram_inputs, placement, stats_model,
                  save_schedule: SaveSchedule) -> list[Graph]:
    """The statistics, then each graph's bases and edges, into their opened stores."""
    t0 = time.perf_counter()
    missing = [(m, st) for m, st in zip(models, stores) if not st.has(STATS_STAGE)]
    shared = _shared_stats(stats_model, [m for m, _ in missing], gram_inputs, cfg, placement,
                           Saves(missing[0][1], save_schedule) if missing else None)
    stats_time = time.perf_counter() - t0
    graphs = []
    for model, st in zip(models, stores):
        t0 = time.perf_counter()
        names = [model.node_layers[i] for i in _stat_layers(model, cfg)]
        if st.has(STATS_STAGE):
            saved = st.get(STATS_STAGE)
            means, grams = list(saved["means"]), list(saved["grams"])
        else:
            means, grams = [shared[n][0] for n in names], [shared[n][1] for n in names]
            st.put(STATS_STAGE, {"means": means, "grams": grams})
        stat = {model.node_layers.index(n): (m, g) for n, m, g in zip(names, means, grams)}
        graphs.append(_bases_and_edges(model, st, stat, inputs, cfg, placement,
                                       Saves(st, save_schedule),
                                       stats_time + time.perf_counter() - t0))
    return graphs


def _bases(model, st, stat: dict, cfg: BuildConfig, held: HeldLayers, placement, saves: Saves,
           ahead: Ahead) -> dict[int, basis_lib.Basis]:
    """Node layer index -> basis, from the last node layer back (each ``M'`` needs the next
    layer's ``C``)."""
    layers = model.node_layers
    last = len(layers) - 1
    bases: dict[int, basis_lib.Basis] = {}
    for i in range(last, -1, -1):
        name = layers[i]
        # the final node layer: the kind's own where it gives one, else rotated by PCA or none
        kind = cfg.kind if i < last or cfg.kind.gives_final(name) else kinds.PCA()
        if i == last and not (cfg.rotate_final_node_layer or cfg.kind.gives_final(name)):
            continue
        if st.has(basis_stage(name)):
            bases[i] = basis_from_tree(st.get(basis_stage(name)))
        else:
            log.info("basis of %s", name)
            mean, gram = stat.get(i, (None, None))
            m_prime = None
            if i != last and kind.needs_m_prime:
                started, acts, j = held.start(i)
                m_prime = compute_m_prime(started, i - j, acts, cfg, _c(bases, i + 1), placement,
                                          saves)
            layer = kinds.LayerStats(
                name=name, width=model.layers[i].width, mean=mean, gram=gram, m_prime=m_prime,
                center=cfg.center,
                isolate_var=cfg.isolate_ln_var and model.layers[i].variance is not None,
                threshold=cfg.truncation_threshold, relative=cfg.relative_threshold,
                given_relative=cfg.relative_truncation_threshold or 0.0)
            try:
                b = kind.make(layer)
            except (BasisError, NumericalError) as err:
                raise type(err)(f"node layer {name!r}: {err}") from None
            st.put(basis_stage(name), basis_to_tree(b))
            bases[i] = b
        if i < last and cfg.compute_edges and not st.has(edge_stage(name, layers[i + 1])):
            started, acts, j = held.start(i)
            _compile_edges_ahead(started, i - j, acts, cfg, bases[i], _c(bases, i + 1),
                                 placement, ahead)
    return bases


def _c(bases: dict, i: int):
    """Node layer ``i``'s ``C``; None for a final node layer kept in the neuron basis."""
    return bases[i].C if i in bases else None


def _edges(model, st, cfg: BuildConfig, bases: dict, held: HeldLayers, placement, saves: Saves,
           ahead: Ahead) -> dict:
    """(node layer, next node layer) -> squared edges, for every section. The last section first:
    its bases were built first, so its step compiled first (in ``ahead``), while the first
    section's step, whose basis was built last, compiles meanwhile."""
    layers = model.node_layers
    edges = {}
    if not cfg.compute_edges:
        return edges
    for i in reversed(range(len(layers) - 1)):
        pair = (layers[i], layers[i + 1])
        stage = edge_stage(*pair)
        if st.has(stage):
            edges[pair] = np.asarray(st.get(stage)["E"])
            continue
        started, acts, j = held.start(i)
        edges[pair] = compute_edges(started, i - j, acts, cfg, bases[i], _c(bases, i + 1),
                                    placement, saves, ahead)
        st.put(stage, {"E": edges[pair]})
    return dict(reversed(edges.items()))


def _check_stats_model(model, stats_model, cfg: BuildConfig) -> None:
    """Every node layer whose statistics ``model``'s graph needs is one of ``stats_model``'s,
    with the same record (width, positions, constant and variance coordinates)."""
    records = {layer.name: layer for layer in stats_model.layers}
    for i in _stat_layers(model, cfg):
        layer = model.layers[i]
        if records.get(layer.name) != layer:
            raise ConfigError(f"the statistics model has no node layer {layer.name!r} of width "
                              f"{layer.width} like the graph's; cut it at every graph's node "
                              "layers")


def _shared_stats(stats_model, models, gram_inputs, cfg: BuildConfig, placement,
                  saves: Saves | None) -> dict:
    """Node layer name -> (mean, Gram) of every node layer whose statistics one of ``models``
    needs, from one pass through ``stats_model`` (empty without models), resumable with
    ``saves``."""
    wanted = {model.node_layers[i] for model in models for i in _stat_layers(model, cfg)}
    if not wanted:
        return {}
    layers = [i for i, name in enumerate(stats_model.node_layers) if name in wanted]
    means, grams = compute_stats(stats_model, gram_inputs, cfg, layers, placement, saves)
    return {stats_model.node_layers[i]: (m, g) for i, m, g in zip(layers, means, grams)}


def _bases_and_edges(model, st, stat: dict, inputs, cfg: BuildConfig, placement, saves: Saves,
                     stats_time: float) -> Graph:
    """The bases (last node layer first) and edges of ``model``'s graph from its statistics
    ``stat`` (node layer index -> (mean, Gram)), resuming from ``st``'s finished stages and
    ``saves``; edge steps compile in a worker as soon as their bases exist."""
    timings = {"stats": stats_time}
    layers = model.node_layers
    held = HeldLayers(model, inputs, cfg.batch_size, cfg.precision, placement)
    with Ahead() as ahead:
        t0 = time.perf_counter()
        bases = _bases(model, st, stat, cfg, held, placement, saves, ahead)
        timings["bases"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        edges = _edges(model, st, cfg, bases, held, placement, saves, ahead)
        timings["edges"] = time.perf_counter() - t0

    g = Graph(node_layers=layers, bases={layers[i]: b for i, b in sorted(bases.items())},
              edges=edges, means={layers[i]: stat[i][0] for i in stat},
              grams={layers[i]: stat[i][1] for i in stat},
              orig_dims={layer.name: layer.width for layer in model.layers}, config=cfg.to_json(),
              timings=timings)
    st.finish(summary(g))
    log.info("build finished: %s", ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    return g
