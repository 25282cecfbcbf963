"""Leiden modularity clustering of an interaction graph: which directions work together.

The graph is undirected and weighted: one vertex per direction of the chosen node layers, one
edge per non-zero interaction between consecutive layers, weighted by the normalised edge
strength. As in the authors' reference, edges touching a centred layer's constant direction
(index 0) are left out, so constant directions belong to no cluster, and the output layer is left
out unless asked for. Normalisations (of each ``(out, in)`` edge matrix ``E``, as the reference
offers them):

* ``none``: ``E``;  ``sqrt``: ``sqrt(E)`` (the reference's default without an edge ablation);
* ``abs``: ``E / sum|E|``;  ``max``: ``E / max E``;
* ``log``: ``max(log10(E / eps), 0)``, ``eps`` one number or one per transition (by input layer),
  e.g. the smallest edge an edge ablation kept (:func:`eps_from_edge_ablation`).

Leiden (igraph's ``community_leiden``, objective ``modularity``) maximises modularity at
resolution ``gamma`` (higher: more, smaller clusters), seeded for reproducibility. The result is
stored beside the build (``<graph_dir>/analysis/clustering.json``), never inside its stages.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from libjax.errors import ConfigError, DataError
from libjax.kinds import kind_of
from libjax.storage import files

NORMS = ("none", "sqrt", "abs", "max", "log")
ANALYSIS_DIR = "analysis"
FILE = "clustering.json"


def normalise(E: np.ndarray, norm: str, eps: Optional[float] = None) -> np.ndarray:
    """One edge matrix under normalisation ``norm`` (see the module doc)."""
    E = np.asarray(E, np.float64)
    if norm == "none":
        return E
    if norm == "sqrt":
        return np.sqrt(E)
    if norm == "abs":
        total = np.abs(E).sum()
        return E / total if total > 0 else E
    if norm == "max":
        top = E.max(initial=0.0)
        return E / top if top > 0 else E
    if norm == "log":
        if eps is None or not eps > 0:
            raise ConfigError(f"the log normalisation needs eps > 0 (the 0 point), got {eps}; "
                              "pass --eps or --edge_results")
        with np.errstate(divide="ignore"):
            return np.clip(np.log10(E / eps), 0, None)
    raise ConfigError(f"unknown edge normalisation {norm!r}; choose one of {', '.join(NORMS)}")


def has_constant_direction(graph, node_layer: str) -> bool:
    """Whether direction 0 of ``node_layer`` is its basis's constant direction (a centred LIB or
    PCA basis, or a given basis whose node 0 reads the constant coordinate alone)."""
    b = graph.basis(node_layer)
    centred = bool(graph.config.get("center", True))
    return b is not None and kind_of(b).constant_first(b, centred)


def eps_from_edge_ablation(graph, masks: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per input layer, the smallest edge an edge ablation kept (``ablation.required_masks``),
    constant-direction edges left out in a centred build: the reference's log-norm zero point."""
    eps = {}
    for (a, b), E in graph.edges.items():
        if a in masks:
            keep = np.asarray(masks[a], bool).copy()
            keep[0, :] &= not has_constant_direction(graph, b)
            keep[:, 0] &= not has_constant_direction(graph, a)
            kept = np.asarray(E)[keep]
            if kept.size:
                eps[a] = float(kept.min())
    return eps


@dataclasses.dataclass(frozen=True)
class Clustering:
    """Leiden's partition of a graph's directions.

    Attributes:
      membership: node layer -> cluster id per direction (``-1``: not clustered, i.e. a constant
        direction or a layer left out). Ids are ordered by cluster size, largest first.
      modularity: the partition's modularity (resolution 1, the usual definition).
      quality: its modularity at ``gamma`` (what Leiden maximised).
      settings: ``norm``, ``eps``, ``gamma``, ``seed``, ``node_layers``.
    """

    membership: dict
    modularity: float
    quality: float
    settings: dict

    @property
    def sizes(self) -> np.ndarray:
        """Number of directions per cluster id."""
        ids = np.concatenate([m[m >= 0] for m in self.membership.values()])
        return np.bincount(ids) if ids.size else np.zeros(0, int)

    @property
    def n_clusters(self) -> int:
        """Clusters with more than one direction."""
        return int((self.sizes > 1).sum())

    def to_json(self) -> dict:
        return {"membership": {k: v.tolist() for k, v in self.membership.items()},
                "modularity": self.modularity, "quality": self.quality, "settings": self.settings,
                "n_clusters": self.n_clusters, "n_singletons": int((self.sizes == 1).sum())}

    @classmethod
    def from_json(cls, record: dict) -> Clustering:
        return cls({k: np.asarray(v, np.int64) for k, v in record["membership"].items()},
                   float(record["modularity"]), float(record["quality"]), record["settings"])


