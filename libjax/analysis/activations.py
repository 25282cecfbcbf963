"""Activations of a node layer in a basis, ``f_hat = f @ C`` (SPEC 0, 1.9), for research code.

:func:`basis_activations` returns every sample's activations; :func:`top_activations` keeps, per
direction, only its ``k`` largest and ``k`` smallest (sample, position) pairs, so a language
model's whole sample never has to fit in memory (nor for :func:`histograms`);
:func:`output_effects` says which outputs each direction raises and lowers. All run the sectioned
model in jitted, vmapped batches of a fixed size (the last batch is padded, so one program serves
every batch).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from libjax.errors import ConfigError, DataError


def _layer_index(model, node_layer: str) -> int:
    if node_layer not in model.node_layers:
        raise ConfigError(f"{node_layer!r} is not a node layer of this model; its node layers "
                          f"are {', '.join(model.node_layers)}")
    return model.node_layers.index(node_layer)


def _batches(inputs, batch_size: int):
    """``(start, padded batch, n_real)`` over ``inputs``; the last batch repeats its first row."""
    inputs = np.asarray(inputs)
    if len(inputs) == 0:
        raise DataError("no inputs to compute activations on")
    if batch_size < 1:
        raise ConfigError(f"the batch size must be >= 1, got {batch_size}")
    batch_size = min(batch_size, len(inputs))
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start:start + batch_size]
        n = len(batch)
        if n < batch_size:
            batch = np.concatenate([batch, np.repeat(batch[:1], batch_size - n, axis=0)])
        yield start, batch, n


def _program(model, index: int):
    """Jitted ``(params, batch, C) -> (batch, pos, k)`` activations of node layer ``index``."""
    def run(params, batch, C):
        acts = jax.vmap(lambda x: model.run_to(params, x, index))(batch)
        return acts if C is None else acts @ C
    return jax.jit(run)


def basis_activations(model, node_layer: str, inputs, C: Optional[np.ndarray] = None,
                      batch_size: int = 256) -> np.ndarray:
    """``f_hat = f @ C`` of every input at ``node_layer``, ``(n, pos, k)`` (``C=None``: the
    folded activations ``f`` themselves, ``(n, pos, orig)``)."""
    index = _layer_index(model, node_layer)
    run = _program(model, index)
    C = None if C is None else jnp.asarray(C)
    parts = [np.asarray(run(model.params, batch, C))[:n]
             for _, batch, n in _batches(inputs, batch_size)]
    return np.concatenate(parts)


def _check_skip(skip_positions, positions: int) -> tuple[int, ...]:
    skip = tuple(sorted({int(p) for p in skip_positions}))
    if skip and (skip[0] < 0 or skip[-1] >= positions or len(skip) >= positions):
        raise ConfigError(f"cannot leave positions {list(skip)} out of {positions} positions")
    return skip


class Top(NamedTuple):
    """Per direction (columns), ``k`` (sample, position) pairs in order: signed ``values``
    ``(k, dirs)``, ``sample`` and ``position`` indices."""

    values: np.ndarray
    sample: np.ndarray
    position: np.ndarray


class Extremes(NamedTuple):
    """The ``k`` largest activations of each direction (``high``, decreasing) and its ``k``
    smallest (``low``, increasing): a direction's positive and negative ends, apart."""

    high: Top
    low: Top


def _kept_rows(n_rows: int, n_real, positions: int, skip_positions):
    """``(n_rows,)`` over a batch's (sample, position) rows: a real sample at a kept position."""
    keep = np.ones(positions, bool)
    keep[list(skip_positions)] = False
    rows = jnp.arange(n_rows)
    return (rows < n_real * positions) & jnp.asarray(keep)[rows % positions]


def _merge_program(model, index: int, k: int, skip_positions=()):
    """Jitted step: a batch's activations merged into the running top ``k`` of each direction,
    once for ``f_hat`` and once for ``-f_hat`` (rows ``[:dirs]`` and ``[dirs:]``); the
    ``skip_positions`` never enter."""
    def step(params, batch, n_real, start, C, best_key, best_ids):
        acts = jax.vmap(lambda x: model.run_to(params, x, index))(batch) @ C  # (b, pos, dirs)
        b, pos, dirs = acts.shape
        flat = acts.reshape(b * pos, dirs).T  # (dirs, b * pos), row-major over (sample, pos)
        ids = start * pos + jnp.arange(b * pos)
        real = _kept_rows(b * pos, n_real, pos, skip_positions)[None, :]
        both = jnp.concatenate([jnp.where(real, flat, -jnp.inf), jnp.where(real, -flat, -jnp.inf)])
        all_key = jnp.concatenate([best_key, both], axis=1)
        all_ids = jnp.concatenate([best_ids, jnp.broadcast_to(ids, both.shape)], axis=1)
        top_key, where = jax.lax.top_k(all_key, k)  # ties: the earlier column, i.e. sample
        return top_key, jnp.take_along_axis(all_ids, where, axis=1)
    return jax.jit(step)


