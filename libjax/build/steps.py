"""The jitted steps of a build and the loop that folds them over the data.

Every pass over the data is ``acc = step(acc, key, ...)`` over fixed-shape padded batches
(:mod:`libjax.runtime.batching`), split over the devices of a ``data`` mesh; sums over samples
become all-reduces that ``jit`` inserts. There are two steps: the statistics of every node layer
in one pass (:func:`stats_step`), and one step for any ``M'`` or edge computation
(:func:`accumulation_step`), which asks the section's path for the batch's contribution.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import jax
import jax.numpy as jnp

from libjax.forms import EDGES, Form, Task
from libjax.method import stats
from libjax.runtime.batching import batch_size_for, padded_batches
from libjax.runtime.progress import track
from libjax.runtime.sharding import Placement


def fold_key(seed: int, stage: str, batch_index: int):
    """The key of one batch of one stage: independent of the device count, and the same when a
    killed build resumes."""
    digest = int(hashlib.sha256(stage.encode()).hexdigest()[:8], 16)
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), digest), batch_index)


def stats_step(model, layers: Sequence[int]):
    """Merges a batch's moments of node layers ``layers`` and whether they were finite."""
    def step(acc, key, params, inputs, weights):
        moments, finite = acc
        acts = jax.vmap(lambda x: model.all_acts(params, x))(inputs)
        moments = [stats.merge(m, stats.batch_moments(acts[i], weights))
                   for m, i in zip(moments, layers)]
        finite = finite & jnp.stack([jnp.all(jnp.isfinite(acts[i])) for i in layers])
        return moments, finite
    return jax.jit(step, donate_argnums=0)


def accumulation_step(model, index: int, path: Form, task: Task, plan):
    """Adds one batch's contribution of ``path`` to ``M'`` or the edges across section
    ``index``: the batch is run to the section's input layer (and, for edges, rotated into its
    basis ``c_in``), then handed to the path with the probes' signs for this batch."""
    probes = path.probes(task)

    def step(acc, key, params, c_in, c_in_pinv, c_next, inputs, sample_weights):
        xs = jax.vmap(lambda x: model.run_to(params, x, index))(inputs)
        cast = lambda a: None if a is None else a.astype(xs.dtype)  # noqa: E731
        x = xs @ cast(c_in) if task.kind == EDGES else xs
        signs = None if probes is None else probes.draw_signs(key, xs.shape[0])
        new = path.batch_sums(task, plan, params, x, sample_weights, signs, cast(c_in_pinv),
                              cast(c_next))
        return jax.tree.map(jnp.add, acc, new)
    return jax.jit(step, donate_argnums=0)


def accumulate(step, acc, inputs, batch_size: int, what: str, seed: int, stage: str,
               placement: Placement, *args):
    """Fold ``acc = step(acc, key, *args, batch, weights)`` over the batches of ``inputs`` and
    return it on the host. Batches are split over the devices, everything else replicated; each
    batch gets its own key, derived from the seed, the stage and the batch index."""
    size = batch_size_for(len(inputs), batch_size, placement.size)
    acc, args = placement.replicate(acc), placement.replicate(args)
    total = -(-len(inputs) // size)
    for i, (batch,), w in track(padded_batches(size, inputs), total, what):
        acc = step(acc, fold_key(seed, stage, i), *args, placement.batch(batch),
                   placement.batch(w))
        jax.block_until_ready(acc)  # progress and ETA count finished batches, not dispatched ones
    return placement.host(acc)
