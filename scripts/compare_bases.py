"""LIB against PCA on one model: both graphs, node- and edge-ablation figures and a table.

    python scripts/compare_bases.py                                  # the shipped digits MLP
    python scripts/compare_bases.py --checkpoint=out/mlp_digits_50_50.npz --out_dir=out/cmp
    python scripts/compare_bases.py --checkpoint=../shared/data/weights_mnist_mlp_100_100.npz \\
        --data_dir=~/data/mnist --out_dir=out/compare_mnist         # the paper's MNIST MLP
    python scripts/compare_bases.py --model=modadd --out_dir=out/compare_modadd
    python scripts/compare_bases.py --model=llama --checkpoint=SmolLM2.gguf --layer=15 \\
        --n_ctx=128 --data_dir=CORPUS --out_dir=out/compare_smollm2      # a language model

Builds the LIB and the PCA graph on the model's build data (the train split; float64) and
ablates both in float32 on its evaluation data (``--split``, default the model's: the digits
test split, the MNIST/CIFAR-10 train split as in the paper, the modular-addition test split; a
language model's held-out chunks of its corpus, or the whole of ``--eval_data_dir``) with its
schedule; edges by bisection within --score_target_difference. Writes to --out_dir the
graphs (``lib``, ``pca``), the result records, ``node_ablation.png|svg`` and
``edge_ablation.png|svg`` (LIB and PCA on one figure each), ``table.md`` (per node layer the
directions kept and needed and the edges required, LIB / PCA) and ``comparison.json`` (the
same numbers). Rerunning resumes; records made with other settings are recomputed.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags

from libjax.runtime import cli
from models import comparing, registry, script_flags

_MODEL = script_flags.define("model", "mlp", "model family: " + ", ".join(registry.FAMILIES))
_CHECKPOINT = script_flags.define("checkpoint", help="weights (default: the model's shipped "
                                  "checkpoint)")
_DATASET = script_flags.define("dataset")
_DATA_DIR = script_flags.define("data_dir")
_N_SAMPLES = script_flags.define("n_samples", help="build the graphs on the first n train "
                                 "samples only")
_N_GRAM_SAMPLES = script_flags.define("n_gram_samples")
_LAYER = script_flags.define("layer", help="language models: the block to compare (default 0)",
                             integer=True)
_N_CTX = script_flags.define("n_ctx", help="language models: tokens per sample")
_EVAL_DATA_DIR = flags.DEFINE_string("eval_data_dir", None,
                                     "language models: evaluation corpus used whole (default: "
                                     "the held-out chunks of --data_dir's corpus)")
_SPLIT = script_flags.define("split", help="evaluation split (default: the model's)")
_N_EVAL = script_flags.define("n_eval_samples")
_DELTA = script_flags.define("score_target_difference")
_OUT_DIR = script_flags.define("out_dir", help="default: out/compare_<model>")
_RERUN = script_flags.define("rerun")
_OVERWRITE = script_flags.define("overwrite")


def main(argv):
    del argv
    family = registry.get(_MODEL.value)
    opts = script_flags.options(split=None)  # --split is the evaluation's
    request = comparing.Request(_SPLIT.value, _N_EVAL.value, _EVAL_DATA_DIR.value,
                                _DELTA.value, _RERUN.value, _OVERWRITE.value)
    out_dir = Path(_OUT_DIR.value or f"out/compare_{family.name}")
    comparing.report(*comparing.run(family, opts, request, out_dir)[1:], out_dir)


if __name__ == "__main__":
    cli.run(main)
