"""Builds a test graph into ``out_dir`` on however many devices/processes it is given.

    python tests/helpers/distributed_worker.py CASE OUT_DIR [COORDINATOR NUM_PROCESSES PROCESS_ID]

Used by tests/runtime/test_sharding.py in subprocesses (device counts and jax.distributed are fixed
per process). With ``$LIBJAX_TEST_STOP_AFTER=k`` the build saves its progress after every batch
and, for k > 0, this process asks for a stop after k batches of the first pass (as SIGTERM
would); a stopped build exits with status 75. ``CASE``: ``tiny``, the tiny transformer through the
general VJP path with stochastic
sources; ``modadd``, the shipped modular-addition model through the closed forms (low-rank
attention, MLP forms). Thresholds keep every direction well above round-off (1e-10; 1e-4 for modadd,
whose Gram eigenvalues reach 1e-11 and would amplify round-off through ``D^-1/2``), so results must
not depend on how the work is split.
"""

import logging
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from libjax.runtime import precision, sharding

precision.enable_float64()

if len(sys.argv) > 3:
    sharding.initialize(sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))

from libjax.pipeline import BuildConfig, build, steps  # noqa: E402
from libjax.pipeline.progress_saves import SaveSchedule  # noqa: E402
from libjax.runtime import preemption  # noqa: E402
from models.modadd import model as modadd  # noqa: E402
from tests.helpers.tiny import tiny_transformer  # noqa: E402

CONFIG = BuildConfig(n_stochastic_sources_basis_pos=1, n_stochastic_sources_edges=1,
                     truncation_threshold=1e-10, batch_size=24, fast_paths=False)


def case(name):
    """``(model, inputs, config)``."""
    if name == "tiny":
        model, tokens = tiny_transformer(("ln1.0", "ln2.0", "unembed", "output"),
                                         last_pos_only=False)
        return model, tokens, CONFIG
    cfg, weights = modadd.load()
    tokens = modadd.split_data("train")[0][:240]
    return (modadd.sectioned_model(weights, cfg), np.asarray(tokens),
            BuildConfig(truncation_threshold=1e-4, batch_size=48))


def stop_after(k: int) -> None:
    """Ask for a stop once the first pass has done ``k`` batches (0: never)."""
    real = steps.padded_batches

    def batches(*args, **kwargs):
        for n, item in enumerate(real(*args, **kwargs)):
            if n == k - 1:
                preemption.request()
            yield item
    steps.padded_batches = batches


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    model, inputs, config = case(sys.argv[1])
    schedule = SaveSchedule()
    if "LIBJAX_TEST_STOP_AFTER" in os.environ:
        stop_after(int(os.environ["LIBJAX_TEST_STOP_AFTER"]))
        schedule = SaveSchedule(every_batches=1)
    try:
        build(model, inputs, config, out_dir=sys.argv[2], save_schedule=schedule)
    except preemption.Preempted as stop:
        print(f"stopped: {stop}")
        sys.exit(preemption.EXIT_STATUS)
