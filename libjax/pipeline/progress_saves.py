"""Saving a pass's progress as it runs, resuming it, and stopping it when asked.

A stage's pass over the data (:func:`libjax.pipeline.steps.accumulate`) can take hours. It saves
its accumulator and position (:mod:`libjax.storage.midstage`) on a :class:`SaveSchedule`, and at
once when a stop is requested (:mod:`libjax.runtime.preemption`: SIGTERM), then stops. A rerun
continues the same fold from the saved batch with the same per-batch keys, so the stage ends bit
for bit as an uninterrupted pass would; a save made with another batch size, device count or
platform (another summation order) is not resumed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import jax
from jax.experimental import multihost_utils

from libjax.errors import ConfigError
from libjax.runtime import preemption
from libjax.runtime.sharding import Placement
from libjax.storage.midstage import MidstageSave

log = logging.getLogger("libjax")


@dataclasses.dataclass(frozen=True)
class SaveSchedule:
    """How often a pass saves its progress: after ``every_batches`` batches or ``every_minutes``
    minutes since the last save, whichever comes first (0: no such limit; both 0: only when
    stopped). Not part of the build record: a rerun may save more or less often."""

    every_batches: int = 0
    every_minutes: float = 10.0

    def validate(self) -> None:
        if not (isinstance(self.every_batches, int) and self.every_batches >= 0):
            raise ConfigError(f"--save_every_batches must be an integer >= 0 (0: no batch "
                              f"limit), got {self.every_batches}")
        if not 0 <= self.every_minutes < math.inf:
            raise ConfigError(f"--save_every_minutes must be a finite number >= 0 (0: no time "
                              f"limit), got {self.every_minutes}")


class Saves(NamedTuple):
    """Where (a :class:`libjax.storage.store.Store`) and how often a build's passes save."""

    store: Any
    schedule: SaveSchedule


def layout(placement: Placement, batch_size: int, batches: int, samples: int) -> dict:
    """What fixes a pass's summation order, and so must match for a save to be resumed."""
    device = placement.mesh.devices.flat[0]
    return {"batch_size": batch_size, "batches": batches, "samples": samples,
            "devices": placement.size, "processes": jax.process_count(),
            "platform": device.platform, "device_kind": device.device_kind, "jax": jax.__version__}


class PassProgress:
    """The saves and stops of one pass: :meth:`resume` before the first batch, :meth:`boundary`
    after each."""

    def __init__(self, save: Optional[MidstageSave], schedule: SaveSchedule, what: str,
                 layout: dict):
        self.save, self.schedule, self.what, self.layout = save, schedule, what, layout
        self.saved_at, self.saved_time = 0, time.monotonic()

    @classmethod
    def of(cls, saves: Optional[Saves], stage: str, what: str, layout: dict) -> PassProgress:
        if saves is None:
            return cls(None, SaveSchedule(), what, layout)
        return cls(saves.store.midstage_save(stage), saves.schedule, what, layout)

    def resume(self, init):
        """``(first batch, accumulator)``: the saved position and sums if this pass has a
        matching save, else ``(0, init)``."""
        loaded = None if self.save is None else self.save.load(init, self.layout)
        if self.save is not None and jax.process_count() > 1:
            # no process may read a newer save that the writer makes after resuming
            multihost_utils.sync_global_devices("libjax: progress read")
        self.saved_time = time.monotonic()
        if loaded is None:
            return 0, init
        self.saved_at = loaded[0]
        return loaded

    def boundary(self, done: int, host_acc: Callable[[], Any]) -> None:
        """After ``done`` batches: save ``host_acc()`` if the schedule says so or a stop was
        requested; then, if a stop was requested, raise
        :class:`~libjax.runtime.preemption.Preempted`."""
        stop = preemption.stop_requested()
        if stop or (done < self.layout["batches"] and self._due(done)):
            self._save(done, host_acc)
        if stop:
            total = self.layout["batches"]
            if self.save is None:
                kept = "nothing is saved (the build has no output directory)"
            elif not self.save.writer:
                kept = "the writing process saves its progress"
            elif self.saved_at == 0:
                kept = "the stage starts over"
            else:
                kept = f"its progress is saved at batch {self.saved_at}/{total} ({self.save.path})"
            raise preemption.Preempted(f"{self.what} stopped after batch {done}/{total}; {kept}")

    def _due(self, done: int) -> bool:
        every, minutes = self.schedule.every_batches, self.schedule.every_minutes
        return bool(every and done - self.saved_at >= every) or \
            bool(minutes and time.monotonic() - self.saved_time >= 60 * minutes)

    def _save(self, done: int, host_acc: Callable[[], Any]) -> None:
        if self.save is None or not self.save.writer or done == self.saved_at:
            return
        total = self.layout["batches"]
        try:
            self.save.save(host_acc(), self.layout, done)
        except OSError as err:
            log.warning("%s: could not save progress at batch %d/%d (%s); continuing (if "
                        "interrupted, the stage resumes from batch %d)", self.what, done, total,
                        err, self.saved_at)
        else:
            self.saved_at = done
            log.info("%s: progress saved at batch %d/%d", self.what, done, total)
        self.saved_time = time.monotonic()
