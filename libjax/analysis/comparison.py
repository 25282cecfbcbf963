"""LIB against PCA on one model: the paper's comparison of the two bases (arXiv 2405.10928).

:func:`compare` builds the LIB and the PCA graph of a model on the same data and ablates both
the same way on the same evaluation data: node ablation of every node layer with a basis, each
graph in its own basis ``C`` (as the paper ablates its PCA graphs, whose ``C`` is the PCA
projection ``W``), then edge ablation by bisection for the edges each transition requires.
Everything goes under one directory: the graphs in ``<prefix>lib`` and ``<prefix>pca``, the
records in ``<prefix><basis>_{node,edge}_ablation_results.json``. Running the same comparison
again resumes: a graph like any build, and a record is read back when it was made with exactly
the same configuration, graph and evaluation data (anything else is recomputed, never mixed in).

:func:`plot` draws both bases on one figure per kind of ablation; :func:`summarize` reduces the
records to per-layer numbers (directions kept and needed, edges required) and
:func:`layer_table` writes them as Markdown.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import numpy as np

from libjax import ablation, pipeline
from libjax.ablation import experiments
from libjax.analysis import plots
from libjax.kinds import class_of
from libjax.storage import files, store
from libjax.storage.graph import Graph

BASES = {"lib": "LIB", "pca": "PCA"}
NODE_ABLATION = "lib"  # each graph in its own C (the PCA graph's C is its W)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How both graphs are built and ablated.

    Attributes:
      build: the build configuration; its ``basis`` is replaced by each of :data:`BASES`.
      schedule: the node-ablation schedule.
      bisect: the edge-ablation bisection; its ``score_target_difference`` also decides how many
        directions a layer needs (:func:`directions_needed`).
    """

    build: pipeline.BuildConfig
    schedule: ablation.Schedule
    bisect: ablation.Bisect

    def validate(self) -> None:
        self.schedule.validate()
        self.bisect.validate()


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One basis's side of a comparison.

    Attributes:
      graph: the graph.
      build_seconds: how long its build took when it was computed (its ``summary.json``).
      node, edge: the node- and edge-ablation result records.
    """

    graph: Graph
    build_seconds: float
    node: dict
    edge: dict


def _digest(*parts) -> str:
    """A short fingerprint of arrays and JSON-able values (what a record was made from)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(np.ascontiguousarray(part).tobytes() if isinstance(part, np.ndarray)
                 else json.dumps(part, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _reuse_or_run(path: Path, config: dict, rerun: bool, run) -> dict:
    """The record at ``path`` if it was made with ``config`` (and not ``rerun``), else ``run()``'s
    record, written to ``path``."""
    if not rerun:
        try:
            saved = files.read_json(path)
        except (OSError, ValueError):  # absent, or a damaged file that is recomputed
            saved = None
        if saved is not None and saved.get("config") == json.loads(json.dumps(config)):
            return saved
    record = run()
    files.write_json_atomic(path, record)
    return record


def _with_basis(cfg: pipeline.BuildConfig, basis: str) -> pipeline.BuildConfig:
    """``cfg`` for ``basis``: stochastic ``M'`` sources (a language model's default) apply only
    to LIB, as in ``pipeline.config.resolve``."""
    if class_of(basis).needs_m_prime:
        return dataclasses.replace(cfg, basis=basis)
    return dataclasses.replace(cfg, basis=basis, n_stochastic_sources_basis_pos=None,
                               n_stochastic_sources_basis_hidden=None)


def compare(model, inputs, ev: ablation.Evaluator, plan: Plan, out_dir, prefix: str = "",
            common: Optional[dict] = None, gram_inputs=None, model_id: str = "",
            rerun: bool = False, overwrite: bool = False,
            data_record: Optional[dict] = None) -> dict[str, Outcome]:
    """Build and ablate the LIB and the PCA graph of ``model``.

    Args:
      model: the sectioned model to build the graphs of (typically float64).
      inputs, gram_inputs: the build's data (``gram_inputs`` default ``inputs``).
      ev: the evaluator of the ablations (model in the evaluation dtype, labelled data, metric).
      plan: build configuration, node schedule and edge bisection.
      out_dir: where graphs and records go; ``prefix`` starts their names.
      common: fields recorded in every record's configuration (model, split, ...); the metric,
        the evaluation dtype and fingerprints of the graph and of the evaluation data are added.
      model_id: identifies the weights in the builds' records.
      rerun: recompute the records even when matching ones exist.
      overwrite: replace graphs in ``out_dir`` built with other settings.
      data_record: where ``inputs`` came from, kept in the builds' records.
    Returns:
      ``{basis: Outcome}`` for ``lib`` and ``pca``.
    """
    plan.validate()
    out_dir = Path(out_dir).resolve()  # orbax needs absolute paths
    out_dir.mkdir(parents=True, exist_ok=True)
    eval_data = _digest(*(np.asarray(a) for x, y, w in ev.batches for a in (x, y, w)))
    outcomes = {}
    for basis, label in BASES.items():
        graph_dir = out_dir / f"{prefix}{basis}"
        graph = pipeline.build(model, inputs, _with_basis(plan.build, basis),
                            gram_inputs=gram_inputs, out_dir=graph_dir, overwrite=overwrite,
                            model_id=model_id, data_record=data_record)
        _, info, summary = store.open_complete(graph_dir)
        config = dict(common or {}, exp_name=f"{prefix}{basis}", graph_basis=basis, label=label,
                      metric=ev.metric, dtype=str(ev.dtype), graph_dir=str(graph_dir),
                      graph_build=_digest(info), eval_data=eval_data)
        layers = [n for n in graph.node_layers if n in graph.bases]
        pairs = [p for p in graph.edge_pairs if p in graph.edges]
        node = _reuse_or_run(
            out_dir / f"{prefix}{basis}_node_ablation_results.json",
            experiments.node_config(config, layers, plan.schedule, NODE_ABLATION), rerun,
            lambda: experiments.node_experiment(ev, graph, layers, plan.schedule, NODE_ABLATION,
                                                config))
        edge = _reuse_or_run(
            out_dir / f"{prefix}{basis}_edge_ablation_results.json",
            experiments.edge_config(config, pairs, plan.bisect), rerun,
            lambda: experiments.edge_experiment(ev, graph, pairs, plan.bisect, config))
        outcomes[basis] = Outcome(graph, float(sum(summary.get("timings_s", {}).values())),
                                  node, edge)
    return outcomes


def plot(outcomes: Mapping[str, Outcome], out_dir, prefix: str = "", title: str = "",
         summary: Optional[Mapping] = None) -> list[Path]:
    """``<prefix>node_ablation`` and ``<prefix>edge_ablation`` (PNG and SVG): the bases' curves
    on one figure per kind of ablation; with a :func:`summarize` ``summary`` whose layers belong
    to sections (a language model), also ``<prefix>edges_per_transition``."""
    paths = []
    for kind in ("node", "edge"):
        records = [getattr(o, kind) for o in outcomes.values()]
        paths += plots.ablation_curves(records, Path(out_dir) / f"{prefix}{kind}_ablation",
                                       title=f"{title}: {kind} ablation" if title else None)
    if summary is not None and summary.get("sections"):
        paths += plots.edges_per_transition(
            summary, Path(out_dir) / f"{prefix}edges_per_transition",
            title=f"{title}: edges required" if title else None)
    return paths


def directions_needed(scores: Mapping, good) -> Optional[int]:
    """The fewest directions remaining such that the score at this and at every larger evaluated
    number of directions is ``good``, read off a node-ablation curve ``{n_remaining: score}``
    (None if even the largest is not)."""
    needed = None
    for n, score in sorted(((int(k), v) for k, v in scores.items()), reverse=True):
        if not good(score):
            break
        needed = n
    return needed


def summarize(outcomes: Mapping[str, Outcome], score_target_difference: float,
              sections: Optional[Mapping[str, str]] = None) -> dict:
    """Per node layer: its width, the directions each basis keeps (after truncation) and needs
    (:func:`directions_needed` within ``score_target_difference``), and the edges each basis
    requires from it to the next layer; plus the unablated score and the time each part took.
    ``sections``: the part of the model each node layer's outgoing transition belongs to (a
    transformer's ``attention`` or ``MLP``); then the edges required are also summed per part."""
    first = next(iter(outcomes.values()))
    metric, base = first.node["config"]["metric"], first.node["no_ablation_result"]
    good = ablation.is_good(metric, base, score_target_difference)
    graph = first.graph
    nexts = dict(graph.edge_pairs)
    layers = {}
    for name in graph.node_layers:
        entry = {"width": int(graph.orig_dims[name]), "next": nexts.get(name),
                 "section": (sections or {}).get(name) if name in nexts else None,
                 "possible_edges": (int(graph.orig_dims[name] * graph.orig_dims[nexts[name]])
                                    if name in nexts else None)}
        for key in ("directions_kept", "directions_needed", "edges_required"):
            entry[key] = {}
        for basis, o in outcomes.items():
            b = o.graph.basis(name)
            scores = o.node["results"].get(name)
            entry["directions_kept"][basis] = None if b is None else int(b.dim)
            entry["directions_needed"][basis] = (None if scores is None
                                                 else directions_needed(scores, good))
            entry["edges_required"][basis] = o.edge["n_edges_required"].get(name)
        layers[name] = entry
    by_section: dict[str, dict] = {}
    for e in layers.values():
        if e["section"] is not None:
            part = by_section.setdefault(e["section"], {"possible_edges": 0, "edges_required":
                                                        {b: 0 for b in outcomes}})
            part["possible_edges"] += e["possible_edges"]
            for b in outcomes:
                part["edges_required"][b] += e["edges_required"][b] or 0
    seconds = {basis: {"build": o.build_seconds, "node_ablation": o.node["time_taken_s"],
                       "edge_ablation": o.edge["time_taken_s"]} for basis, o in outcomes.items()}
    return {"metric": metric, "no_ablation_result": base,
            "score_target_difference": score_target_difference, "layers": layers,
            "sections": by_section, "seconds": seconds}


def _pair(values: Mapping) -> str:
    return " / ".join("–" if values[b] is None else str(values[b]) for b in BASES)


def layer_table(summary: Mapping) -> list[str]:
    """:func:`summarize`'s numbers as a Markdown table, LIB / PCA in each cell, with a totals row
    and a line of timings."""
    delta, metric = summary["score_target_difference"], summary["metric"]
    both = " / ".join(BASES.values())
    lines = [f"| node layer | width | directions kept ({both}) | directions needed ({both}) | "
             f"transition | edges required ({both}) | possible edges |",
             "|---|---|---|---|---|---|---|"]
    for name, e in summary["layers"].items():
        transition = f"{name} → {e['next']}" if e["next"] else "–"
        lines.append(f"| {name} | {e['width']} | {_pair(e['directions_kept'])} | "
                     f"{_pair(e['directions_needed'])} | {transition} | "
                     f"{_pair(e['edges_required'])} | {e['possible_edges'] or '–'} |")
    for part, totals in summary.get("sections", {}).items():
        lines.append(f"| {part} sections | | | | | {_pair(totals['edges_required'])} | "
                     f"{totals['possible_edges']} |")
    totals = {b: sum(e["edges_required"][b] or 0 for e in summary["layers"].values())
              for b in BASES}
    possible = sum(e["possible_edges"] or 0 for e in summary["layers"].values())
    lines.append(f"| all | | | | | {_pair(totals)} | {possible} |")
    times = "; ".join(f"{BASES[b]}: build {t['build']:.1f} s, node ablation "
                      f"{t['node_ablation']:.1f} s, edge ablation {t['edge_ablation']:.1f} s"
                      for b, t in summary["seconds"].items())
    return lines + ["", f"Directions needed: the fewest directions remaining at which this and "
                        f"every larger evaluated number keep the {metric} within {delta:g} of the "
                        f"unablated {summary['no_ablation_result']:.4f}. Edges required: "
                        f"bisection to within {delta:g} (tolerance 1), the constant direction's "
                        f"edges free.", "", f"Time: {times}."]
