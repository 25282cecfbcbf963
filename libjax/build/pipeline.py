"""The LIB build pipeline: statistics -> bases (last node layer first) -> edges (SPEC 1.1).

Each phase streams over the data in batches with a jitted, float64-accumulating step; every
finished stage is stored at once (:mod:`libjax.storage.store`), so an interrupted build resumes where it
stopped and gives exactly the same graph (stochastic sources are keyed by seed, stage and batch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from libjax import basis as basis_lib
from libjax.forms.attention import plan as attention_form
from libjax.forms import dispatch as closed_forms
from libjax.method import integration
from libjax.method import stats
from libjax.storage import store
from libjax.method.vjp_edges import squared_edges_sum
from libjax.errors import BasisError, ConfigError, NumericalError
from libjax.storage.graph import (STATS_STAGE, Graph, basis_from_tree, basis_stage, basis_to_tree,
                          edge_stage, summary)
from libjax.method.vjp import m_prime_sum
from libjax.method.probes import ProbeSet
from libjax.runtime.progress import track
from libjax.runtime.sharding import Placement

log = logging.getLogger("libjax")

BASES = ("lib", "pca", "svd", "neuron")
LN_VAR_PREFIXES = ("ln1_out", "ln2_out")


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """What to build (defaults: the paper's LIB configuration, SPEC 5).

    Attributes:
      basis: ``lib`` (the jacobian formula), ``pca`` (alias ``svd``) or ``neuron``.
      integration, n_intervals: quadrature rule for the basis and edges (SPEC 2.5); either may be
        a dict keyed by node layer or module prefix.
      n_stochastic_sources_basis_pos, n_stochastic_sources_basis_hidden: Rademacher sources
        replacing the exact sum over output positions / hidden dims in ``M'`` (None = exact).
      n_stochastic_sources_edges: the same for output positions in the edges.
      center: centre the Gram matrices (constant direction first).
      isolate_ln_var: keep the LayerNorm variance of ``ln1_out``/``ln2_out`` as its own direction.
      truncation_threshold: drop directions with eigenvalue below this.
      rotate_final_node_layer: give the last node layer a PCA basis.
      compute_edges: compute the edge matrices.
      batch_size, gram_batch_size, edge_batch_size: samples per step of each phase.
      memory_budget_gb: bounds the probes processed at once in ``M'`` and edges.
      seed: seed of the stochastic sources.
      fast_paths: use the structure-aware paths where the model allows them: closed forms for
        attention, MLP and LayerNorm sections, one probe per output direction for positionwise
        sections. They compute the same numbers as the general VJP path (stochastic estimates
        with the same signs), except that positionwise sections without a form and LayerNorm
        forms give the exact edges where edge sources were asked for (at no extra cost). False
        reproduces the reference's computation everywhere.
    """

    basis: str = "lib"
    integration: Any = "gradient"
    n_intervals: Any = 0
    n_stochastic_sources_basis_pos: Optional[int] = None
    n_stochastic_sources_basis_hidden: Optional[int] = None
    n_stochastic_sources_edges: Optional[int] = None
    center: bool = True
    isolate_ln_var: bool = True
    truncation_threshold: float = 1e-15
    rotate_final_node_layer: bool = False
    compute_edges: bool = True
    batch_size: int = 4096
    gram_batch_size: Optional[int] = None
    edge_batch_size: Optional[int] = None
    memory_budget_gb: float = 0.25
    seed: int = 0
    fast_paths: bool = True

    def validate(self, model) -> None:
        """Reject option combinations the method does not define (SPEC 5 validation)."""
        if self.basis not in BASES:
            raise ConfigError(f"unknown basis {self.basis!r}; choose one of {', '.join(BASES)}")
        if self.basis == "neuron" and self.center:
            raise ConfigError("the neuron basis cannot be centred; pass --nocenter with "
                              "--basis=neuron")
        stochastic_basis = (self.n_stochastic_sources_basis_pos,
                            self.n_stochastic_sources_basis_hidden)
        if any(s is not None for s in stochastic_basis) and self.basis != "lib":
            raise ConfigError("stochastic basis sources only apply to the lib (jacobian) basis")
        sources = stochastic_basis + (self.n_stochastic_sources_edges,)
        for s in sources:
            if s is not None and s < 1:
                raise ConfigError(f"a number of stochastic sources must be >= 1, got {s}")
        if (self.n_stochastic_sources_basis_pos or self.n_stochastic_sources_edges) and \
                not model.positional:
            raise ConfigError(f"stochastic position sources need activations with a sequence "
                              f"axis; model {model.name!r} has none")
        for size in (self.batch_size, self.gram_batch_size, self.edge_batch_size):
            if size is not None and size < 1:
                raise ConfigError(f"batch sizes must be >= 1, got {size}")
        if not 0 <= self.truncation_threshold < math.inf:
            raise ConfigError(f"truncation_threshold must be a finite number >= 0, got "
                              f"{self.truncation_threshold}")
        if not 0 < self.memory_budget_gb < math.inf:
            raise ConfigError(f"memory_budget_gb must be a finite number > 0, got "
                              f"{self.memory_budget_gb}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"the seed must be in [0, 2**63), got {self.seed}")
        if self.rotate_final_node_layer and self.center and model.node_layers[-1] == "output":
            raise ConfigError("a centred PCA rotation of the 'output' node layer is undefined "
                              "(it has no constant coordinate); end the node layers before "
                              "'output' or do not rotate the final layer")
        for name in model.node_layers[:-1]:
            points(self, name)  # raises on a bad rule or interval count

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def points(cfg: BuildConfig, node_layer: str):
    try:
        rule = integration.for_layer(cfg.integration, node_layer)
        n = integration.for_layer(cfg.n_intervals, node_layer)
        return integration.points(rule, int(n))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def isolates_var(cfg: BuildConfig, node_layer: str) -> bool:
    return cfg.isolate_ln_var and node_layer.split(".")[0] in LN_VAR_PREFIXES


# --- batching -------------------------------------------------------------------------------------

def batch_size_for(n: int, batch_size: int, multiple: int) -> int:
    """Samples per step: at most ``batch_size`` (and no more than ``n``), rounded up to a
    multiple of the number of devices."""
    return -(-min(batch_size, n) // multiple) * multiple


def batches(inputs: np.ndarray, size: int):
    """Yield ``(index, batch, weights)`` in order; the last batch is padded (weight 0) so every
    step has the same shape and compiles once."""
    for i, start in enumerate(range(0, len(inputs), size)):
        chunk = np.asarray(inputs[start:start + size])
        weights = np.ones(size)
        if len(chunk) < size:
            weights[len(chunk):] = 0.0
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])
        yield i, chunk, weights


def probe_chunk(probes: ProbeSet, batch: int, in_elems: int, n_alphas: int,
                budget_gb: float) -> int:
    """Probes per VJP batch so that gradients, cotangents and the backward pass fit the budget."""
    per_probe = 8 * batch * n_alphas * (in_elems + probes.n_pos * probes.dim) * 4
    return int(max(1, min(probes.n_probes, budget_gb * 2**30 // per_probe)))


# --- jitted steps ---------------------------------------------------------------------------------

def _fold_key(seed: int, stage: str, batch_index: int):
    digest = int(hashlib.sha256(stage.encode()).hexdigest()[:8], 16)
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), digest), batch_index)


def _stats_step(model, layers: Sequence[int]):
    def step(acc, key, params, inputs, weights):
        moments, finite = acc
        acts = jax.vmap(lambda x: model.all_acts(params, x))(inputs)
        moments = [stats.merge(m, stats.batch_moments(acts[i], weights))
                   for m, i in zip(moments, layers)]
        finite = finite & jnp.stack([jnp.all(jnp.isfinite(acts[i])) for i in layers])
        return moments, finite
    return jax.jit(step, donate_argnums=0)


def _layer_inputs(model, index: int, params, inputs):
    return jax.vmap(lambda x: model.run_to(params, x, index))(inputs)


def _m_prime_step(model, index: int, probes: ProbeSet, alphas, weights, chunk: int):
    section = model.sections[index]

    def step(acc, key, params, c_next, inputs, sample_weights):
        xs = _layer_inputs(model, index, params, inputs)
        fn = (lambda x: section(params, x)) if c_next is None else \
            (lambda x: section(params, x) @ c_next.astype(x.dtype))
        signs = probes.draw_signs(key, xs.shape[0])
        return acc + m_prime_sum(fn, xs, sample_weights, probes, signs, alphas, weights, chunk)
    return jax.jit(step, donate_argnums=0)


def _form_moments_step(model, index: int, alphas, weights):
    form = model.forms[index]

    def step(acc, key, params, inputs, sample_weights):
        xs = _layer_inputs(model, index, params, inputs)
        new = closed_forms.moments(form, params, xs, sample_weights, alphas, weights)
        return jax.tree.map(jnp.add, acc, new)
    return jax.jit(step, donate_argnums=0)


def _edges_step(model, index: int, probes: ProbeSet, alphas, weights, chunk: int):
    section = model.sections[index]

    def step(acc, key, params, c_in, c_in_pinv, c_next, inputs, sample_weights):
        xs = _layer_inputs(model, index, params, inputs)
        dtype = xs.dtype
        x_hat = xs @ c_in.astype(dtype)

        def fn(y):
            out = section(params, y @ c_in_pinv.astype(dtype))
            return out if c_next is None else out @ c_next.astype(dtype)

        signs = probes.draw_signs(key, xs.shape[0])
        return acc + squared_edges_sum(fn, x_hat, sample_weights, probes, signs, alphas, weights,
                                       chunk)
    return jax.jit(step, donate_argnums=0)


def _form_edges_step(model, index: int, probes: Optional[ProbeSet], alphas, weights, chunk: int):
    """Closed-form edges; with position-source ``probes`` the stochastic estimate, from the signs
    the general path draws with the same key."""
    form = model.forms[index]

    def step(acc, key, params, c_in, c_in_pinv, c_next, inputs, sample_weights):
        xs = _layer_inputs(model, index, params, inputs)
        dtype = xs.dtype
        cast = lambda a: None if a is None else a.astype(dtype)  # noqa: E731
        rho = None if probes is None else \
            cast(probes.position_weights(probes.draw_signs(key, xs.shape[0])))
        return acc + closed_forms.edges(form, params, xs @ cast(c_in), sample_weights,
                                        cast(c_in_pinv), cast(c_next), alphas, weights, chunk,
                                        rho)
    return jax.jit(step, donate_argnums=0)


def _attention_m_prime_step(model, index: int, probes: ProbeSet, alphas, weights, chunks):
    form = model.forms[index]

    def step(acc, key, params, c_next, inputs, sample_weights):
        xs = _layer_inputs(model, index, params, inputs)
        rho = probes.position_weights(probes.draw_signs(key, xs.shape[0])).astype(xs.dtype)
        c = None if c_next is None else c_next.astype(xs.dtype)
        return acc + attention_form.m_prime_sum(form, params, xs, sample_weights, rho, c, alphas,
                                                weights, *chunks)
    return jax.jit(step, donate_argnums=0)


def _attention_edges_step(model, index: int, probes: ProbeSet, alphas, weights, chunks):
    form = model.forms[index]

    def step(acc, key, params, c_in, c_in_pinv, c_next, inputs, sample_weights):
        xs = _layer_inputs(model, index, params, inputs)
        dtype = xs.dtype
        rho = probes.position_weights(probes.draw_signs(key, xs.shape[0])).astype(dtype)
        c = None if c_next is None else c_next.astype(dtype)
        return acc + attention_form.squared_edges_sum(
            form, params, xs @ c_in.astype(dtype), sample_weights, rho, c_in_pinv.astype(dtype),
            c, alphas, weights, *chunks)
    return jax.jit(step, donate_argnums=0)


def _accumulate(step, acc, inputs, batch_size: int, what: str, seed: int, stage: str,
                placement: Placement, *args):
    """Fold ``acc = step(acc, key, *args, batch, weights)`` over the batches of ``inputs`` and
    return it on the host. Batches are split over the devices, everything else replicated; each
    batch gets its own key, derived from the seed, the stage and the batch index."""
    size = batch_size_for(len(inputs), batch_size, placement.size)
    acc, args = placement.replicate(acc), placement.replicate(args)
    total = -(-len(inputs) // size)
    for i, batch, w in track(batches(inputs, size), total, what):
        acc = step(acc, _fold_key(seed, stage, i), *args, placement.batch(batch),
                   placement.batch(w))
        jax.block_until_ready(acc)  # progress and ETA count finished batches, not dispatched ones
    return placement.host(acc)


# --- phases ---------------------------------------------------------------------------------------

def _overflow_hint(model) -> str:
    floats = [a.dtype for a in jax.tree.leaves(model.params)
              if jnp.issubdtype(a.dtype, jnp.floating)]
    return "" if all(d == jnp.float64 for d in floats) else \
        " (a float32 model may overflow: try --dtype=float64)"


def _check_finite(value, what: str, model) -> None:
    if not np.all(np.isfinite(np.asarray(value))):
        raise NumericalError(f"{what} contains NaN or inf; check the model weights and "
                             f"inputs{_overflow_hint(model)}")


def compute_stats(model, inputs, cfg: BuildConfig, layers: Sequence[int],
                  placement: Placement | None = None):
    """Means and Gram matrices of the node layers ``layers`` in one pass over ``inputs``."""
    init = ([stats.Moments.zeros(model.dims[i]) for i in layers], np.ones(len(layers), bool))
    acc, finite = _accumulate(_stats_step(model, layers), init, inputs,
                              cfg.gram_batch_size or cfg.batch_size, "means and Grams", cfg.seed,
                              STATS_STAGE, placement or Placement(), model.params)
    if not np.all(finite):
        bad = [model.node_layers[i] for i, ok in zip(layers, finite) if not ok]
        raise NumericalError(f"NaN or inf in the activations of node layer(s) {bad} while "
                             "computing means and Grams; check the model weights and the "
                             f"inputs{_overflow_hint(model)}")
    means, grams = [], []
    for m, i in zip(acc, layers):
        if model.has_bias_coordinate[i]:
            ones = m.mean[-1]
            if abs(ones - 1.0) > 1e-9 or m.scatter[-1, -1] > 1e-9 * m.count:
                raise NumericalError(
                    f"the last coordinate of node layer {model.node_layers[i]!r} is not the "
                    f"constant 1 of the folded biases (mean {ones}); the model is not bias-folded")
        mean, gram = stats.mean_and_gram(m, cfg.center, model.has_bias_coordinate[i])
        _check_finite(gram, f"the Gram matrix of {model.node_layers[i]!r}", model)
        means.append(np.asarray(mean))
        grams.append(np.asarray(gram))
    return means, grams


def _probe_set(model, index: int, out_dim: int, cfg: BuildConfig, pos_sources, hidden_sources):
    """Probes over section ``index``'s output; positionwise sections need no position sum."""
    positionwise = cfg.fast_paths and model.positionwise[index]
    return ProbeSet(model.positions[index + 1], out_dim, None if positionwise else pos_sources,
                    hidden_sources, positionwise=positionwise)


def _closed_form(model, index: int, cfg: BuildConfig, hidden_sources):
    """The section's declared closed form, where it applies: positionwise forms on positionwise
    sections; the attention form with exact hidden dims (any position probes)."""
    form = model.forms[index] if cfg.fast_paths else None
    if form is None:
        return None
    if form.kind == "attention":
        return form if hidden_sources is None else None
    return form if model.positionwise[index] else None


def _attention_chunks(model, index: int, form, probes: ProbeSet, out_dim: int, in_dim: int,
                      per_device: int, budget_gb: float, n_alphas: int) -> tuple:
    """``(method, positions, samples)`` of the attention closed form
    (:func:`attention_form.plan`)."""
    n_weightings = probes.n_pos if probes.pos_sources is None else probes.pos_sources
    return attention_form.plan(form, model.params, model.positions[index], n_weightings, out_dim,
                               in_dim, model.dims[index], n_alphas, per_device, budget_gb)


def _out_dim(model, index: int, c_next) -> int:
    return model.dims[index + 1] if c_next is None else c_next.shape[1]


def compute_m_prime(model, index: int, inputs, cfg: BuildConfig, c_next,
                    placement: Placement | None = None):
    """``M'`` (SPEC 1.7) of node layer ``index`` given the next layer's ``C`` (or None)."""
    placement = placement or Placement()
    name = model.node_layers[index]
    alphas, weights = points(cfg, name)
    size = cfg.batch_size
    per_device = batch_size_for(len(inputs), size, placement.size) // placement.size
    dim = model.dims[index]
    form = _closed_form(model, index, cfg, cfg.n_stochastic_sources_basis_hidden)
    if form is not None and form.kind == "attention":
        out_dim = _out_dim(model, index, c_next)
        probes = ProbeSet(model.positions[index + 1], out_dim, cfg.n_stochastic_sources_basis_pos)
        chunks = _attention_chunks(model, index, form, probes, out_dim, 0, per_device,
                                   cfg.memory_budget_gb, len(alphas))
        log.info("M' %s: closed form (attention section, %s)", name, chunks[0])
        step = _attention_m_prime_step(model, index, probes, alphas, weights, chunks)
        acc = _accumulate(step, np.zeros((dim, dim)), inputs, size, f"M' {name}", cfg.seed,
                          basis_stage(name), placement, model.params, c_next)
        divisor = probes.divisor
    elif form is not None:
        log.info("M' %s: closed form (%s section)", name, form.kind)
        sums = None
        if closed_forms.needs_data(form):
            sums = _accumulate(_form_moments_step(model, index, alphas, weights),
                               closed_forms.zero_moments(form, model.params, dim), inputs, size,
                               f"M' {name}", cfg.seed, basis_stage(name), placement,
                               model.params)
        c = np.eye(model.dims[index + 1]) if c_next is None else np.asarray(c_next, np.float64)
        acc = closed_forms.m_prime(form, model.params, sums, len(inputs) * model.positions[index],
                                   c @ c.T)
        divisor = 1
    else:
        probes = _probe_set(model, index, _out_dim(model, index, c_next), cfg,
                            cfg.n_stochastic_sources_basis_pos,
                            cfg.n_stochastic_sources_basis_hidden)
        chunk = probe_chunk(probes, per_device, model.positions[index] * dim, len(alphas),
                            cfg.memory_budget_gb)
        step = _m_prime_step(model, index, probes, alphas, weights, chunk)
        acc = _accumulate(step, np.zeros((dim, dim)), inputs, size, f"M' {name}", cfg.seed,
                          basis_stage(name), placement, model.params, c_next)
        divisor = probes.divisor
    m_prime = np.asarray(acc) / (len(inputs) * model.positions[index] * divisor)
    _check_finite(m_prime, f"M' of node layer {name!r}", model)
    return m_prime


def compute_edges(model, index: int, inputs, cfg: BuildConfig, b_in: basis_lib.Basis, c_next,
                  placement: Placement | None = None):
    """Squared edges (SPEC 2.2-2.3) from node layer ``index`` to the next, ``(out, in)``.

    With ``cfg.n_stochastic_sources_edges`` the stochastic estimate, except where a fast path is
    exact and cheap (positionwise sections without a form, LayerNorm forms): MLP forms and
    attention compute the estimate in closed form with the general path's signs (an MLP's exact
    edges cost ``P_out`` times as much), so ``fast_paths`` does not change the numbers there.
    """
    placement = placement or Placement()
    a, b = model.node_layers[index], model.node_layers[index + 1]
    out_dim = _out_dim(model, index, c_next)
    alphas, weights = points(cfg, a)
    size = cfg.edge_batch_size or cfg.batch_size
    per_device = batch_size_for(len(inputs), size, placement.size) // placement.size
    form = _closed_form(model, index, cfg, None)
    if form is not None and form.kind == "attention":
        probes = ProbeSet(model.positions[index + 1], out_dim, cfg.n_stochastic_sources_edges)
        chunks = _attention_chunks(model, index, form, probes, out_dim, b_in.dim, per_device,
                                   cfg.memory_budget_gb, len(alphas))
        log.info("edges %s->%s: closed form (attention section, %s)", a, b, chunks[0])
        step = _attention_edges_step(model, index, probes, alphas, weights, chunks)
        divisor = probes.divisor
    elif form is not None:
        sources = cfg.n_stochastic_sources_edges if closed_forms.takes_edge_sources(form) else None
        log.info("edges %s->%s: closed form (%s section, %s)", a, b, form.kind,
                 "exact" if sources is None else f"stochastic, R={sources}")
        probes = None if sources is None else ProbeSet(model.positions[index + 1], out_dim, sources)
        chunk = closed_forms.edge_chunk(form, model.params, b_in.dim, out_dim,
                                        model.positions[index], model.dims[index], sources,
                                        cfg.memory_budget_gb)
        step = _form_edges_step(model, index, probes, alphas, weights, chunk)
        divisor = 1 if probes is None else probes.divisor
    else:
        probes = _probe_set(model, index, out_dim, cfg, cfg.n_stochastic_sources_edges, None)
        chunk = probe_chunk(probes, per_device, model.positions[index] * b_in.dim, len(alphas),
                            cfg.memory_budget_gb)
        step, divisor = _edges_step(model, index, probes, alphas, weights, chunk), probes.divisor
    acc = _accumulate(step, np.zeros((out_dim, b_in.dim)), inputs, size, f"edges {a}->{b}",
                      cfg.seed, edge_stage(a, b), placement, model.params, b_in.C, b_in.C_pinv,
                      c_next)
    edges = np.asarray(acc) / (len(inputs) * model.positions[index] * divisor)
    _check_finite(edges, f"the edges {a}->{b}", model)
    return edges


def _stat_layers(model, cfg: BuildConfig) -> list[int]:
    """Node layers whose mean and Gram matrix the build needs."""
    last = len(model.node_layers) - 1
    needs_final = cfg.rotate_final_node_layer or model.node_layers[last] != "output"
    return list(range(last)) + ([last] if needs_final else [])


def _build_info(model, cfg: BuildConfig, inputs, gram_inputs, model_id: str) -> dict:
    digest = lambda a: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]  # noqa
    stat_layers = _stat_layers(model, cfg)
    return {
        "family": model.name, "model": model_id, "node_layers": list(model.node_layers),
        "orig_dims": list(model.dims), "stat_layers": [model.node_layers[i] for i in stat_layers],
        "config": cfg.to_json(), "n_samples": len(inputs), "data_sha256": digest(inputs),
        "n_gram_samples": len(gram_inputs), "gram_data_sha256": digest(gram_inputs),
        "params_sha256": _params_digest(model.params),
    }


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
          placement: Placement | None = None) -> Graph:
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
    """
    cfg.validate(model)
    gram_inputs = inputs if gram_inputs is None else gram_inputs
    if len(inputs) == 0 or len(gram_inputs) == 0:
        raise ConfigError("the dataset is empty; give at least one sample")
    info = _build_info(model, cfg, inputs, gram_inputs, model_id)
    placement = placement or Placement()
    st = store.Store(out_dir, info, overwrite, writer=placement.is_writer)
    timings = {}
    layers = model.node_layers
    last = len(layers) - 1

    t0 = time.perf_counter()
    stat_layers = _stat_layers(model, cfg)
    if st.has(STATS_STAGE):
        saved = st.get(STATS_STAGE)
        means, grams = list(saved["means"]), list(saved["grams"])
    else:
        means, grams = compute_stats(model, gram_inputs, cfg, stat_layers, placement)
        st.put(STATS_STAGE, {"means": means, "grams": grams})
    stat = {i: (m, g) for i, m, g in zip(stat_layers, means, grams)}
    timings["stats"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    bases: dict[int, basis_lib.Basis] = {}
    kind = "pca" if cfg.basis == "svd" else cfg.basis
    for i in range(last, -1, -1):
        name = layers[i]
        if i == last and not cfg.rotate_final_node_layer:
            continue
        if st.has(basis_stage(name)):
            bases[i] = basis_from_tree(st.get(basis_stage(name)))
            continue
        log.info("basis of %s", name)
        mean, gram = stat.get(i, (None, None))
        m_prime = None
        if i != last and kind == "lib":
            c_next = bases[i + 1].C if i + 1 in bases else None
            m_prime = compute_m_prime(model, i, inputs, cfg, c_next, placement)
        try:
            if i == last or kind == "pca":
                b = basis_lib.pca_basis(gram, mean, cfg.center, isolates_var(cfg, name),
                                        cfg.truncation_threshold)
            elif kind == "neuron":
                b = basis_lib.neuron_basis(model.dims[i])
            else:
                b = basis_lib.lib_basis(gram, mean, m_prime, cfg.center, isolates_var(cfg, name),
                                        cfg.truncation_threshold)
        except (BasisError, NumericalError) as err:
            raise type(err)(f"node layer {name!r}: {err}") from None
        st.put(basis_stage(name), basis_to_tree(b))
        bases[i] = b
    timings["bases"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    edges = {}
    if cfg.compute_edges:
        for i in range(last):
            pair = (layers[i], layers[i + 1])
            stage = edge_stage(*pair)
            if st.has(stage):
                edges[pair] = np.asarray(st.get(stage)["E"])
                continue
            c_next = bases[i + 1].C if i + 1 in bases else None
            edges[pair] = compute_edges(model, i, inputs, cfg, bases[i], c_next, placement)
            st.put(stage, {"E": edges[pair]})
    timings["edges"] = time.perf_counter() - t0

    g = Graph(node_layers=layers, bases={layers[i]: b for i, b in sorted(bases.items())},
              edges=edges, means={layers[i]: stat[i][0] for i in stat},
              grams={layers[i]: stat[i][1] for i in stat},
              orig_dims=dict(zip(layers, model.dims)), config=cfg.to_json(), timings=timings)
    st.finish(summary(g))
    log.info("build finished: %s", ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    return g
