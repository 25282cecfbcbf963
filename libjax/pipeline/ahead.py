"""Compiling steps ahead in a worker thread, while the build does other work.

An edge step's program depends on the shapes of the bases on both sides of its section, which
are known as soon as the later of the two is built; the bases are built from the last node layer
back, each ``M'`` step waiting for the basis after it. So while the main thread compiles and runs
the ``M'`` steps, one worker compiles the edge steps whose bases exist
(:func:`libjax.pipeline.steps.compile_ahead`: the compiled program lands in ``jax.jit``'s cache),
and the edges then start at once, the last section first (the first section's step, whose
basis is built last, compiles while the others run). XLA compiles on one core and releases the
GIL, so the two overlap. On the 2-core machine of BUILD_NOTES both cores are then busy, and a
cold modular-addition process gains only a few tenths of a second; on an accelerator the host
compiles while the device computes.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Hashable


class Ahead:
    """Compile jobs by key: :meth:`submit` starts one in the worker, :meth:`wait` lets the main
    thread wait for it before running the step (so the program is never compiled twice)."""

    def __init__(self):
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="libjax-compile")
        self._jobs: dict[Hashable, concurrent.futures.Future] = {}

    def submit(self, key: Hashable, compile_fn: Callable[[], None]) -> None:
        self._jobs[key] = self._pool.submit(compile_fn)

    def wait(self, key: Hashable) -> None:
        """Wait for ``key``'s job if there is one. A job that failed is not an error here: the
        step's own call compiles again and reports it."""
        job = self._jobs.get(key)
        if job is not None:
            job.exception()

    def close(self) -> None:
        """Drop the jobs not started; one running finishes in its thread."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Ahead:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
