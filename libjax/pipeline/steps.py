"""The jitted steps of a build and the loop that folds them over the data.

Every pass over the data folds a jitted step over fixed-shape padded batches
(:mod:`libjax.runtime.batching`), split over the devices of a ``data`` mesh; sums over samples
become all-reduces that ``jit`` inserts. There are two steps: the statistics of every node layer
in one pass (:func:`stats_step`), and one step for any ``M'`` or edge computation
(:func:`accumulation_step`), which asks the section's path for the batch's contribution; and
:func:`run_step` runs the inputs to a held node layer, once per build.

Steps are cached (:func:`cached`) on what their programs depend on: the model's functions (by
identity), the node layers or the section and its path, task and plan, and the policy. A second
build of the same model in one process, or a build of several graphs that share a step, reuses the
jitted step and so its compiled programs; :data:`TRACES` counts how often each step was traced.

Under the float64 policy a step is ``acc = step(acc, key, ...)``: the sums stay on the device.
Under the mixed policy (:mod:`libjax.runtime.precision`) a step computes in float32 and returns
only its batch's contribution, ``new = step(key, ...)``, which :class:`Step`'s ``merge`` adds into
a float64 NumPy accumulator on the host: no float32 sum ever runs over more than one batch.
"""

from __future__ import annotations

import collections
import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from libjax.forms import EDGES, Form, Task, kept
from libjax.method import stats
from libjax.model import chain_acts
from libjax.pipeline.progress_saves import PassProgress, Saves, layout
from libjax.runtime import precision
from libjax.runtime.batching import batch_size_for, padded_batches
from libjax.runtime.progress import track
from libjax.runtime.sharding import Placement

log = logging.getLogger("libjax")

# Traces per step label since the process started: a step traced more than once per shape was
# rebuilt or its shapes changed.
TRACES: collections.Counter = collections.Counter()
_CACHE_SIZE = 256
_steps: collections.OrderedDict = collections.OrderedDict()


def cached(key, make: Callable[[], Step]) -> Step:
    """The step for ``key`` (hashable: everything its programs depend on), made by ``make`` the
    first time; the least recently used of more than ``_CACHE_SIZE`` steps are dropped."""
    if key in _steps:
        _steps.move_to_end(key)
        return _steps[key]
    step = _steps[key] = make()
    if len(_steps) > _CACHE_SIZE:
        _steps.popitem(last=False)
    return step


def _traced(label: str) -> None:
    """Called inside a step's Python body, so once per trace (compile) of that step."""
    TRACES[label] += 1
    log.info("compiling step %r (trace %d)", label, TRACES[label])


class Step(NamedTuple):
    """A jitted step and, for host accumulation, how a batch's result joins the host's sums
    (None: the step adds it to the accumulator itself, on the device)."""

    fn: Callable
    merge: Optional[Callable] = None


def _host_add(acc, new):
    return jax.tree.map(lambda a, b: np.asarray(a, np.float64) + np.asarray(b, np.float64),
                        acc, new)


def batch_key_data(seed: int, stage: str, batch_index: int) -> np.ndarray:
    """What a step turns into the key of one batch of one stage (:func:`batch_key`): the seed's
    two 32-bit halves, the stage's digest and the batch index, as ``uint32[4]``. Host integers:
    the key is derived inside the step's program, so no eager JAX call (each compiles a program
    the first time) runs per stage or batch."""
    digest = int(hashlib.sha256(stage.encode()).hexdigest()[:8], 16)
    return np.array([seed >> 32, seed & 0xFFFFFFFF, digest, batch_index], np.uint32)


def batch_key(data):
    """``fold_in(fold_in(key(seed), digest), batch_index)`` from :func:`batch_key_data`:
    independent of the device count, and the same when a killed build resumes."""
    key = jax.random.wrap_key_data(data[:2])  # what jax.random.key(seed) holds
    return jax.random.fold_in(jax.random.fold_in(key, data[2]), data[3])


def _functions(model, stop: int) -> tuple:
    """The functions that run ``model`` from its input to node layer ``stop``: a step's program
    depends on these (by identity) and on nothing else of the model, so a cached step keeps no
    weights alive."""
    return (model.embed,) + tuple(s.fn for s in model.sections[:stop])


def run_step(model, index: int, policy: str = "float64") -> Callable:
    """A batch run to ``model``'s node layer ``index`` (:mod:`libjax.pipeline.held_layers`)."""
    functions, label = _functions(model, index), f"activations of {model.node_layers[index]}"

    def make():  # holds the functions only, not the model's weights
        def run(params, inputs):
            _traced(label)
            return jax.vmap(lambda x: chain_acts(functions[0], functions[1:], params, x)[-1])(
                inputs)
        return jax.jit(run)
    return cached(("run to", functions, label, policy), make)


def stats_step(model, layers: Sequence[int], policy: str = "float64",
               skip_positions: tuple = ()) -> Step:
    """A batch's moments of node layers ``layers`` and whether they were finite, merged into the
    running ones (Chan's update: on the device under float64, on the host under mixed); the
    positions ``skip_positions`` are left out (docs/method.md 1.13)."""
    layers, skip = tuple(layers), tuple(skip_positions)
    functions = _functions(model, max(layers))
    return cached(("stats", functions, layers, policy, skip),
                  lambda: _make_stats_step(functions, layers, policy, skip))


