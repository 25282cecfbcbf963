"""Progress lines for long loops: count, rate and ETA, at most every few seconds."""

from __future__ import annotations

import logging
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
log = logging.getLogger("libjax")


def track(items: Iterable[T], total: int, what: str, units: str = "batches",
          every_s: float = 5.0, resumed_at: int = 0) -> Iterator[T]:
    """Yield ``items``, logging ``what: done/total units (rate/s, ETA)`` every ``every_s`` seconds
    and once at the end. ``resumed_at``: the items before it were done by an earlier run (the
    count starts there, the rate and ETA count this run's items only)."""
    if resumed_at:
        log.info("%s: resuming after %d/%d %s", what, resumed_at, total, units)
    start = last = time.perf_counter()
    for done, item in enumerate(items, start=resumed_at + 1):
        yield item
        now = time.perf_counter()
        if now - last >= every_s or done == total:
            rate = (done - resumed_at) / max(now - start, 1e-9)
            log.info("%s: %d/%d %s (%.2f/s, ETA %.0fs)", what, done, total, units, rate,
                     (total - done) / rate)
            last = now
