"""Activations of a node layer in a basis, ``f_hat = f @ C`` (SPEC 0, 1.9), for research code.

:func:`basis_activations` returns every sample's activations; :func:`top_activations` keeps, per
direction, only the ``k`` (sample, position) pairs of largest ``|f_hat|``, so a language model's
whole sample never has to fit in memory. Both run the sectioned model in jitted, vmapped batches
of a fixed size (the last batch is padded, so one program serves every batch).
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


class Top(NamedTuple):
    """Per direction (columns), the ``k`` (sample, position) pairs of largest ``|f_hat|``, in
    decreasing order: signed ``values`` ``(k, dirs)``, ``sample`` and ``position`` indices."""

    values: np.ndarray
    sample: np.ndarray
    position: np.ndarray


def _merge_program(model, index: int, k: int):
    """Jitted step: a batch's activations merged into the running top ``k`` of each direction."""
    def step(params, batch, n_real, start, C, best_abs, best_val, best_flat):
        acts = jax.vmap(lambda x: model.run_to(params, x, index))(batch) @ C  # (b, pos, dirs)
        b, pos, dirs = acts.shape
        flat = acts.reshape(b * pos, dirs).T  # (dirs, b * pos), row-major over (sample, pos)
        ids = start * pos + jnp.arange(b * pos)
        real = jnp.arange(b * pos) < n_real * pos
        score = jnp.where(real[None, :], jnp.abs(flat), -jnp.inf)
        all_abs = jnp.concatenate([best_abs, score], axis=1)
        all_val = jnp.concatenate([best_val, flat], axis=1)
        all_ids = jnp.concatenate([best_flat, jnp.broadcast_to(ids, flat.shape)], axis=1)
        top_abs, where = jax.lax.top_k(all_abs, k)
        take = lambda a: jnp.take_along_axis(a, where, axis=1)  # noqa: E731
        return top_abs, take(all_val), take(all_ids)
    return jax.jit(step)


def top_activations(model, node_layer: str, C: np.ndarray, inputs, k: int,
                    batch_size: int = 64) -> Top:
    """The ``k`` strongest activations ``|f_hat|`` of every direction of ``C`` at ``node_layer``
    over all inputs and positions; memory ``O(batch + dirs * k)``, whatever the number of inputs.
    Ties keep the earlier (sample, position)."""
    index = _layer_index(model, node_layer)
    inputs = np.asarray(inputs)
    positions = model.layers[index].positions
    k = min(k, len(inputs) * positions)
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    C = jnp.asarray(C)
    dirs = C.shape[1]
    step = _merge_program(model, index, k)
    best_abs = jnp.full((dirs, k), -jnp.inf, C.dtype)
    best_val = jnp.zeros((dirs, k), C.dtype)
    best_flat = jnp.zeros((dirs, k), jnp.int64)
    for start, batch, n in _batches(inputs, batch_size):
        best_abs, best_val, best_flat = step(model.params, batch, n, start, C, best_abs, best_val,
                                             best_flat)
    flat = np.asarray(best_flat).T
    return Top(np.asarray(best_val).T, flat // positions, flat % positions)
