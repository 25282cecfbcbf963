"""Node and edge ablations of a built graph: how much of the model do its directions and edges keep?

    python scripts/compute_basis.py                       # writes out/modadd_lib
    python scripts/ablate.py --graph_dir=out/modadd_lib   # the paper's settings for the model
    python scripts/ablate.py --graph_dir=out/modadd_pca \\
        --compare=out/modadd_lib/ablations/modadd_lib_lib_ablation_results.json
    python scripts/ablate.py --graph_dir=out/modadd_lib --ablations=node --schedule=linear \\
        --n_points=20 --metric=ce_loss
    python scripts/ablate.py --model=mlp --graph_dir=out/mlp_mnist_lib --data_dir=~/data/mnist
    python scripts/ablate.py --graph_dir=out/llama_lib               # a language model: next-token
                                                                     # loss on held-out chunks
    python scripts/ablate.py --graph_dir=out/llama_lib --data_dir=eval.txt --metric=kl

The model is rebuilt from the graph's build record (``--model``/``--checkpoint`` override it) and
evaluated in ``--dtype`` (float32, as in the paper). Evaluation data: a model's labelled split
(``--dataset``/``--data_dir`` as for ``compute_basis.py``; MNIST and CIFAR-10 MLPs need their
files); for a language model, chunks of the build's context scored on every next token: by
default the build corpus's held-out chunks (the last tenth less those the build drew), or the
whole of ``--data_dir``, at most ``--n_samples`` of them. Writes, under ``--out_dir``,
``<exp>_<basis>_ablation_results.json`` (node) and ``<exp>_edge_ablation_results.json`` (edge),
each with a PNG/SVG plot; ``--compare`` adds other result files of the same kind to the plots.
"""

from __future__ import annotations

from absl import flags

from libjax import ablation
from libjax.errors import ConfigError
from libjax.runtime import cli, precision
from libjax.storage import store
from models import ablating, script_flags
from models.opened import open_build

_GRAPH_DIR = script_flags.define("graph_dir", required=True)
_MODEL = script_flags.define("model")
_CHECKPOINT = script_flags.define("checkpoint")
_ABLATIONS = flags.DEFINE_string("ablations", "node,edge", "which ablations: node, edge or both")
_NODE_LAYERS = script_flags.define(
    "node_layers", help="comma-separated node layers to ablate (default: every layer with a "
    "basis for node ablation, every edge matrix's input layer for edge ablation)")
_BASIS = flags.DEFINE_enum("basis", "lib", list(ablation.NODE_BASES),
                           "node ablation in the graph's basis C (lib) or in the PCA projection "
                           "W of the layer's Gram matrix (pca)")
_SCHEDULE = flags.DEFINE_enum("schedule", None, ["exponential", "linear", "explicit"],
                              "node ablation schedule (explicit: only --specific_points; default: "
                              "the model's, linear for language models, else exponential)")
_CUTOFF = flags.DEFINE_integer("ablate_every_vec_cutoff", None,
                               "exponential schedule: ablate every direction for the last this "
                               "many (default: the model's)")
_EXP_BASE = flags.DEFINE_float("exp_base", None, "exponential schedule base (default: the model's)")
_N_POINTS = flags.DEFINE_integer("n_points", None,
                                 "linear schedule: number of points (default: the model's)")
_SPECIFIC = flags.DEFINE_string("specific_points", None,
                                "comma-separated numbers of directions remaining to add")
_EARLY_STOP = flags.DEFINE_float("early_stopping_threshold", None,
                                 "stop a layer once its score moves this far from the first point "
                                 "(default: the model's; 1.5 for language models)")
_DELTA = script_flags.define(
    "score_target_difference", help="edge bisection: largest allowed change of the metric "
    "(default: the model's; 0.001, language models 0.05 nats)")
_SCALING = flags.DEFINE_enum("bisect_scaling", "linear", ["linear", "logarithmic"],
                             "edge bisection proposals")
_TOLERANCE = flags.DEFINE_integer("tolerance", 1, "edge bisection: stop within this many edges")
_DATASET = script_flags.define("dataset")
_DATA_DIR = script_flags.define("data_dir", help="evaluation data: the dataset's files, or for a "
                                "language model a corpus (.txt/.jsonl/.npy file or directory) "
                                "used whole")
_METRIC = flags.DEFINE_enum("metric", None, list(ablation.METRICS), "default: the model's")
_SPLIT = script_flags.define("split", help="evaluation split (default: the model's)")
_N_SAMPLES = script_flags.define("n_samples", help="evaluate on the first n samples only "
                                 "(default: all; language models 100 chunks)")
_BATCH = flags.DEFINE_integer("batch_size", None, "evaluation batch (default: the model's)")
_DTYPE = script_flags.define("dtype", "float32", "evaluation dtype")
_OUT_DIR = script_flags.define("out_dir", help="default: <graph_dir>/ablations")
_EXP_NAME = flags.DEFINE_string("exp_name", None, "file name prefix (default: graph dir name)")
_COMPARE = flags.DEFINE_string("compare", None,
                               "comma-separated result files of other graphs to plot alongside")
_PLOT = flags.DEFINE_boolean("plot", True, "write PNG/SVG plots")


def _specific_points() -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in cli.comma_list(_SPECIFIC.value) or ())
    except ValueError:
        raise ConfigError(f"--specific_points must be comma-separated integers, got "
                          f"{_SPECIFIC.value!r}") from None


def main(argv):
    del argv
    # Float64 where the build was made in float64 (as before) or asked for; a mixed build is
    # ablated with JAX's 64-bit types as the process has them (off on a TPU).
    recorded = precision.of_record(store.open_complete(_GRAPH_DIR.value)[1])
    precision.enable_for("float64" if _DTYPE.value == "float64" else recorded)
    build = open_build(_GRAPH_DIR.value, _MODEL.value, _CHECKPOINT.value, dataset=_DATASET.value,
                       split=_SPLIT.value, n_gram_samples=None, dtype=_DTYPE.value)
    request = ablating.Request(
        ablations=cli.comma_list(_ABLATIONS.value) or (),
        node_layers=cli.comma_list(_NODE_LAYERS.value), basis=_BASIS.value,
        schedule=_SCHEDULE.value,
        ablate_every_vec_cutoff=_CUTOFF.value if _CUTOFF.present else ablation.MODEL_DEFAULT,
        exp_base=_EXP_BASE.value, n_points=_N_POINTS.value, specific_points=_specific_points(),
        early_stopping_threshold=(_EARLY_STOP.value if _EARLY_STOP.present
                                  else ablation.MODEL_DEFAULT),
        score_target_difference=_DELTA.value, bisect_scaling=_SCALING.value,
        tolerance=_TOLERANCE.value, out_dir=_OUT_DIR.value, exp_name=_EXP_NAME.value,
        compare=cli.comma_list(_COMPARE.value) or (), plot=_PLOT.value)
    evaluation = ablating.Evaluation(metric=_METRIC.value, n_samples=_N_SAMPLES.value,
                                     batch_size=_BATCH.value, data_dir=_DATA_DIR.value,
                                     dtype=_DTYPE.value)
    ablating.run(build, request, evaluation)


if __name__ == "__main__":
    cli.run(main, float64=False)  # main enables float64 where the build's policy needs it
