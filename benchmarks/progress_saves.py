"""What mid-stage saves cost (BUILD_NOTES.md, "Preemption-safe stages").

    python benchmarks/progress_saves.py [--out_dir=/tmp/saves]

Prints, with the float64 2048^2 matmul rate and the load measured in the same process:
- one save and one load of a GPT-2 block's statistics accumulator (six node layers of width
  769 and one of 3073: ~103 MB), from device arrays as under the float64 policy, wall and CPU
  seconds;
- the per-batch cost of the boundary check when no save is due.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks import measure
from libjax.method import stats
from libjax.pipeline.progress_saves import PassProgress, SaveSchedule
from libjax.runtime import precision
from libjax.runtime.sharding import Placement
from libjax.storage.midstage import MidstageSave

WIDTHS = (769,) * 6 + (3073,)


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn()``."""
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return float(np.median(wall)), float(np.median(cpu))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out_dir", default="/tmp/libjax-progress-saves")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    precision.enable_float64()
    rate = measure.matmul_rates()
    rng = np.random.default_rng(0)
    init = ([stats.Moments(np.zeros(()), np.zeros(d), np.zeros((d, d))) for d in WIDTHS],
            np.ones(len(WIDTHS), bool))
    host = jax.tree.map(lambda a: rng.normal(size=np.shape(a)), init)
    placement = Placement()
    device = placement.replicate(host)
    mb = sum(a.nbytes for a in jax.tree.leaves(host)) / 1e6
    layout = {"batches": 1000}
    save = MidstageSave(Path(args.out_dir), "stats", "bench")
    w_save, c_save = timed(lambda: save.save(placement.host(device), layout, 1), args.repeats)
    w_load, c_load = timed(lambda: save.load(init, layout), args.repeats)
    save.remove()
    progress = PassProgress(save, SaveSchedule(), "bench", layout)
    n = 100_000
    w_check, c_check = timed(lambda: [progress.boundary(1, lambda: host) for _ in range(n)], 1)
    print(f"matmul float64 2048^2: {rate['wall'] / 1e9:.1f} GFLOP/s wall, "
          f"{rate['cpu'] / 1e9:.1f} GFLOP/s CPU; load {measure.load():.1f}")
    print(f"save of {mb:.0f} MB (device -> npz, fsync): {w_save:.3f} s wall, {c_save:.3f} s CPU")
    print(f"load of it: {w_load:.3f} s wall, {c_load:.3f} s CPU")
    print(f"boundary check, nothing due: {1e6 * w_check / n:.2f} us wall, "
          f"{1e6 * c_check / n:.2f} us CPU per batch")


if __name__ == "__main__":
    main()
