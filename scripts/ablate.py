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

import dataclasses
import json
from pathlib import Path

from absl import flags

from libjax import ablation
from libjax.analysis import plots
from libjax.errors import ConfigError, DataError
from libjax.runtime import cli, precision
from libjax.storage import files, store
from models import registry
from models.opened import open_build

_GRAPH_DIR = flags.DEFINE_string("graph_dir", None, "a finished build (compute_basis.py --out_dir)",
                                 required=True)
_MODEL = flags.DEFINE_string("model", None, "model family (default: the build's): "
                             + ", ".join(registry.FAMILIES))
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "weights (default: the build's)")
_ABLATIONS = flags.DEFINE_string("ablations", "node,edge", "which ablations: node, edge or both")
_NODE_LAYERS = flags.DEFINE_string(
    "node_layers", None, "comma-separated node layers to ablate (default: every layer with a "
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
_DELTA = flags.DEFINE_float("score_target_difference", None,
                            "edge bisection: largest allowed change of the metric (default: the "
                            "model's; 0.001, language models 0.05 nats)")
_SCALING = flags.DEFINE_enum("bisect_scaling", "linear", ["linear", "logarithmic"],
                             "edge bisection proposals")
_TOLERANCE = flags.DEFINE_integer("tolerance", 1, "edge bisection: stop within this many edges")
_DATASET = flags.DEFINE_string("dataset", None, "dataset name (model-specific; default: model's)")
_DATA_DIR = flags.DEFINE_string("data_dir", None,
                                 "evaluation data: the dataset's files, or for a language model "
                                 "a corpus (.txt/.jsonl/.npy file or directory) used whole")
_METRIC = flags.DEFINE_enum("metric", None, list(ablation.METRICS), "default: the model's")
_SPLIT = flags.DEFINE_string("split", None, "evaluation split (default: the model's)")
_N_SAMPLES = flags.DEFINE_integer("n_samples", None, "evaluate on the first n samples only "
                                  "(default: all; language models 100 chunks)")
_BATCH = flags.DEFINE_integer("batch_size", None, "evaluation batch (default: the model's)")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "float64"], "evaluation dtype")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "default: <graph_dir>/ablations")
_EXP_NAME = flags.DEFINE_string("exp_name", None, "file name prefix (default: graph dir name)")
_COMPARE = flags.DEFINE_string("compare", None,
                               "comma-separated result files of other graphs to plot alongside")
_PLOT = flags.DEFINE_boolean("plot", True, "write PNG/SVG plots")

def _int_list(value):
    try:
        return tuple(int(v) for v in cli.comma_list(value) or ())
    except ValueError:
        raise ConfigError(f"--specific_points must be comma-separated integers, got {value!r}") \
            from None


def _read_records(paths):
    records = []
    for path in paths:
        try:
            with open(path) as f:
                records.append(json.load(f))
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"cannot read ablation results {path}: {err}") from None
        if "results" not in records[-1] or "ablation_type" not in records[-1].get("config", {}):
            raise DataError(f"{path} is not an ablation result file of ablate.py (--compare)")
    return records


