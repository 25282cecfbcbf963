"""The interactive graph explorer: one self-contained HTML page per build, also inline in Jupyter.

:func:`page_data` turns a graph (plus optional labels, feature cards and a clustering) into the
page's compact data: per node layer the node sizes (Lambda, or the variance ``diag(C^T G C)`` for
a basis without Lambda), labels and cluster ids; per transition the edges sorted by strength as
``uint16``/``uint32`` endpoints and ``float32`` weights, gzip-compressed and base64-encoded.
Python prunes first: per transition only the strongest edges up to ``max_share`` of its edge total
(with and without the constant direction's edges) and at most ``max_edges`` of them. The page
(``explorer_page.html``, written by hand: no library, no network) draws what passes its controls:
the cumulative share of each transition's total (default 0.98, as circuit-tracer prunes edges)
and the top ``k`` edges per node. :func:`visible_edge_counts` is the same filter in Python.
It shows each layer's largest directions and collapses the rest into one node, sums the edges
between such groups and named supernodes, traces paths from a chosen node, and keeps its view in
its address or in ``view.json`` beside it (:func:`read_view`). Served by ``explore.py --serve``,
it also ablates directions (:func:`ablation_scores`) and fetches a transition's edges beyond
those written (:func:`transition`).

``explore(graph, ...)`` (also ``libjax.explore``) returns an :class:`Explorer`: ``.save(path)``
writes the page, and Jupyter shows it inline (an ``iframe`` whose ``srcdoc`` is the page, so its
scripts run). Given a build's directory it shows the cards and clustering stored there.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np

from libjax.analysis import clustering as clustering_io
from libjax.analysis import feature_cards
from libjax.errors import ConfigError, StoreError
from libjax.pipeline.config import skip_positions_of
from libjax.storage import files, store
from libjax.storage import graph as graph_io

DEFAULT_SHARE = 0.98
MAX_SHARE = 0.999
MAX_EDGES = 50_000
PLACEHOLDER = "/*LIBJAX_DATA*/null"


def encode(array: np.ndarray) -> dict:
    """A typed array for the page: little-endian bytes, gzip-compressed, base64."""
    array = np.ascontiguousarray(array)
    kinds = {"float32": "f4", "float64": "f8", "uint8": "u1", "uint16": "u2", "uint32": "u4",
             "int16": "i2", "int32": "i4"}
    if str(array.dtype) not in kinds:
        raise ConfigError(f"the page stores no {array.dtype} arrays ({', '.join(kinds)})")
    raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
    return {"dtype": kinds[str(array.dtype)], "shape": list(array.shape),
            "b64": base64.b64encode(gzip.compress(raw, 6, mtime=0)).decode()}


def decode(entry: dict) -> np.ndarray:
    """Inverse of :func:`encode`."""
    raw = gzip.decompress(base64.b64decode(entry["b64"]))
    return np.frombuffer(raw, np.dtype("<" + entry["dtype"])).reshape(entry["shape"])


def node_sizes(graph, node_layer: str) -> np.ndarray:
    """What a node's size shows: Lambda (LIB), else the variance ``diag(C^T G C)`` of each
    direction (PCA), else ``diag(G)`` of each neuron; ones if the build kept no Gram matrix."""
    b = graph.basis(node_layer)
    if b is not None and b.Lambda is not None:
        return np.abs(np.asarray(b.Lambda, np.float64))[:b.dim]
    gram = graph.grams.get(node_layer)
    if gram is None:
        return np.ones(graph.dim(node_layer))
    gram = np.asarray(gram, np.float64)
    if b is None:
        return np.maximum(np.diag(gram), 0)
    C = np.asarray(b.C, np.float64)
    return np.maximum(np.einsum("ij,ik,kj->j", C, gram, C), 0)  # round-off can dip below 0


def _prune(E: np.ndarray, const_out: bool, const_in: bool, max_share: float, max_edges: int):
    """Edges to write, strongest first: the prefix reaching ``max_share`` of the total with the
    constant direction's edges and the one without them (their union is again a prefix of the
    non-constant edges, plus every constant edge), capped at ``max_edges``."""
    E = np.asarray(E, np.float64)
    is_const = np.zeros(E.shape, bool)
    if const_out:
        is_const[0, :] = True
    if const_in:
        is_const[:, 0] = True
    flat = E.ravel()
    order = np.argsort(-flat, kind="stable")
    order = order[flat[order] > 0]
    const_sorted = is_const.ravel()[order]

    def needed(weights):  # edges of ``weights`` (sorted) reaching max_share of their sum
        cum = np.cumsum(weights)
        return int(np.searchsorted(cum, max_share * cum[-1]) + 1) if len(cum) else 0

    n_all = needed(flat[order])
    plain = order[~const_sorted]
    n_plain = max(needed(flat[plain]), int((~const_sorted[:n_all]).sum()))
    keep = np.sort(np.concatenate([np.flatnonzero(const_sorted),
                                   np.flatnonzero(~const_sorted)[:n_plain]]))[:max_edges]
    chosen = order[keep]
    plain_total = float(flat[~is_const.ravel()].sum())
    written_plain = flat[chosen][~is_const.ravel()[chosen]].sum()
    totals = {"total": float(flat.sum()), "total_plain": plain_total,
              # what the written edges hold: below max_share where max_edges cut them
              "written_share": float(flat[chosen].sum() / max(flat.sum(), 1e-300)),
              "written_share_plain": float(written_plain / max(plain_total, 1e-300))}
    return chosen, is_const.ravel()[chosen], totals


def page_data(graph, labels: Optional[Mapping[str, Sequence[str]]] = None,
              cards: Optional[Mapping[str, dict]] = None, clustering=None, title: str = "",
              max_share: float = MAX_SHARE, max_edges: int = MAX_EDGES,
              view: Optional[dict] = None) -> dict:
    """The page's data (JSON-able) for ``graph``; see the module doc. ``view``: the view the page
    opens with when its address holds none (what its "save view" writes: share, top-k, expanded
    layers, supernodes, chosen node; :func:`read_view`)."""
    check_limits(max_share, max_edges)
    labels, cards = labels or {}, cards or {}
    layers = []
    for name in graph.node_layers:
        entry = {"name": name, "dim": int(graph.dim(name)),
                 "size": encode(node_sizes(graph, name).astype(np.float32)),
                 "size_kind": ("Lambda" if graph.basis(name) is not None
                               and graph.basis(name).Lambda is not None else "variance"),
                 "const": clustering_io.has_constant_direction(graph, name),
                 "basis": graph.basis(name) is not None}
        layer_labels = labels.get(name)
        if layer_labels is None and name in cards and "label" in cards[name]:
            layer_labels = cards[name]["label"]
        if layer_labels is not None:
            entry["labels"] = [str(x) for x in layer_labels]
        if clustering is not None and name in clustering.membership:
            entry["cluster"] = encode(np.asarray(clustering.membership[name], np.int32))
        if name in cards:
            entry["card"] = _card_entry(cards[name])
        layers.append(entry)
    transitions = [transition(graph, a, b, max_share, max_edges) for a, b in graph.edge_pairs
                   if (a, b) in graph.edges]
    meta = {"title": title, "basis": graph.config.get("basis"), "default_share": DEFAULT_SHARE,
            "max_share": max_share, "max_edges": max_edges}
    if view is not None:
        meta["view"] = view
    if clustering is not None:
        meta["clustering"] = {"modularity": clustering.modularity,
                              "n_clusters": clustering.n_clusters, **clustering.settings}
    return {"meta": meta, "layers": layers, "transitions": transitions}


VIEW_FILE = "view.json"


def read_view(path) -> Optional[dict]:
    """A view saved by the page (``view.json`` beside it), or None where there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        view = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise StoreError(f"{path} is not a readable explorer view ({err}); delete it or save "
                         "the view again from the page") from None
    if not isinstance(view, dict) or not isinstance(view.get("groups", []), list):
        raise StoreError(f"{path} is not an explorer view (a JSON object with 'groups'); delete "
                         "it or save the view again from the page")
    return view


