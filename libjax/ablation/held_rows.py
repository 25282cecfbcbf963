"""The sums each output row of an edge-masked section was last computed with, kept on the
device so that the row's next mask, and rows computed after it, start from them (docs/method.md
3.3).

A row's sums (an MLP's pre-activation, attention's queries and keys) are linear in its kept
input nodes. Consecutive masks of a bisection differ in few edges (half the last step's), and
at one mask most rows keep nearly the same nodes as some other row, so adding the nodes a row
keeps and the held sums do not, and subtracting the others, costs far less than summing its kept
(or ablated) nodes again: over a SmolLM2 bisection, a quarter of the nodes those lists sum. The
sums start at zero, which is the sum over no nodes: every row holds a pattern from the start
(:func:`~libjax.ablation.masks.cheapest_lists` picks each row's start).
"""

from __future__ import annotations

import logging
from typing import Optional

import jax.numpy as jnp
import numpy as np

from libjax.ablation.masks import FULL, HELD
from libjax.runtime.memory import device_memory_bytes

log = logging.getLogger("libjax")

DEVICE_SHARE = 0.25  # of the device's memory, at most, for the held sums of all batches
WORTH_HOLDING = 16  # a row's new sums are written where its list was at least this long


class HeldRows:
    """Per batch one device array of the sums of the first rows (row axis ``row_axis`` of
    ``shape``), as many as fit ``budget`` bytes (default :data:`DEVICE_SHARE` of the device's
    memory), and on the host the pattern of kept input nodes each one's sums hold."""

    def __init__(self, shape: tuple, n_batches: int, dtype, n_in: int, row_axis: int,
                 budget: Optional[int] = None):
        n_out = shape[row_axis]
        per_row = n_batches * int(np.prod(shape)) // max(n_out, 1) * np.dtype(dtype).itemsize
        budget = DEVICE_SHARE * device_memory_bytes() if budget is None else budget
        n_held = int(min(n_out, budget // max(per_row, 1)))
        if n_held < n_out:
            log.info("edge ablation: the sums of %d of %d output nodes fit in memory (%.1f GB "
                     "each); the others are summed from zero or from the unablated model",
                     n_held, n_out, per_row / 1e9)
        held_shape = shape[:row_axis] + (n_held,) + shape[row_axis + 1:]
        self.arrays = ([jnp.zeros(held_shape, dtype) for _ in range(n_batches)] if n_held
                       else None)
        self.patterns = np.zeros((n_held, n_in), bool)

    @property
    def usable_patterns(self) -> Optional[np.ndarray]:
        """The patterns, for :func:`~libjax.ablation.masks.cheapest_lists` (None if none)."""
        return None if self.arrays is None else self.patterns

    def writes(self, rows, lengths, sourced) -> np.ndarray:
        """Where the program writes the new sums of planned rows ``rows`` (padding: any index
        past the held rows) whose lists had ``lengths``: the row's index where it is held and
        another row starts from its new sums (``sourced``) or its list was at least
        :data:`WORTH_HOLDING` long, else the number of held rows (the write is dropped).
        Writing a row's sums costs about as much memory traffic as summing a dozen nodes; a
        shorter list keeps the older sums, which then differ from the next mask's row by at
        most about twice as many nodes (a bisection's steps halve)."""
        rows = np.asarray(rows)
        n_held = len(self.patterns)
        worth = (np.asarray(lengths) >= WORTH_HOLDING) | np.asarray(sourced)
        return np.where((rows < n_held) & worth, rows, n_held).astype(np.int32)

    def update(self, run, outs: list, per_batch: list, shared: tuple, mask, writes) -> list:
        """Every batch's output nodes ``outs`` from ``run(*per_batch[b], out, sums, *shared)``,
        which returns them with the batch's held sums (``sums``, None if none; donated)
        written where ``writes`` (:meth:`writes`) says; those rows now hold ``mask``'s."""
        for b, out in enumerate(outs):
            sums = None if self.arrays is None else self.arrays[b]
            outs[b], sums = run(*per_batch[b], out, sums, *shared)
            if self.arrays is not None:
                self.arrays[b] = sums
        rows = writes[writes < len(self.patterns)]
        self.patterns[rows] = mask[rows]
        return outs

    def release(self) -> None:
        """Hold nothing from now on (the device memory goes back)."""
        self.arrays, self.patterns = None, self.patterns[:0]


def starting_sums(base, full, held, index):
    """Traced: the sums each row's list is added to, by its ``base``: zero (``ZERO``), the
    unablated ``full`` (``FULL``) or ``held`` at ``index`` (``HELD``; ``held`` None: none)."""
    start = jnp.where(base == FULL, full, 0)
    if held is None:
        return start
    return start + jnp.where(base == HELD, held.at[index].get(mode="fill", fill_value=0), 0)