def _write(record, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_json_atomic(path, record)


def _plot(record, path: Path, compare: list) -> None:
    """Curves of ``record`` and of the ``compare`` records of the same kind (node or edge)."""
    edge = record["config"]["ablation_type"] == "edge"
    others = [r for r in compare if (r["config"]["ablation_type"] == "edge") == edge]
    for p in plots.ablation_curves([record] + others, path.with_suffix("")):
        print(f"  plot: {p}")


def _settings(defaults: dict):
    """The requested ablations and their schedules, checked before anything is loaded."""
    kinds = cli.comma_list(_ABLATIONS.value) or ()
    if not kinds or set(kinds) - {"node", "edge"}:
        raise ConfigError(f"--ablations must list node and/or edge, got {_ABLATIONS.value!r}")
    schedule = ablation.schedule_for(
        defaults, _SCHEDULE.value, _CUTOFF.value if _CUTOFF.present else ablation.MODEL_DEFAULT,
        _EXP_BASE.value, _N_POINTS.value, _int_list(_SPECIFIC.value),
        _EARLY_STOP.value if _EARLY_STOP.present else ablation.MODEL_DEFAULT)
    delta = _DELTA.value if _DELTA.value is not None else defaults.get(
        "score_target_difference", 0.001)
    bisect = ablation.Bisect(delta, _SCALING.value, _TOLERANCE.value)
    if "node" in kinds:
        schedule.validate()
    if "edge" in kinds:
        bisect.validate()
    return kinds, schedule, bisect


def _node(ev, graph, layers, schedule, common, out_dir: Path, exp: str, compare) -> None:
    layers = layers or tuple(n for n in graph.node_layers if n in graph.bases)
    record = ablation.node_experiment(ev, graph, layers, schedule, _BASIS.value, common)
    path = out_dir / f"{exp}_{_BASIS.value}_ablation_results.json"
    _write(record, path)
    print(f"node ablation ({_BASIS.value} basis, {record['time_taken']}) -> {path}")
    for name, scores in record["results"].items():
        print(f"  {name}: " + ", ".join(f"{k}: {v:.4g}" for k, v in scores.items()
                                        if int(k) <= 20))
    if _PLOT.value:
        _plot(record, path.with_name(f"{exp}_{_BASIS.value}_ablation.png"), compare)


def _edge(ev, graph, layers, bisect, common, out_dir: Path, exp: str, compare) -> None:
    pairs = [p for p in graph.edge_pairs if p in graph.edges and (not layers or p[0] in layers)]
    if not pairs:
        raise ConfigError(f"no edge matrix starts at {list(layers or ())}; edge matrices start at "
                          f"{', '.join(a for a, _ in graph.edges) or '(none: build with edges)'}")
    record = ablation.edge_experiment(ev, graph, pairs, bisect, common)
    path = out_dir / f"{exp}_edge_ablation_results.json"
    _write(record, path)
    print(f"edge ablation ({record['time_taken']}) -> {path}")
    for a, b in pairs:
        n = graph.orig_dims[a] * graph.orig_dims[b]
        print(f"  {a}->{b}: {record['n_edges_required'][a]} of {n} edges needed")
    if _PLOT.value:
        _plot(record, path.with_name(f"{exp}_edge_ablation.png"), compare)


def main(argv):
    del argv
    # Float64 where the build was made in float64 (as before) or asked for; a mixed build is
    # ablated with JAX's 64-bit types as the process has them (off on a TPU).
    recorded = precision.of_record(store.open_complete(_GRAPH_DIR.value)[1])
    precision.enable_for("float64" if _DTYPE.value == "float64" else recorded)
    opened = open_build(_GRAPH_DIR.value, _MODEL.value, _CHECKPOINT.value,
                        dataset=_DATASET.value, split=_SPLIT.value, n_gram_samples=None,
                        dtype=_DTYPE.value)
    family, graph, graph_dir = opened.family, opened.graph, opened.directory
    defaults = family.ablation_defaults(opened.opts)  # the model's, for its checkpoint and data
    if defaults is None:
        raise ConfigError(f"--model={family.name} has no labelled evaluation data to ablate on")
    opts = dataclasses.replace(opened.opts, split=opened.opts.split or defaults.get("split"),
                               n_samples=_N_SAMPLES.value or defaults.get("n_samples"))
    kinds, schedule, bisect = _settings(defaults)
    compare = _read_records(cli.comma_list(_COMPARE.value) or ())
    data = family.evaluation_data(opts, opened.info, _DATA_DIR.value)
    metric = _METRIC.value or defaults["metric"]
    batch_size = defaults["batch_size"] if _BATCH.value is None else _BATCH.value
    if batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1, got {batch_size}")
    ev = ablation.Evaluator(family.load(opts, graph.node_layers), data.inputs, data.labels,
                            metric=metric, batch_size=batch_size, dtype=_DTYPE.value)
    exp = _EXP_NAME.value or graph_dir.name
    out_dir = Path(_OUT_DIR.value) if _OUT_DIR.value else graph_dir / "ablations"
    common = {"exp_name": exp, "graph_dir": str(graph_dir), "model": family.name,
              "checkpoint": str(opts.checkpoint), "graph_basis": graph.config.get("basis"),
              "dataset": opts.dataset, "data_dir": _DATA_DIR.value or opts.data_dir,
              "metric": metric, "split": opts.split, "n_samples": len(data.inputs),
              "batch_size": batch_size, "dtype": _DTYPE.value, **(data.source or {})}
    where = (data.source or {}).get("evaluation_data", "") or f"{opts.split} split"
    print(f"{exp}: unablated {metric} on {len(data.inputs)} samples ({where}): {ev.base():.7g}")
    layers = cli.comma_list(_NODE_LAYERS.value)
    if "node" in kinds:
        _node(ev, graph, layers, schedule, common, out_dir, exp, compare)
    if "edge" in kinds:
        _edge(ev, graph, layers, bisect, common, out_dir, exp, compare)


if __name__ == "__main__":
    cli.run(main, float64=False)  # main enables float64 where the build's policy needs it