def write_view(view: dict, path) -> Path:
    """Write a view the page sent (atomically), after checking its shape."""
    if not isinstance(view, dict) or not isinstance(view.get("groups", []), list):
        raise ConfigError("a view is a JSON object whose 'groups' is a list")
    path = Path(path)
    files.write_atomic(path, lambda f: f.write(json.dumps(view, indent=1).encode()))
    return path


def check_limits(max_share: float, max_edges: int) -> None:
    """``max_share`` in (0, 1] and ``max_edges >= 1``, else a :class:`ConfigError`."""
    if not 0 < max_share <= 1 or max_edges < 1:
        raise ConfigError(f"max_share must be in (0, 1] and max_edges >= 1, got {max_share} and "
                          f"{max_edges}")


def transition(graph, a: str, b: str, max_share: float = MAX_SHARE,
               max_edges: int = MAX_EDGES) -> dict:
    """The page's entry for the edges ``a -> b``: the strongest up to ``max_share`` of the total
    (with and without the constant direction's edges), at most ``max_edges``, strongest first
    (also what ``explore.py --serve`` streams when the page asks for more than it holds)."""
    check_limits(max_share, max_edges)
    if (a, b) not in graph.edges:
        raise ConfigError(f"the graph has no edges {a} -> {b}; its transitions are "
                          f"{', '.join(f'{x}->{y}' for x, y in graph.edges)}")
    E = np.asarray(graph.edges[(a, b)], np.float64)
    const = clustering_io.has_constant_direction
    chosen, is_const, totals = _prune(E, const(graph, b), const(graph, a), max_share, max_edges)
    out, inp = np.unravel_index(chosen, E.shape)
    index = np.uint16 if max(E.shape) < 2**16 else np.uint32
    return {"from": a, "to": b, "n_total": int(E.size), **totals,
            "src": encode(inp.astype(index)), "dst": encode(out.astype(index)),
            "w": encode(E.ravel()[chosen].astype(np.float32)),
            "const": encode(is_const.astype(np.uint8))}