def _weighted_edges(graph, layers: Sequence[str], norm: str, eps) -> tuple[np.ndarray, np.ndarray]:
    """``(n_edges, 2)`` vertex pairs and their weights over the transitions within ``layers``."""
    offset = dict(zip(layers, np.cumsum([0] + [graph.dim(n) for n in layers[:-1]])))
    pairs, weights = [], []
    for a, b in zip(layers[:-1], layers[1:]):
        if (a, b) not in graph.edges:
            continue
        layer_eps = eps.get(a) if isinstance(eps, Mapping) else eps
        E = normalise(graph.edges[(a, b)], norm, layer_eps)
        if has_constant_direction(graph, a):
            E[:, 0] = 0
        if has_constant_direction(graph, b):
            E[0, :] = 0
        out, inp = np.nonzero(E > 0)
        pairs.append(np.stack([inp + offset[a], out + offset[b]], axis=1))
        weights.append(E[out, inp])
    if not pairs:
        raise DataError(f"the graph has no edge matrix between the node layers {list(layers)}")
    return np.concatenate(pairs), np.concatenate(weights)


def cluster(graph, norm: str = "sqrt", gamma: float = 1.0, seed: int = 0, eps=None,
            node_layers: Optional[Sequence[str]] = None, include_output: bool = False,
            n_iterations: int = -1) -> Clustering:
    """Leiden modularity clustering of ``graph`` (a :class:`libjax.storage.graph.Graph`).

    ``node_layers``: consecutive node layers to cluster (default: all, the output layer only with
    ``include_output``); ``n_iterations``: Leiden passes (-1: until the partition is stable)."""
    import igraph

    if not gamma > 0:
        raise ConfigError(f"the resolution gamma must be > 0, got {gamma}")
    layers = list(node_layers or graph.node_layers)
    if not include_output and node_layers is None and layers[-1] == "output":
        layers = layers[:-1]
    joined = "|" + "|".join(graph.node_layers) + "|"
    if len(layers) < 2 or "|" + "|".join(layers) + "|" not in joined:
        raise ConfigError(f"node layers {layers} are not two or more consecutive node layers of "
                          f"the graph ({', '.join(graph.node_layers)})")
    pairs, weights = _weighted_edges(graph, layers, norm, eps)
    n = sum(graph.dim(name) for name in layers)
    g = igraph.Graph(n=n, edges=pairs, directed=False)
    g.es["weight"] = weights.tolist()
    igraph.set_random_number_generator(random.Random(seed))
    try:
        found = g.community_leiden(objective_function="modularity", weights="weight",
                                   resolution=gamma, n_iterations=n_iterations)
    finally:
        igraph.set_random_number_generator(random)
    raw = np.asarray(found.membership)
    touched = np.zeros(n, bool)
    touched[pairs.ravel()] = True
    # Relabel by size (largest first); untouched vertices (constant directions) get -1.
    sizes = np.bincount(raw[touched], minlength=raw.max() + 1)
    order = np.argsort(-sizes, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    ids = np.where(touched, rank[raw], -1)
    modularity = g.modularity(raw.tolist(), weights="weight", resolution=1.0)
    quality = g.modularity(raw.tolist(), weights="weight", resolution=gamma)
    bounds = np.cumsum([0] + [graph.dim(name) for name in layers])
    membership = {name: ids[lo:hi] for name, lo, hi in zip(layers, bounds[:-1], bounds[1:])}
    settings = {"norm": norm, "eps": eps, "gamma": gamma, "seed": seed, "node_layers": layers,
                "n_iterations": n_iterations}
    return Clustering(membership, float(modularity), float(quality), settings)


def path_of(graph_dir) -> Path:
    return Path(graph_dir) / ANALYSIS_DIR / FILE


def save(clustering: Clustering, graph_dir) -> Path:
    """Write ``<graph_dir>/analysis/clustering.json`` (atomically)."""
    path = path_of(graph_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_json_atomic(path, clustering.to_json())
    return path


def load(graph_dir) -> Optional[Clustering]:
    """The clustering stored with the build in ``graph_dir``, or None if there is none."""
    path = path_of(graph_dir)
    if not path.exists():
        return None
    try:
        return Clustering.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError) as err:
        raise DataError(f"{path} is not a clustering written by libjax ({err}); delete it and "
                        "run scripts/cluster.py again") from None


def describe(clustering: Clustering, labels: Optional[Mapping[str, Sequence[str]]] = None,
             top: int = 10) -> list[str]:
    """Lines summarising the largest ``top`` clusters: size, directions per layer and (given
    per-direction ``labels``) their most common labels."""
    lines = [f"{clustering.n_clusters} clusters of 2+ directions, "
             f"{int((clustering.sizes == 1).sum())} singletons; modularity "
             f"{clustering.modularity:.4f} (quality at gamma={clustering.settings['gamma']}: "
             f"{clustering.quality:.4f})"]
    for cid in range(min(top, clustering.n_clusters)):
        per_layer = {n: np.flatnonzero(m == cid) for n, m in clustering.membership.items()}
        counts = ", ".join(f"{n} {len(i)}" for n, i in per_layer.items() if len(i))
        line = f"  cluster {cid}: {int(clustering.sizes[cid])} directions ({counts})"
        if labels:
            common = collections.Counter(labels[n][j] for n, idx in per_layer.items()
                                         if n in labels for j in idx).most_common(3)
            line += "; labels: " + ", ".join(f"{text} x{c}" for text, c in common)
        lines.append(line)
    return lines


def figure(graph, clustering: Clustering, stem, labels=None, n_edges: int = 150) -> list[Path]:
    """A static picture of the clustering: a column per clustered node layer, directions grouped
    by cluster and coloured by it (grey: unclustered or singleton), and each transition's
    ``n_edges`` strongest (normalised) edges. Writes ``stem.png`` and ``stem.svg``."""
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    from libjax.analysis import plots

    layers = clustering.settings["node_layers"]
    sizes = clustering.sizes
    height = max(len(clustering.membership[n]) for n in layers)
    fig = Figure(figsize=(2.6 * len(layers) + 1, min(4 + 0.06 * height, 40)))
    ax = fig.add_axes((0.03, 0.03, 0.94, 0.88))
    ax.set_axis_off()
    palette = cluster_colors(len(sizes))
    ypos = {}
    for x, name in enumerate(layers):
        ids = clustering.membership[name]
        key = np.where((ids >= 0) & (sizes[np.maximum(ids, 0)] > 1), ids, len(sizes))
        order = np.lexsort((np.arange(len(ids)), key))  # by cluster, then by index
        ypos[name] = np.empty(len(ids))
        ypos[name][order] = -np.arange(len(ids)) - (height - len(ids)) / 2
        colors = [palette[c] if c < len(sizes) else "#bbbbbb" for c in key]
        ax.scatter(np.full(len(ids), x), ypos[name], s=14, c=colors, edgecolors="none", zorder=2)
        ax.text(x, 1.5, f"{name}\n{len(ids)} directions", ha="center", va="bottom", fontsize=9,
                weight="bold")
        if labels and name in labels and len(ids) <= 60:
            for j, y in enumerate(ypos[name]):
                ax.text(x + 0.06, y, labels[name][j], fontsize=5.5, va="center", color="0.3")
    norm, eps = clustering.settings["norm"], clustering.settings["eps"]
    for x, (a, b) in enumerate(zip(layers[:-1], layers[1:])):
        if (a, b) not in graph.edges:
            continue
        E = normalise(graph.edges[(a, b)], norm, eps.get(a) if isinstance(eps, dict) else eps)
        ids_a, ids_b = clustering.membership[a], clustering.membership[b]
        E = np.where((ids_b[:, None] >= 0) & (ids_a[None, :] >= 0), E, 0)
        flat = np.argsort(E, axis=None)[::-1][:n_edges]
        out, inp = np.unravel_index(flat, E.shape)
        keep = E[out, inp] > 0
        out, inp = out[keep], inp[keep]
        if not len(out):
            continue
        rel = E[out, inp] / E[out, inp].max()
        segments = [((x, ypos[a][i]), (x + 1, ypos[b][o])) for o, i in zip(out, inp)]
        rgba = np.zeros((len(rel), 4))
        rgba[:, 3] = 0.05 + 0.5 * rel
        ax.add_collection(LineCollection(segments, colors=rgba, linewidths=0.3 + 1.5 * rel,
                                         zorder=1))
    ax.set_xlim(-0.4, len(layers) - 0.4)
    ax.set_ylim(-height - 0.5, 4)
    s = clustering.settings
    fig.suptitle(f"Leiden clusters ({clustering.n_clusters} of 2+ directions), modularity "
                 f"{clustering.modularity:.3f}; edges {s['norm']}-normalised, gamma={s['gamma']}, "
                 f"seed {s['seed']}", fontsize=10)
    return plots.save(fig, stem)


def cluster_colors(n: int) -> list[str]:
    """``n`` distinguishable colours (a fixed 20-colour cycle), the same in the explorer."""
    base = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#17becf", "#bcbd22", "#637939", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
            "#c5b0d5", "#c49c94", "#f7b6d2", "#9edae5", "#dbdb8d", "#393b79"]
    return [base[i % len(base)] for i in range(n)]