def _make_stats_step(functions: tuple, layers: tuple[int, ...], policy: str,
                     skip: tuple = ()) -> Step:
    dtype = precision.accumulation_dtype(policy)
    label = f"means and Grams of {len(layers)} node layers"

    def row_weights(weights, n_pos):
        return weights[:, None] * kept(n_pos, skip, weights.dtype) if skip else weights

    def of_batch(params, inputs, weights):
        _traced(label)
        acts = jax.vmap(lambda x: chain_acts(functions[0], functions[1:], params, x))(inputs)
        moments = [stats.batch_moments(acts[i], row_weights(weights, acts[i].shape[1]), dtype)
                   for i in layers]
        return moments, jnp.stack([jnp.all(jnp.isfinite(acts[i])) for i in layers])

    if precision.host_sums(policy):
        def merge(acc, new):
            return ([stats.merge_on_host(m, n) for m, n in zip(acc[0], new[0])],
                    acc[1] & np.asarray(new[1]))
        return Step(jax.jit(lambda key, *args: of_batch(*args)), merge)

    def step(acc, key, params, inputs, weights):
        moments, finite = acc
        new, ok = of_batch(params, inputs, weights)
        return [stats.merge(m, n) for m, n in zip(moments, new)], finite & ok
    return Step(jax.jit(step, donate_argnums=0))


def accumulation_step(model, index: int, path: Form, task: Task, plan,
                      policy: str = "float64") -> Step:
    """One batch's contribution of ``path`` to ``M'`` or the edges across section ``index``: the
    batch is run to the section's input layer (and, for edges, rotated into its basis ``c_in``),
    then handed to the path with the probes' signs for this batch."""
    functions = _functions(model, index)
    label = f"{'edges' if task.kind == EDGES else 'M prime'} {model.node_layers[index]}"
    # the label too: a section started at a held node layer runs from it with the same function
    # in every graph (``held_layers._given``), and a step's log and trace count name its layer
    return cached(("section", label, functions, path, task, plan, policy),
                  lambda: _make_accumulation_step(functions, path, task, plan, policy, label))


def _make_accumulation_step(functions: tuple, path: Form, task: Task, plan, policy: str,
                            label: str) -> Step:
    probes = path.probes(task)

    def of_batch(key, params, c_in, c_in_pinv, c_next, inputs, sample_weights):
        _traced(label)
        xs = jax.vmap(lambda x: chain_acts(functions[0], functions[1:], params, x)[-1])(inputs)
        cast = lambda a: None if a is None else a.astype(xs.dtype)  # noqa: E731
        x = xs @ cast(c_in) if task.kind == EDGES else xs
        signs = None if probes is None else probes.draw_signs(batch_key(key), xs.shape[0],
                                                              task.acc_dtype)
        return path.batch_sums(task, plan, params, x, sample_weights, signs, cast(c_in_pinv),
                               cast(c_next))

    if precision.host_sums(policy):
        return Step(jax.jit(of_batch), _host_add)

    def step(acc, *args):
        return jax.tree.map(jnp.add, acc, of_batch(*args))
    return Step(jax.jit(step, donate_argnums=0))


def compile_ahead(step: Step, acc, inputs, batch_size: int, placement: Placement, *args) -> None:
    """Compile ``step`` for the arguments :func:`accumulate` will give it (the same shapes,
    dtypes and shardings), so that its first batch finds the program compiled. Run in a thread
    to compile while the build does other work (:mod:`libjax.pipeline.ahead`)."""
    size = batch_size_for(len(inputs), batch_size, placement.size)
    on_host = step.merge is not None
    dtype = precision.narrow_dtype if on_host else np.dtype
    abstract = (jax.ShapeDtypeStruct((4,), np.uint32),
                *placement.replicated_like(args, dtype),
                placement.batch_like((size,) + np.shape(inputs)[1:],
                                     dtype(np.asarray(inputs[:1]).dtype)),
                placement.batch_like((size,), dtype(np.float64)))
    if not on_host:
        abstract = (placement.replicated_like(acc),) + abstract
    step.fn.lower(*abstract).compile()


def accumulate(step: Step, acc, inputs, batch_size: int, what: str, seed: int, stage: str,
               placement: Placement, *args, saves: Optional[Saves] = None):
    """Fold ``step`` over the batches of ``inputs`` from ``acc`` and return the result on the
    host. Batches are split over the devices, everything else replicated; each batch gets its own
    key, derived from the seed, the stage and the batch index. A host-merged step gets its
    arguments and batches as 32-bit arrays.

    With ``saves``, the fold continues from the stage's saved progress if there is a matching
    save, saves on the schedule, and stops at a requested stop
    (:mod:`libjax.pipeline.progress_saves`): a resumed fold sums exactly as an uninterrupted one."""
    size = batch_size_for(len(inputs), batch_size, placement.size)
    total = -(-len(inputs) // size)
    on_host = step.merge is not None
    progress = PassProgress.of(saves, stage, what, layout(placement, size, total, len(inputs)))
    first, acc = progress.resume(acc)
    if on_host:
        args = placement.replicate(precision.as_32bit(args))
    else:
        acc, args = placement.replicate(acc), placement.replicate(args)
    host_acc = lambda: acc if on_host else placement.host(acc)  # noqa: E731 (the current sums)
    progress.boundary(first, host_acc)
    for i, (batch,), w in track(padded_batches(size, inputs, first=first), total, what,
                                resumed_at=first):
        key = batch_key_data(seed, stage, i)
        if on_host:
            batch, w = precision.as_32bit((batch, w))
            acc = step.merge(acc, placement.host(step.fn(key, *args, placement.batch(batch),
                                                         placement.batch(w))))
        else:
            acc = step.fn(acc, key, *args, placement.batch(batch), placement.batch(w))
            jax.block_until_ready(acc)  # progress and ETA count finished batches
        progress.boundary(i + 1, host_acc)
    return host_acc()