def ablation_scores(evaluator, graph, node_layer: str, directions: Sequence[int]) -> dict:
    """Mean ablation of some directions of ``node_layer`` in the graph's basis: the model's
    score (``evaluator``, a :class:`libjax.ablation.Evaluator` of the graph's model) with the
    activations replaced by ``f C_abl C^+``, ``C`` with the chosen columns zeroed (in a centred
    basis, each chosen coordinate of the centred activations set to zero: its mean), beside the
    unablated score and the score of ``f C C^+`` (the basis alone, which drops what lies
    outside its span)."""
    b = graph.basis(node_layer)
    if b is None:
        raise ConfigError(f"node layer {node_layer!r} has no basis (the graph's unrotated final "
                          f"layer) and cannot be ablated in it; choose one of "
                          f"{', '.join(graph.bases)}")
    C, C_pinv = np.asarray(b.C, np.float64), np.asarray(b.C_pinv, np.float64)
    chosen = np.unique(np.asarray(list(directions), np.int64))
    if not len(chosen) or chosen.min() < 0 or chosen.max() >= C.shape[1]:
        raise ConfigError(f"directions to ablate must be among 0..{C.shape[1] - 1} of "
                          f"{node_layer}, got {list(directions)}")
    keep = np.ones(C.shape[1])
    keep[chosen] = 0
    index = graph.node_layers.index(node_layer)
    evaluator.use_skip_positions(skip_positions_of(graph.config))  # neither ablated nor scored
    return {"layer": node_layer, "n_ablated": int(len(chosen)), "metric": evaluator.metric,
            "base": evaluator.base(), "projected": evaluator.node_score(index, C @ C_pinv),
            "ablated": evaluator.node_score(index, (C * keep) @ C_pinv),
            "n_samples": int(sum(float(w.sum()) for _, _, w in evaluator.batches))}