def top_activations(model, node_layer: str, C: np.ndarray, inputs, k: int,
                    batch_size: int = 64, skip_positions=()) -> Extremes:
    """The ``k`` largest and ``k`` smallest activations ``f_hat`` of every direction of ``C`` at
    ``node_layer`` over all inputs and positions but ``skip_positions`` (those a build left out,
    docs/method.md 1.13), in one pass; memory ``O(batch + dirs * k)``, whatever the number of
    inputs. Ties keep the earlier (sample, position)."""
    index = _layer_index(model, node_layer)
    inputs = np.asarray(inputs)
    positions = model.layers[index].positions
    skip_positions = _check_skip(skip_positions, positions)
    k = min(k, len(inputs) * (positions - len(skip_positions)))
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    C = jnp.asarray(C)
    dirs = C.shape[1]
    step = _merge_program(model, index, k, skip_positions)
    best_key = jnp.full((2 * dirs, k), -jnp.inf, C.dtype)
    best_ids = jnp.zeros((2 * dirs, k), jnp.int64)
    for start, batch, n in _batches(inputs, batch_size):
        best_key, best_ids = step(model.params, batch, n, start, C, best_key, best_ids)
    key, flat = np.asarray(best_key).T, np.asarray(best_ids).T  # (k, 2 * dirs)
    high = Top(key[:, :dirs], flat[:, :dirs] // positions, flat[:, :dirs] % positions)
    low = Top(-key[:, dirs:], flat[:, dirs:] // positions, flat[:, dirs:] % positions)
    return Extremes(high, low)


def output_effects(model, node_layer: str, directions: np.ndarray, inputs,
                   batch_size: int = 256) -> np.ndarray:
    """How the model's output moves per unit of each direction: the mean over ``inputs`` (and
    output positions) of the Jacobian of the output at ``node_layer``'s activations applied to
    each row of ``directions`` ``(dirs, width)`` (a row of ``C^+`` is what one unit of ``f_hat_j``
    adds to ``f``), the same at every position. Returns ``(dirs, n_out)``."""
    index = _layer_index(model, node_layer)
    V = jnp.asarray(directions)

    def run(params, batch, n_real):
        def one(x):
            acts = model.run_to(params, x, index)
            _, lin = jax.linearize(lambda a: model.run_from(params, a, index), acts)
            moved = jax.vmap(lambda v: lin(jnp.broadcast_to(v, acts.shape)))(V)
            return moved.reshape(V.shape[0], -1, moved.shape[-1]).mean(axis=1)  # (dirs, out)
        per = jax.vmap(one)(batch)  # (b, dirs, out)
        weight = (jnp.arange(batch.shape[0]) < n_real).astype(per.dtype)
        return jnp.einsum("b,bdo->do", weight, per)
    program = jax.jit(run)
    total = None
    for _, batch, n in _batches(inputs, batch_size):
        part = program(model.params, batch, n)
        total = part if total is None else total + part
    return np.asarray(total) / len(np.asarray(inputs))


def histograms(model, node_layer: str, C: np.ndarray, inputs, lo: np.ndarray, hi: np.ndarray,
               bins: int = 32, batch_size: int = 64, skip_positions=()) -> np.ndarray:
    """Per direction of ``C``, the counts ``(dirs, bins)`` of its activations over all inputs and
    positions but ``skip_positions`` in ``bins`` equal bins from ``lo`` to ``hi`` (each
    ``(dirs,)``: e.g. the extremes from :func:`top_activations`; values outside go to the end
    bins), in one streamed pass."""
    index = _layer_index(model, node_layer)
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    width = jnp.asarray(np.where(hi > lo, hi - lo, 1.0))
    lo_j = jnp.asarray(lo)
    positions = model.layers[index].positions
    skip_positions = _check_skip(skip_positions, positions)

    def step(params, batch, n_real, C, counts):
        acts = jax.vmap(lambda x: model.run_to(params, x, index))(batch) @ C  # (b, pos, dirs)
        flat = acts.reshape(-1, acts.shape[-1])
        which = jnp.clip(((flat - lo_j) / width * bins).astype(jnp.int32), 0, bins - 1)
        real = _kept_rows(flat.shape[0], n_real, positions, skip_positions).astype(counts.dtype)
        dirs = jnp.broadcast_to(jnp.arange(flat.shape[1]), which.shape)
        return counts.at[dirs, which].add(jnp.broadcast_to(real[:, None], which.shape))
    program = jax.jit(step)
    C = jnp.asarray(C)
    counts = jnp.zeros((C.shape[1], bins), jnp.int32)
    for _, batch, n in _batches(inputs, batch_size):
        counts = program(model.params, batch, n, C, counts)
    return np.asarray(counts)
