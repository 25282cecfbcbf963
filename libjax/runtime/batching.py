"""Fixed-shape batches: every step of a build or an ablation sees the same shapes, so it compiles
once. The last batch is padded by repeating its last sample with weight 0."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def batch_size_for(n: int, batch_size: int, multiple: int = 1) -> int:
    """Samples per step: at most ``batch_size`` (and no more than ``n``), rounded up to a
    multiple of the number of devices."""
    return -(-min(batch_size, n) // multiple) * multiple


def padded_batches(size: int, *arrays: np.ndarray,
                   first: int = 0) -> Iterator[tuple[int, list, np.ndarray]]:
    """Yield ``(index, [chunk of each array], weights)`` over the first axis, in order, from
    batch ``first`` on; chunks have ``size`` rows, ``weights`` is 1 for real rows and 0 for
    padding."""
    for i, start in enumerate(range(first * size, len(arrays[0]), size), start=first):
        chunks = [np.asarray(a[start:start + size]) for a in arrays]
        weights = np.ones(size)
        n = len(chunks[0])
        if n < size:
            weights[n:] = 0.0
            chunks = [np.concatenate([c, np.repeat(c[-1:], size - n, axis=0)]) for c in chunks]
        yield i, chunks, weights
