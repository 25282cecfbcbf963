"""Stopping a build cleanly when the scheduler asks (SIGTERM before preemption).

While a build runs (:func:`deferring`), SIGTERM only asks for a stop (:func:`request`): the
running pass saves its progress at the next batch boundary and raises :class:`Preempted`; between
passes the build stops at the next stage boundary, its finished stages already stored. The scripts
(:func:`libjax.runtime.cli.run`) install the handler (:func:`install`) and turn :class:`Preempted`
into exit status :data:`EXIT_STATUS` with a message saying how to resume. Outside a build, SIGTERM
keeps its default effect (the process ends at once).

With several processes, each may see the signal at a different batch: :func:`stop_requested` is
agreed among all of them, so every process stops after the same batch.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger("libjax")

EXIT_STATUS = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure, rerun to continue

_requested = threading.Event()
_builds_running = 0


class Preempted(BaseException):
    """A build stopped at a boundary because a stop was requested; what it had finished is saved.
    A ``BaseException`` (like ``KeyboardInterrupt``), so ``except Exception`` does not swallow
    it."""


def request() -> None:
    """Ask the running build to stop at its next batch or stage boundary (what SIGTERM does)."""
    _requested.set()


def clear() -> None:
    """Forget a stop request (a build that stopped can then be run again in this process)."""
    _requested.clear()


def stop_requested() -> bool:
    """Whether a stop was requested, in this process or (multi-host) in any process."""
    wanted = _requested.is_set()
    if jax.process_count() > 1:
        wanted = bool(np.any(multihost_utils.process_allgather(np.array(wanted))))
    return wanted


def _on_sigterm(signum, frame) -> None:
    if _builds_running:
        log.warning("SIGTERM: stopping at the next batch boundary after saving progress")
        request()
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # nothing to save: end as SIGTERM would
    signal.raise_signal(signal.SIGTERM)


def install() -> None:
    """Make SIGTERM ask running builds to stop (:func:`request`); call from the main thread."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def deferring(fn):
    """Decorate a build: while it runs, SIGTERM (once :func:`install` ed) asks for a stop instead
    of ending the process."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        global _builds_running
        _builds_running += 1
        try:
            return fn(*args, **kwargs)
        finally:
            _builds_running -= 1
    return wrapped


def stop_if_requested(where: str) -> None:
    """Raise :class:`Preempted` (saying ``where`` the build stopped) if a stop was requested."""
    if stop_requested():
        raise Preempted(where)
