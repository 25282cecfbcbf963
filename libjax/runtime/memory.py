"""Chunked steps: how many rows each step takes, and the split into chunks.

Steps are chunked twice over: by the user's memory budget (``--memory_budget_gb``, the bound on
what a step may hold), and, where a step streams many small products, by what stays in the CPU
caches: on CPUs, cache-sized operands run the MLP edges and the low-rank attention faster than
budget-sized ones (measured in BUILD_NOTES). Accelerators are unaffected: the
cap only shortens the scans.
"""

import os

import jax
import jax.numpy as jnp

CACHE_BYTES = 8 * 2**20


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def device_memory_bytes() -> int:
    """The memory of the first device where it reports one (GPU, TPU), else the host's."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return int(stats.get("bytes_limit") or host_memory_bytes())


def rows_per_step(bytes_per_row: float, budget_gb: float, cached_bytes_per_row: float = 0,
                  limit: int | None = None) -> int:
    """Rows (tokens, samples) per step: within ``budget_gb``; if ``cached_bytes_per_row``, also
    few enough that the step's main operand (that many bytes per row) fits
    :data:`CACHE_BYTES`; at most ``limit``; at least 1."""
    rows = budget_gb * 2**30 // bytes_per_row
    if cached_bytes_per_row:
        rows = min(rows, CACHE_BYTES // cached_bytes_per_row)
    if limit is not None:
        rows = min(rows, limit)
    return int(max(1, rows))


def in_chunks(size: int, *arrays):
    """``arrays`` split along their first axis into ``(n_chunks, size, ...)``, zero-padded (the
    padding must carry weight 0), so a ``scan`` over them compiles once."""
    n = arrays[0].shape[0]
    size = max(1, min(size, n))
    count = -(-n // size)
    pad = [(0, count * size - n)]
    return tuple(jnp.pad(a, pad + [(0, 0)] * (a.ndim - 1)).reshape(count, size, *a.shape[1:])
                 for a in arrays)
