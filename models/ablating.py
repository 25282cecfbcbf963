"""Node and edge ablations of a finished build, as ``ablate.py`` and the explorer run them: the
family's evaluation data, whole model, metric and schedule, the result records and their plots
(the ablations themselves are :mod:`libjax.ablation`; this module adds the family, so it lives
in ``models``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from libjax import ablation
from libjax.ablation import records
from libjax.analysis import plots
from libjax.errors import ConfigError
from libjax.storage import files
from models.opened import OpenedBuild

KINDS = ("node", "edge")


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What an ablation is scored on (None: the model's, :meth:`Family.ablation_defaults`).

    Attributes:
      metric, split, n_samples, batch_size: the evaluation's (n_samples: the first n only).
      data_dir: evaluation data: the dataset's files, or a language model's corpus used whole.
      dtype: the model's dtype during the ablations (float32, as in the paper); the weights
        are loaded in the build's options' dtype (``open_build(..., dtype=)``) and cast.
    """

    metric: Optional[str] = None
    split: Optional[str] = None
    n_samples: Optional[int] = None
    batch_size: Optional[int] = None
    data_dir: Optional[str] = None
    dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class Request:
    """Which ablations of a build, and how (None and :data:`ablation.MODEL_DEFAULT`: the
    model's).

    Attributes:
      ablations: ``node``, ``edge`` or both.
      node_layers: the node layers to ablate (None: every layer with a basis for node ablation,
        every edge matrix's input layer for edge ablation).
      basis: node ablation in the graph's ``C`` (``lib``) or in the PCA projection ``W``
        (``pca``).
      schedule, ablate_every_vec_cutoff, exp_base, n_points, specific_points,
        early_stopping_threshold: the node ablation's points (:func:`ablation.schedule_for`).
      score_target_difference, bisect_scaling, tolerance: the edge bisection.
      out_dir: where the records go (None: ``<graph_dir>/ablations``); exp_name: their file
        name prefix (None: the build directory's name).
      compare: result files of other graphs to draw beside these; plot: write the PNG/SVG
        plots.
    """

    ablations: tuple[str, ...] = KINDS
    node_layers: Optional[tuple[str, ...]] = None
    basis: str = "lib"
    schedule: Optional[str] = None
    ablate_every_vec_cutoff: Any = ablation.MODEL_DEFAULT
    exp_base: Optional[float] = None
    n_points: Optional[int] = None
    specific_points: tuple[int, ...] = ()
    early_stopping_threshold: Any = ablation.MODEL_DEFAULT
    score_target_difference: Optional[float] = None
    bisect_scaling: str = "linear"
    tolerance: int = 1
    out_dir: Optional[str] = None
    exp_name: Optional[str] = None
    compare: tuple[str, ...] = ()
    plot: bool = True

    def plan(self, defaults: dict) -> tuple[ablation.Schedule, ablation.Bisect]:
        """The node schedule and the edge bisection over the model's ``defaults``, checked."""
        if not self.ablations or set(self.ablations) - set(KINDS):
            raise ConfigError(f"--ablations must list node and/or edge, got "
                              f"{','.join(self.ablations)!r}")
        schedule = ablation.schedule_for(
            defaults, self.schedule, self.ablate_every_vec_cutoff, self.exp_base, self.n_points,
            self.specific_points, self.early_stopping_threshold)
        delta = self.score_target_difference
        delta = defaults.get("score_target_difference", 0.001) if delta is None else delta
        bisect = ablation.Bisect(delta, self.bisect_scaling, self.tolerance)
        if "node" in self.ablations:
            schedule.validate()
        if "edge" in self.ablations:
            bisect.validate()
        return schedule, bisect


def model_defaults(build: OpenedBuild) -> dict:
    """The family's ablation settings for the build's checkpoint and data."""
    defaults = build.family.ablation_defaults(build.opts)
    if defaults is None:
        raise ConfigError(f"--model={build.family.name} has no labelled evaluation data to "
                          "ablate on")
    return defaults


@dataclasses.dataclass(frozen=True)
class Evaluating:
    """An evaluator of the build's whole model on its evaluation data, and what it scores."""

    evaluator: ablation.Evaluator
    opts: Any  # models.family.Options of the evaluation
    metric: str
    batch_size: int
    n_samples: int
    source: dict  # where the evaluation data came from (for the records)


