"""Pictures: ablation curves and interaction graphs, written as PNG and SVG.

Figures are built with :class:`matplotlib.figure.Figure` directly (rendered by the Agg and SVG
canvases), never through ``pyplot``: nothing opens a window, nothing depends on a display or on
the process's global backend, and the library leaves ``pyplot``'s state alone.

* :func:`ablation_curves` draws several result records (as written by ``scripts/ablate.py``,
  e.g. LIB and PCA) on one figure, one panel per node layer.
* :func:`interaction_graph` draws a graph in the style of the paper's figures: one column of
  nodes per node layer, node area by importance (Lambda for LIB, the variance for PCA), edge width
  and opacity by strength, only the strongest edges of each transition.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from libjax.storage.graph import Graph

COLORS = ("#2e933c", "#edae49", "#6c4f9c", "#555555", "#00a6a6")
BASIS_COLORS = {"LIB": "#d1495b", "PCA": "#1f5fa8"}  # the same colours on every figure
EDGE_COLOR = "#1f4e79"


def save(fig: Figure, stem: str | Path) -> list[Path]:
    """Write ``stem.png`` (150 dpi) and ``stem.svg``; returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return paths


# --- edges per transition -------------------------------------------------------------------------

def edges_per_transition(summary: Mapping, stem: str | Path,
                         title: Optional[str] = None) -> list[Path]:
    """The paper's language-model figure: edges each basis requires for every transition of a
    block (log scale, bars side by side), transitions coloured by their section (attention or
    MLP), and the sections' totals; from :func:`libjax.analysis.comparison.summarize`."""
    rows = [(name, e) for name, e in summary["layers"].items() if e["next"]]
    bases = list(rows[0][1]["edges_required"])
    parts = list(summary.get("sections") or {})
    fig = Figure(figsize=(3 + 1.1 * len(rows), 4.2))
    ax, totals = fig.subplots(1, 2, gridspec_kw={"width_ratios": [len(rows), 1 + len(parts)]})
    width = 0.8 / len(bases)
    x = np.arange(len(rows))
    for i, basis in enumerate(bases):
        label = {"lib": "LIB", "pca": "PCA"}.get(basis, basis)
        ax.bar(x + (i - (len(bases) - 1) / 2) * width,
               [max(e["edges_required"][basis] or 0, 0.5) for _, e in rows], width,
               color=BASIS_COLORS.get(label, COLORS[i]), label=label)
        totals.bar(np.arange(len(parts)) + (i - (len(bases) - 1) / 2) * width,
                   [summary["sections"][p]["edges_required"][basis] for p in parts], width,
                   color=BASIS_COLORS.get(label, COLORS[i]))
    ax.plot(x, [e["possible_edges"] for _, e in rows], "k_", markersize=18, label="all edges")
    ax.set_xticks(x, [f"{a}\n→ {e['next']}" for a, e in rows], fontsize=7)
    for tick, (_, e) in zip(ax.get_xticklabels(), rows):
        tick.set_color("#7a1f2b" if e.get("section") == "attention" else "#1f3b7a")
    ax.set_yscale("log")
    target = summary["score_target_difference"]
    ax.set_ylabel(f"edges required (Δ {summary['metric']} ≤ {target:g})")
    ax.legend(fontsize=8)
    totals.set_xticks(np.arange(len(parts)), parts)
    totals.set_title("per section (sum)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, stem)


# --- ablation curves ------------------------------------------------------------------------------

def _label(record: Mapping) -> str:
    cfg = record.get("config", {})
    if cfg.get("label"):
        return str(cfg["label"])
    basis = cfg.get("graph_basis")
    return basis.upper() if basis else str(cfg.get("exp_name", "run"))


def ablation_curves(records: Sequence[Mapping], stem: str | Path,
                    labels: Optional[Sequence[str]] = None,
                    title: Optional[str] = None) -> list[Path]:
    """Score against directions (node ablation) or edges (edge ablation) kept, one panel per
    node layer, one line per record. Edge panels zoom on the band around the bisection's
    threshold; probes far outside it are drawn as triangles on the band's edge.

    Args:
      records: result records, all node or all edge ablations (``config.ablation_type``).
      stem: output path without suffix.
      labels: legend entries (default: each record's graph basis).
    """
    if not records:
        raise ValueError("no ablation results to plot")
    kinds = {r["config"]["ablation_type"] == "edge" for r in records}
    if len(kinds) > 1:
        raise ValueError("cannot draw node and edge ablations on one figure")
    edge = kinds.pop()
    labels = list(labels) if labels is not None else [_label(r) for r in records]
    layers = list(dict.fromkeys(name for r in records for name in r["results"]))
    n_cols = min(3, len(layers))
    n_rows = math.ceil(len(layers) / n_cols)
    fig = Figure(figsize=(4.6 * n_cols, 3.6 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    metric = records[0]["config"].get("metric", "score")
    targets = dict(pair.split("->") for r in records for pair in r["config"].get("pairs", []))
    base = records[0].get("no_ablation_result")
    delta = records[0]["config"].get("schedule", {}).get("score_target_difference")
    band = _edge_band(metric, base, delta) if edge else None
    for ax, name in zip(axes, layers):
        for i, (record, label) in enumerate(zip(records, labels)):
            if name not in record["results"]:
                continue
            color = BASIS_COLORS.get(label, COLORS[i % len(COLORS)])
            points = sorted((int(k), v) for k, v in record["results"][name].items())
            x, y = map(np.asarray, zip(*points))
            if edge:
                need = record["n_edges_required"][name]
                inside = np.ones(len(y), bool) if band is None else (y >= band[0]) & (y <= band[1])
                ax.plot(x[inside], y[inside], "o", color=color, ms=4,
                        label=f"{label}: {need} edges needed")
                if band is not None:  # scores off the band sit on its edge as triangles
                    for off, edge_y, marker in ((y < band[0], band[0], "v"),
                                                (y > band[1], band[1], "^")):
                        if off.any():  # (an empty unclipped line breaks the layout)
                            ax.plot(x[off], np.full(off.sum(), edge_y), marker, color=color,
                                    ms=5, clip_on=False)
                ax.axvline(need, color=color, ls="--", lw=1)
            else:
                ax.plot(x, y, "-o", color=color, ms=2.5, lw=1.3, label=label)
        if base is not None:
            ax.axhline(base, color="0.5", ls=":", lw=1, label="unablated")
        if edge:
            if band is not None:
                sign = -1 if metric == "accuracy" else 1
                ax.axhline(base + sign * delta, color="0.3", ls="-.", lw=0.8,
                           label=f"unablated {'-' if sign < 0 else '+'} {delta:g}")
                ax.set_ylim(*band)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("edges kept")
            ax.set_title(f"{name} \u2192 {targets.get(name, 'next')}")
        else:
            # Linear where directions matter (few left), logarithmic over the flat rest.
            n = max(int(k) for r in records if name in r["results"] for k in r["results"][name])
            ax.set_xscale("symlog", linthresh=20, linscale=2)
            ax.set_xlim(0, n * 1.05)
            ticks = (0, 5, 10, 15, 20, 30, 50, 100, 200, 500, 1000)
            ax.set_xticks([t for t in ticks if t <= 20 or t < n / 1.5] + [n])
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.set_xlabel("directions remaining (linear to 20, then log)")
            ax.set_title(name)
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(layers):]:
        ax.set_visible(False)
    what = "edge ablation (bisection)" if edge else "node ablation"
    fig.suptitle(title or what)
    return save(fig, stem)


def _edge_band(metric: str, base, delta):
    """The score range an edge-ablation panel shows: a few ``delta`` around the unablated score,
    on the side where the score gets worse (None when either is unknown or ``delta`` is 0)."""
    if base is None or not delta:
        return None
    pad = 0.1 * delta
    if metric == "accuracy":
        return base - 5 * delta - pad, min(base + 2 * delta, 1.0) + pad
    return base - 2 * delta - pad, base + 5 * delta + pad


# --- interaction graph ----------------------------------------------------------------------------

def strongest_edges(edges, n: int, include_const: bool = False, mask=None,
                    max_nodes: Optional[int] = None) -> np.ndarray:
    """Boolean ``(out, in)`` selection of the edges to draw.

    The ``n`` largest edges (among those kept by ``mask``, if given), taken in descending order
    and skipping any that would bring more than ``max_nodes`` distinct nodes onto either side:
    this keeps plots readable when one node fans out to many. Edges from the constant input node 0
    only with ``include_const``.
    """
    edges = np.asarray(edges, np.float64)
    allowed = edges > 0
    if not include_const:
        allowed[:, 0] = False
    if mask is not None:
        allowed &= np.asarray(mask, bool)
    chosen = np.zeros(edges.shape, bool)
    outs, ins, count = set(), set(), 0
    for flat in np.argsort(np.where(allowed, edges, -np.inf), axis=None)[::-1]:
        o, i = np.unravel_index(flat, edges.shape)
        if count == n or not allowed[o, i]:
            break
        if max_nodes is not None and (len(outs | {o}) > max_nodes or len(ins | {i}) > max_nodes):
            continue
        chosen[o, i] = True
        outs.add(o)
        ins.add(i)
        count += 1
    return chosen


def _importance(graph: Graph, name: str) -> Optional[np.ndarray]:
    b = graph.basis(name)
    if b is None:
        return None
    values = b.Lambda if b.Lambda is not None else b.gram_eigenvalues
    return None if values is None else np.abs(np.asarray(values, np.float64))[:b.dim]


def interaction_graph(graph: Graph, stem: str | Path, n_edges: int = 40, max_nodes: int = 20,
                      masks: Optional[Mapping[str, np.ndarray]] = None,
                      labels: Optional[Mapping[str, Sequence[str]]] = None,
                      include_const: bool = False, title: Optional[str] = None) -> list[Path]:
    """Draw the graph: columns of nodes (directions) per node layer, the strongest edges between.

    Args:
      graph: the graph.
      stem: output path without suffix.
      n_edges: edges drawn per transition (the largest).
      max_nodes: at most this many nodes on either side of a transition (see
        :func:`strongest_edges`).
      masks: per input layer, a boolean ``(out, in)`` edge mask to draw from (e.g. the edges an
        edge ablation found necessary); the strongest ``n_edges`` of them are drawn.
      labels: per node layer, a short text per direction (e.g. Fourier frequencies).
      include_const: also draw edges from the constant direction (input node 0 of a centred
        build), which are large and always kept.
    """
    masks, labels = masks or {}, labels or {}
    chosen = {pair: strongest_edges(graph.edges[pair], n_edges, include_const, masks.get(pair[0]),
                                    max_nodes)
              for pair in graph.edge_pairs if pair in graph.edges}
    shown = {name: set() for name in graph.node_layers}
    for (a, b), sel in chosen.items():
        outs, ins = np.nonzero(sel)
        shown[a].update(ins.tolist())
        shown[b].update(outs.tolist())
    for name in graph.node_layers:
        if not shown[name]:  # a layer without drawn edges still shows its leading directions
            shown[name] = set(range(min(5, graph.dim(name))))
    nodes = {name: sorted(s) for name, s in shown.items()}
    height = max(len(v) for v in nodes.values())
    has_text = bool(labels)
    col_w = 3.4 if has_text else 2.2
    fig = Figure(figsize=(col_w * len(graph.node_layers) + 0.5, 0.26 * height + 1.6))
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.9))
    ax.set_axis_off()
    pos = {}
    for x, name in enumerate(graph.node_layers):
        for rank, idx in enumerate(nodes[name]):
            pos[(name, idx)] = (x, -rank - (height - len(nodes[name])) / 2)

    for (a, b), sel in chosen.items():
        e = np.asarray(graph.edges[(a, b)], np.float64)
        if not sel.any():
            continue
        outs, ins = np.nonzero(sel)
        rel = np.sqrt(e[outs, ins] / e[sel].max())
        colors = np.tile(to_rgba(EDGE_COLOR), (len(rel), 1))
        colors[:, 3] = 0.12 + 0.8 * rel
        ax.add_collection(LineCollection(
            [(pos[(a, i)], pos[(b, o)]) for o, i in zip(outs, ins)], colors=colors,
            linewidths=0.3 + 3.2 * rel, capstyle="round", zorder=1))

    for x, name in enumerate(graph.node_layers):
        idx = np.asarray(nodes[name])
        ys = [pos[(name, i)][1] for i in idx]
        imp = _importance(graph, name)
        if imp is None:
            sizes = np.full(len(idx), 40.0)
        else:
            rest = imp[1:] if graph.config.get("center", True) and len(imp) > 1 else imp
            rel = np.clip(imp[idx] / max(rest.max(), 1e-300), 0, 1)
            sizes = 15 + 260 * np.sqrt(rel)
        ax.scatter(np.full(len(idx), x), ys, s=sizes, color="#f4a259", edgecolors="#7a4a13",
                   linewidths=0.6, zorder=2)
        text = labels.get(name)
        box = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75}
        for i, y in zip(idx, ys):
            ax.text(x - 0.06, y, str(i), ha="right", va="center", fontsize=7, zorder=3, bbox=box)
            if text is not None and i < len(text):
                ax.text(x + 0.06, y, text[i], ha="left", va="center", fontsize=6.5, color="0.25",
                        zorder=3, bbox=box)
        total = graph.dim(name)
        ax.text(x, 0.9, f"{name}\n{len(idx)} of {total} nodes", ha="center", va="bottom",
                fontsize=9, weight="bold")
    ax.set_xlim(-0.5, len(graph.node_layers) - 0.5 + (0.45 if has_text else 0))
    ax.set_ylim(-height - 0.2, 2.2)
    kind = str(graph.config.get("basis", "")).upper() or "interaction"
    how = f"{n_edges} strongest {'required ' if masks else ''}edges per transition"
    const = "" if include_const else ", constant-direction edges hidden"
    size = "node area \u221d \u221a\u039b" if any(
        graph.basis(n) is not None and graph.basis(n).Lambda is not None for n in graph.node_layers
    ) else "node area \u221d \u221avariance"
    fig.suptitle(title or f"{kind} graph: {how}{const}; {size}; edge width \u221d \u221aE",
                 fontsize=10)
    return save(fig, stem)