def _card_entry(card: dict) -> dict:
    """A card set for the page: arrays encoded, texts as lists, scalars as numbers."""
    out = {}
    for key, value in card.items():
        value = np.asarray(value)
        if value.dtype.kind == "U":
            out[key] = value.tolist()
        elif value.ndim == 0:
            out[key] = value.item()
        else:
            target = {"f": np.float32, "b": np.uint8}.get(value.dtype.kind)
            if value.dtype.kind in "iu" and value.dtype != np.uint8:
                target = np.int32
            out[key] = encode(value.astype(target) if target else value)
    return out


def visible_edge_counts(data: dict, share: float = DEFAULT_SHARE, top_k: int = 0,
                        include_const: bool = False) -> list[int]:
    """Per transition, how many edges the page shows at these control settings (before its cap
    on drawn edges): the page's filter, on the same decoded arrays, in the same order."""
    counts = []
    for t in data["transitions"]:
        w = decode(t["w"]).astype(np.float64)
        const = decode(t["const"]).astype(bool)
        src, dst = decode(t["src"]), decode(t["dst"])
        use = np.ones(len(w), bool) if include_const else ~const
        total = t["total"] if include_const else t["total_plain"]
        idx = np.flatnonzero(use)
        cum = np.add.accumulate(w[idx])
        n = len(idx) if not len(idx) or cum[-1] < share * total else \
            int(np.searchsorted(cum, share * total) + 1)
        idx = idx[:n]
        if top_k > 0:
            counts.append(int(((_ranks(src[idx]) < top_k) | (_ranks(dst[idx]) < top_k)).sum()))
        else:
            counts.append(len(idx))
    return counts


def _ranks(ids: np.ndarray) -> np.ndarray:
    """For each entry, how many earlier entries share its id (its rank among that node's
    edges, which come strongest first)."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    run = np.arange(len(ids)) - np.repeat(starts, np.diff(np.r_[starts, len(ids)]))
    ranks = np.empty(len(ids), int)
    ranks[order] = run
    return ranks


def page(data: dict) -> str:
    """The explorer page with ``data`` embedded (every ``<`` escaped, so that no text in it, a
    token ``</script>`` or ``<!--``, can end or confuse the script element)."""
    template = resources.files("libjax.analysis").joinpath("explorer_page.html").read_text()
    blob = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    return template.replace(PLACEHOLDER, blob)


class Explorer:
    """An explorer page: ``save(path)`` writes it; IPython/Jupyter displays it inline."""

    def __init__(self, data: dict, height: int = 720):
        self.data = data
        self.height = height

    @property
    def html(self) -> str:
        return page(self.data)

    def save(self, path) -> Path:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            files.write_atomic(path, lambda f: f.write(self.html.encode()))
        except OSError as err:
            raise StoreError(f"cannot write the explorer page {path}: {err.strerror or err}; "
                             "choose another output path") from None
        return path

    def _repr_html_(self) -> str:
        return (f'<iframe srcdoc="{html.escape(self.html, quote=True)}" style="width:100%;'
                f'height:{self.height}px;border:1px solid #ccc" sandbox="allow-scripts">'
                "</iframe>")


def explore(graph, labels=None, cards=None, clustering=None, title: str = "",
            **options) -> Explorer:
    """The explorer of ``graph``: a :class:`libjax.storage.graph.Graph`, or a finished build's
    directory (then the feature cards and clustering stored with it are shown). ``labels`` (per
    node layer, a text per node), ``cards`` (:mod:`libjax.analysis.feature_cards`) and
    ``clustering`` (:mod:`libjax.analysis.clustering`) are optional; ``options``: ``max_share``,
    ``max_edges``, ``view``."""
    if isinstance(graph, (str, os.PathLike)):
        directory = Path(graph).resolve()  # orbax needs absolute paths
        _, info, _ = store.open_complete(directory)
        graph = graph_io.load(directory)
        if cards is None:
            cards = feature_cards.load(directory, info, graph.node_layers)
        if clustering is None:
            clustering = clustering_io.load(directory)
        title = title or directory.name
    return Explorer(page_data(graph, labels, cards, clustering, title, **options))