def evaluator(build: OpenedBuild, evaluation: Evaluation = Evaluation()) -> Evaluating:
    """The whole model of ``build`` on the family's evaluation data (``evaluation``'s settings
    over the model's)."""
    defaults = model_defaults(build)
    opts = dataclasses.replace(build.opts, split=build.opts.split or defaults.get("split"),
                               n_samples=evaluation.n_samples or defaults.get("n_samples"),
                               n_gram_samples=None)
    data = build.family.evaluation_data(opts, build.info, evaluation.data_dir)
    metric = evaluation.metric or defaults["metric"]
    batch_size = defaults["batch_size"] if evaluation.batch_size is None else \
        evaluation.batch_size
    if batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1, got {batch_size}")
    ev = ablation.Evaluator(build.family.load(opts, build.graph.node_layers), data.inputs,
                            data.labels, metric=metric, batch_size=batch_size,
                            dtype=evaluation.dtype)
    return Evaluating(ev, opts, metric, batch_size, len(data.inputs), data.source or {})


def run(build: OpenedBuild, request: Request, evaluation: Evaluation = Evaluation(),
        say: Callable[[str], None] = print) -> dict[str, Path]:
    """The ``request``ed ablations of ``build``, scored as ``evaluation`` says; writes each
    record (``<exp>_<basis>_ablation_results.json``, ``<exp>_edge_ablation_results.json``) and
    its plot, tells ``say`` what it did, and returns the records' paths by kind."""
    defaults = model_defaults(build)
    schedule, bisect = request.plan(defaults)  # before the model and data load
    compare = [records.read_record(p, "--compare") for p in request.compare]
    scoring = evaluator(build, evaluation)
    opts, graph = scoring.opts, build.graph
    exp = request.exp_name or build.directory.name
    out_dir = Path(request.out_dir) if request.out_dir else build.directory / "ablations"
    common = {"exp_name": exp, "graph_dir": str(build.directory), "model": build.family.name,
              "checkpoint": str(opts.checkpoint), "graph_basis": graph.config.get("basis"),
              "dataset": opts.dataset, "data_dir": evaluation.data_dir or opts.data_dir,
              "metric": scoring.metric, "split": opts.split, "n_samples": scoring.n_samples,
              "batch_size": scoring.batch_size, "dtype": evaluation.dtype, **scoring.source}
    where = scoring.source.get("evaluation_data", "") or f"{opts.split} split"
    say(f"{exp}: unablated {scoring.metric} on {scoring.n_samples} samples ({where}): "
        f"{scoring.evaluator.base():.7g}")
    layers = request.node_layers
    paths = {}
    if "node" in request.ablations:
        layers_node = layers or tuple(n for n in graph.node_layers if n in graph.bases)
        record = ablation.node_experiment(scoring.evaluator, graph, layers_node, schedule,
                                          request.basis, common)
        paths["node"] = out_dir / f"{exp}_{request.basis}_ablation_results.json"
        _write(record, paths["node"])
        say(f"node ablation ({request.basis} basis, {record['time_taken']}) -> {paths['node']}")
        for name, scores in record["results"].items():
            say(f"  {name}: " + ", ".join(f"{k}: {v:.4g}" for k, v in scores.items()
                                          if int(k) <= 20))
        if request.plot:
            _plot(record, paths["node"].with_name(f"{exp}_{request.basis}_ablation.png"),
                  compare, say)
    if "edge" in request.ablations:
        pairs = [p for p in graph.edge_pairs
                 if p in graph.edges and (not layers or p[0] in layers)]
        if not pairs:
            starts = ", ".join(a for a, _ in graph.edges) or "(none: build with edges)"
            raise ConfigError(f"no edge matrix starts at {list(layers or ())}; edge matrices "
                              f"start at {starts}")
        record = ablation.edge_experiment(scoring.evaluator, graph, pairs, bisect, common)
        paths["edge"] = out_dir / f"{exp}_edge_ablation_results.json"
        _write(record, paths["edge"])
        say(f"edge ablation ({record['time_taken']}) -> {paths['edge']}")
        for a, b in pairs:
            n = graph.orig_dims[a] * graph.orig_dims[b]
            say(f"  {a}->{b}: {record['n_edges_required'][a]} of {n} edges needed")
        if request.plot:
            _plot(record, paths["edge"].with_name(f"{exp}_edge_ablation.png"), compare, say)
    return paths


def _write(record: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_json_atomic(path, record)


def _plot(record: dict, path: Path, compare, say) -> None:
    """Curves of ``record`` and of the ``compare`` records of the same kind (node or edge)."""
    edge = record["config"]["ablation_type"] == "edge"
    others = [r for r in compare if (r["config"]["ablation_type"] == "edge") == edge]
    for p in plots.ablation_curves([record, *others], path.with_suffix("")):
        say(f"  plot: {p}")
