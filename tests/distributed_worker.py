"""Builds the tiny test graph into ``out_dir`` on however many devices/processes it is given.

    python tests/distributed_worker.py OUT_DIR [COORDINATOR NUM_PROCESSES PROCESS_ID]

Used by test_sharding.py in subprocesses (device counts and jax.distributed are fixed per
process). The configuration keeps every direction well above round-off (threshold 1e-10) and
uses stochastic sources, so results must not depend on how the work is split.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from libjax import sharding  # noqa: E402

if len(sys.argv) > 2:
    sharding.initialize(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))

from conftest import tiny_transformer  # noqa: E402
from libjax.build import BuildConfig, build  # noqa: E402

CONFIG = BuildConfig(n_stochastic_sources_basis_pos=1, n_stochastic_sources_edges=1,
                     truncation_threshold=1e-10, batch_size=24, fast_paths=False)

if __name__ == "__main__":
    model, tokens = tiny_transformer(("ln1.0", "ln2.0", "unembed", "output"), last_pos_only=False)
    build(model, tokens, CONFIG, out_dir=sys.argv[1])
