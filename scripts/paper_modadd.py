"""The paper's modular-addition ablations for the five seeds: LIB against PCA.

    python scripts/paper_modadd.py                                  # all five seeds
    python scripts/paper_modadd.py --seeds=0 --weights=../shared/data/weights_modadd_seed{seed}.npz

For every seed, builds the LIB and the PCA graph (train split, one batch, float64; stored and
resumable under --out_dir), then runs the paper's ablations on the test split in float32 with
accuracy: node ablation with the exponential schedule (cutoff 10, base 1.05) and edge ablation by
bisection (Delta 0.001, tolerance 1). Writes the result records, ``table.md`` (edges needed per
transition, LIB and PCA side by side, with the mean; agreement of seed 0 with the reference
numbers of docs/method.md Appendix A) and LIB-vs-PCA plots of every seed.
"""

from __future__ import annotations

from absl import flags

from libjax.runtime import cli
from models import script_flags
from models.modadd import paper

_SEEDS = flags.DEFINE_string("seeds", "0,1,2,3,4", "comma-separated seeds")
_WEIGHTS = flags.DEFINE_string("weights", "../shared/data/weights_modadd_seed{seed}.npz",
                               "checkpoint path pattern with {seed}")
_OUT_DIR = script_flags.define("out_dir", "out/paper_modadd", "graphs, records, table, plots")
_RERUN = script_flags.define("rerun")
_OVERWRITE = script_flags.define("overwrite")


def main(argv):
    del argv
    seeds = [int(s) for s in cli.comma_list(_SEEDS.value) or ()]
    paper.run(seeds, _WEIGHTS.value, _OUT_DIR.value, _RERUN.value, _OVERWRITE.value)


if __name__ == "__main__":
    cli.run(main)
