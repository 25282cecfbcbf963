"""What a benchmark process measures about itself: compile time, phase windows, the libjax log,
peak memory, load and the float64 matmul rate.

A build's phases (``Graph.timings``: ``stats``, ``bases``, ``edges``) run back to back and end
just before ``build`` returns, so their windows on the ``perf_counter`` clock are known from the
return time. Compile work (JAX's ``jax.monitoring`` durations of tracing, lowering and XLA
compilation) and jitted calls (:mod:`benchmarks.flops`) are attributed to the window in which they
happened. On a shared machine wall time stretches with the load; the process's CPU time
(:class:`CpuSampler`) much less so.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

PHASES = ("stats", "bases", "edges")
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


class CompileLog:
    """Intervals ``(start, end)`` of JAX tracing, lowering and compiling in this process (the
    listener stays registered for the life of the process: make one per process)."""

    def __init__(self):
        self.intervals: list[tuple[float, float]] = []
        jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event: str, seconds: float, **kwargs) -> None:
        if event in COMPILE_EVENTS:
            now = time.perf_counter()
            self.intervals.append((now - seconds, now))

    def merged(self, start: float, end: float) -> list[tuple[float, float]]:
        """The intervals clipped to ``[start, end]`` and merged (nested traces count once)."""
        out: list[tuple[float, float]] = []
        for a, b in sorted(self.intervals):
            a, b = max(a, start), min(b, end)
            if b <= a:
                continue
            if out and a <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], b))
            else:
                out.append((a, b))
        return out

    def seconds_in(self, start: float, end: float) -> float:
        """Compile time in ``[start, end]``."""
        return sum(b - a for a, b in self.merged(start, end))


class CpuSampler:
    """While active, samples this process's CPU time (all threads) every ``interval_s``, so that
    the CPU seconds spent in any window can be read off afterwards."""

    def __init__(self, interval_s: float = 0.05):
        self.samples: list[tuple[float, float]] = []
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.samples.append((time.perf_counter(), time.process_time()))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> CpuSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def seconds_in(self, start: float, end: float) -> float:
        """CPU seconds between two ``perf_counter`` times (interpolated between samples)."""
        wall, cpu = np.array(self.samples).T
        return float(np.interp(end, wall, cpu) - np.interp(start, wall, cpu))


class LogCapture(logging.Handler):
    """Records ``(perf_counter, message)`` of every record on the ``libjax`` logger."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[tuple[float, str]] = []
        logging.getLogger("libjax").addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((time.perf_counter(), record.getMessage()))


def phase_windows(end: float, timings: dict) -> dict[str, tuple[float, float]]:
    """``perf_counter`` windows of the phases of a build that returned at ``end``."""
    windows = {}
    for phase in reversed(PHASES):
        windows[phase] = (end - timings[phase], end)
        end -= timings[phase]
    return windows


def step_windows(records: list[tuple[float, str]], end: float) -> dict[str, tuple[float, float]]:
    """``perf_counter`` windows of a build's ``M'`` and edge steps, from its libjax log: a step
    (``"M' X"``, ``"edges X->Y"``) runs from its first line to the first line of the next one,
    the last to ``end``. An ``M'`` step's window includes the host's finish and the layer's
    basis."""
    starts: list[tuple[float, str]] = []
    for t, message in records:
        key = message.split(": ", 1)[0]
        if key.startswith(("M' ", "edges ")) and key not in {k for _, k in starts}:
            starts.append((t, key))
    return {key: (t, nxt) for (t, key), nxt in zip(starts, [t for t, _ in starts[1:]] + [end])}


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def rss_gb() -> float:
    """Resident memory of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def load() -> float:
    """One-minute load average."""
    return os.getloadavg()[0]


def matmul_rates(n: int = 2048, repeats: int = 5, dtype=jnp.float64) -> dict[str, float]:
    """Best rates of a jitted ``n x n`` matmul in ``dtype`` over ``repeats`` timed runs: FLOPs
    per wall second (``wall``) and per CPU second of this process (``cpu``, all threads)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    product = jax.jit(jnp.matmul)
    product(a, a).block_until_ready()
    wall = cpu = np.inf
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        product(a, a).block_until_ready()
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.process_time() - c0)
    return {"wall": 2 * n**3 / wall, "cpu": 2 * n**3 / cpu}


def peak_device_gb() -> float | None:
    """Peak memory in use on the first device so far (``memory_stats()``'s
    ``peak_bytes_in_use``), or None where the backend keeps no such count (the CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def platform() -> dict:
    """The backend, devices and versions this process runs on."""
    import jaxlib

    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    return {"backend": jax.default_backend(), "device_kind": device.device_kind,
            "devices": jax.device_count(), "jax": jax.__version__,
            "jaxlib": getattr(jaxlib, "__version__", None), "cpu_cores": os.cpu_count(),
            "device_memory_gb": stats["bytes_limit"] / 2**30 if "bytes_limit" in stats else None}
