"""Progress lines for long loops: count, rate and ETA, at most every few seconds."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("libjax")


class Meter:
    """Counts finished items of ``total`` and logs ``what: done/total units (rate/s, ETA)`` every
    ``every_s`` seconds and at the last item. ``resumed_at``: the items before it were done by an
    earlier run (the count starts there, the rate and ETA count this run's items only). A
    ``total`` that is only a bound (a bisection's steps) gives an ETA that is one too."""

    def __init__(self, total: int, what: str, units: str = "batches", every_s: float = 5.0,
                 resumed_at: int = 0):
        self.total, self.what, self.units, self.every_s = total, what, units, every_s
        self.done = self.resumed_at = resumed_at
        if resumed_at:
            log.info("%s: resuming after %d/%d %s", what, resumed_at, total, units)
        self.start = self.last = time.perf_counter()

    def tick(self, note: str = "") -> None:
        """One more item done; ``note`` is added to the line."""
        self.done += 1
        now = time.perf_counter()
        if now - self.last >= self.every_s or self.done == self.total:
            rate = (self.done - self.resumed_at) / max(now - self.start, 1e-9)
            log.info("%s: %d/%d %s (%.2f/s, ETA %.0fs)%s", self.what, self.done, self.total,
                     self.units, rate, max(self.total - self.done, 0) / rate,
                     f" {note}" if note else "")
            self.last = now


def track(items: Iterable[T], total: int, what: str, units: str = "batches",
          every_s: float = 5.0, resumed_at: int = 0) -> Iterator[T]:
    """Yield ``items``, logging progress as :class:`Meter` does."""
    meter = Meter(total, what, units, every_s, resumed_at)
    for item in items:
        yield item
        meter.tick()
