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

import dataclasses
from pathlib import Path

import numpy as np
from absl import flags

from libjax import ablation, build
from libjax.analysis import comparison
from libjax.errors import ConfigError
from libjax.runtime import cli
from libjax.storage import files
from models import registry
from models.family import Options

_MODEL = flags.DEFINE_string("model", "mlp", "model family: " + ", ".join(registry.FAMILIES))
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "weights (default: the model's shipped "
                                  "checkpoint)")
_DATASET = flags.DEFINE_string("dataset", None, "dataset name (model-specific; default: model's)")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "local directory with the dataset's files")
_N_SAMPLES = flags.DEFINE_integer("n_samples", None,
                                  "build the graphs on the first n train samples only")
_N_GRAM_SAMPLES = flags.DEFINE_integer("n_gram_samples", None,
                                       "samples for the means and Grams (default: --n_samples)")
_LAYER = flags.DEFINE_integer("layer", None, "language models: the block to compare (default 0)")
_N_CTX = flags.DEFINE_integer("n_ctx", None, "language models: tokens per sample")
_EVAL_DATA_DIR = flags.DEFINE_string("eval_data_dir", None,
                                     "language models: evaluation corpus used whole (default: "
                                     "the held-out chunks of --data_dir's corpus)")
_SPLIT = flags.DEFINE_string("split", None, "evaluation split (default: the model's)")
_N_EVAL = flags.DEFINE_integer("n_eval_samples", None, "evaluate on the first n samples only")
_DELTA = flags.DEFINE_float("score_target_difference", None,
                            "largest allowed change of the metric for edges required and "
                            "directions needed (default: the model's; 0.001, language models "
                            "0.05 nats)")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "default: out/compare_<model>")
_RERUN = flags.DEFINE_boolean("rerun", False, "recompute ablation records that already exist")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False,
                                  "replace graphs in --out_dir built with other settings")


def _plan(family, opts: Options, defaults: dict) -> comparison.Plan:
    schedule = ablation.schedule_for(defaults)
    delta = _DELTA.value if _DELTA.value is not None else defaults.get(
        "score_target_difference", 0.001)
    plan = comparison.Plan(build.BuildConfig(**family.build_defaults(opts)), schedule,
                           ablation.Bisect(delta, "linear", 1))
    plan.validate()
    return plan


def main(argv):
    del argv
    family = registry.get(_MODEL.value)
    opts = Options(checkpoint=_CHECKPOINT.value, dataset=_DATASET.value,
                   data_dir=_DATA_DIR.value, n_samples=_N_SAMPLES.value,
                   n_gram_samples=_N_GRAM_SAMPLES.value, layer=_LAYER.value, n_ctx=_N_CTX.value)
    defaults = family.ablation_defaults(opts)
    if defaults is None:
        usable = [n for n in registry.FAMILIES
                  if registry.get(n).ablation_defaults(Options()) is not None]
        raise ConfigError(f"--model={family.name} has no labelled evaluation data to ablate on; "
                          f"compare bases of {', '.join(usable)}")
    eval_opts = dataclasses.replace(opts, split=_SPLIT.value or defaults["split"],
                                    n_samples=_N_EVAL.value or defaults.get("n_samples"),
                                    dtype="float32")
    plan = _plan(family, opts, defaults)
    node_layers = family.node_layers(opts)
    data = family.data(opts)
    build_info = {"data": data.source, "n_samples": len(data.inputs),
                  "n_gram_samples": len(data.gram_inputs)}
    eval_data = family.evaluation_data(eval_opts, build_info, _EVAL_DATA_DIR.value)
    ev = ablation.Evaluator(family.load(eval_opts, node_layers), eval_data.inputs,
                            eval_data.labels, defaults["metric"], defaults["batch_size"],
                            np.float32)
    out_dir = Path(_OUT_DIR.value or f"out/compare_{family.name}")
    model_id = family.model_id(opts)
    where = (eval_data.source or {}).get("evaluation_data") or f"{eval_opts.split} split"
    common = {"model": family.name, "checkpoint": model_id, "dataset": opts.dataset,
              "data_dir": opts.data_dir, "split": eval_opts.split,
              "n_samples": len(eval_data.inputs), **(eval_data.source or {})}
    outcomes = comparison.compare(family.load(opts, node_layers), data.inputs, ev, plan, out_dir,
                                  common=common, gram_inputs=data.gram_inputs, model_id=model_id,
                                  rerun=_RERUN.value, overwrite=_OVERWRITE.value,
                                  data_record=data.source)
    title = f"{Path(model_id).stem}, {where} ({len(eval_data.inputs)} samples)"
    paths = comparison.plot(outcomes, out_dir, title=title)
    summary = comparison.summarize(outcomes, plan.bisect.score_target_difference,
                                   family.sections(node_layers))
    summary.update(common, n_build_samples=len(data.inputs))
    lines = [f"# LIB against PCA: {family.name} {model_id}", "",
             f"Graphs built on {len(data.inputs)} samples (float64); ablations on "
             f"{len(eval_data.inputs)} samples ({where}, float32), {summary['metric']}; "
             f"unablated {summary['no_ablation_result']:.4f}.", ""]
    lines += comparison.layer_table(summary)
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")
    files.write_json_atomic(out_dir / "comparison.json", summary)
    print("\n".join(lines))
    print(f"written to {out_dir}: table.md, comparison.json, "
          + ", ".join(p.name for p in paths))


if __name__ == "__main__":
    cli.run(main)
