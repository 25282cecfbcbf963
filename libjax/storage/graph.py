"""The result of a build: bases and edges of every node layer, with config and timings.

``graph.load(out_dir)`` reads a finished build written by :func:`libjax.pipeline.run.build`::

    g = graph.load("out/modadd")
    g.node_layers                      # ('ln1.0', 'ln2.0', 'unembed', 'output')
    g.bases["ln1.0"].C                 # (orig, rib); .C_pinv, .Lambda (None for PCA/neuron)
    g.bases["ln1.0"].kind              # the name of the kind that made it (libjax.kinds)
    g.edges[("ln1.0", "ln2.0")]        # (out, in), E >= 0

``bases`` holds every node layer that has a basis (an unrotated final layer has none: its nodes
are its neurons); ``orig_dims``/``dims`` give each layer's neuron and node counts.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np

from libjax.basis import Basis
from libjax.errors import StoreError
from libjax.storage import store

STATS_STAGE = "stats"


def basis_stage(node_layer: str) -> str:
    return f"basis_{node_layer}"


def edge_stage(in_layer: str, out_layer: str) -> str:
    return f"edges_{in_layer}__{out_layer}"


# Stages written before kinds were stored by name hold ``kind``, an index into this list.
_OLD_KIND_INDEX = ("neuron", "pca", "lib")


def basis_to_tree(b: Basis) -> dict:
    """A basis as a stage: its arrays and its kind's name (as UTF-8 bytes, ``kind_name``)."""
    tree = {k: getattr(b, k) for k in ("C", "C_pinv", "W", "W_pinv", "Lambda", "gram_eigenvalues",
                                        "V") if getattr(b, k) is not None}
    tree["kind_name"] = np.frombuffer(b.kind.encode(), np.uint8).copy()
    return tree


def basis_from_tree(tree: dict) -> Basis:
    """Inverse of :func:`basis_to_tree`; also reads the older stages that stored ``kind`` as an
    index."""
    if "kind_name" in tree:
        kind = np.asarray(tree["kind_name"], np.uint8).tobytes().decode()
    else:
        kind = _OLD_KIND_INDEX[int(tree["kind"])]
    arrays = {k: np.asarray(v) for k, v in tree.items() if k not in ("kind", "kind_name")}
    return Basis(kind=kind, **arrays)


@dataclasses.dataclass(frozen=True)
class Graph:
    """Bases, edges and statistics of one build.

    Attributes:
      node_layers: node-layer names in order.
      bases: node layer -> :class:`~libjax.basis.Basis` (layers that have one).
      edges: ``(in_layer, out_layer)`` -> ``(out_nodes, in_nodes)`` edge matrix.
      means, grams: node layer -> mean ``(orig,)`` and Gram matrix ``(orig, orig)``.
      orig_dims: node layer -> width of its (folded) activations.
      config: the build configuration (JSON-able dict).
      timings: phase -> seconds.
    """

    node_layers: tuple[str, ...]
    bases: dict
    edges: dict
    means: dict
    grams: dict
    orig_dims: dict
    config: dict
    timings: dict = dataclasses.field(default_factory=dict)

    def dim(self, node_layer: str) -> int:
        """Number of nodes at ``node_layer``: kept directions, or neurons if it has no basis."""
        b = self.bases.get(node_layer)
        return b.dim if b is not None else self.orig_dims[node_layer]

    @property
    def edge_pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.node_layers[:-1], self.node_layers[1:]))

    def basis(self, node_layer: str) -> Optional[Basis]:
        return self.bases.get(node_layer)


def edge_mass_count(edges: np.ndarray, fraction: float = 0.99) -> int:
    """How many of the largest edges carry ``fraction`` of the total edge weight."""
    flat = np.sort(np.asarray(edges, np.float64).ravel())[::-1]
    total = flat.sum()
    if total <= 0:
        return 0
    return int(np.searchsorted(np.cumsum(flat), fraction * total) + 1)


def summary(g: Graph, n_lambdas: int = 3) -> dict:
    """A JSON-able digest: per layer dims and leading Lambdas, per edge matrix shape and mass."""
    layers = {}
    for name in g.node_layers:
        b = g.bases.get(name)
        entry = {"orig_dim": int(g.orig_dims[name]), "dim": int(g.dim(name)),
                 "basis": b.kind if b is not None else "none"}
        if b is not None and b.Lambda is not None:
            entry["leading_lambdas"] = [float(x) for x in b.Lambda[:n_lambdas]]
        layers[name] = entry
    edges = {}
    for (a, b), e in g.edges.items():
        edges[f"{a}->{b}"] = {"shape": list(e.shape), "sum": float(np.sum(e)),
                              "n_edges_99pct": edge_mass_count(e)}
    return {"complete": True, "node_layers": list(g.node_layers), "layers": layers,
            "edges": edges, "timings_s": g.timings}


def format_summary(s: dict) -> str:
    """Human-readable lines of :func:`summary`'s output."""
    lines = ["node layer        orig    kept  leading Lambdas"]
    for name, e in s["layers"].items():
        lam = ", ".join(f"{x:.6g}" for x in e.get("leading_lambdas", [])) or f"({e['basis']} basis)"
        lines.append(f"{name:<16} {e['orig_dim']:>5} {e['dim']:>7}  {lam}")
    lines.append("edges                          shape           sum   edges with 99% of it")
    for name, e in s["edges"].items():
        shape = "x".join(map(str, e["shape"]))
        lines.append(f"{name:<28} {shape:>9} {e['sum']:>15.8g}   {e['n_edges_99pct']}")
    lines.append("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in s["timings_s"].items()))
    return "\n".join(lines)


def _agrees(have, want, exact: bool) -> bool:
    """Whether a value read back agrees with the one recorded (to 1e-9: a sum may be taken in
    another order elsewhere)."""
    try:
        want = np.asarray(want, np.float64)
        return np.shape(want) == np.shape(have) and (
            np.array_equal(have, want) if exact else np.allclose(have, want, rtol=1e-9, atol=0))
    except (TypeError, ValueError):  # the record holds something that is not a number
        return False


def _check_against_summary(path, summ: dict, g: Graph) -> None:
    """The graph read back has the dimensions, leading Lambdas and edge sums that ``summary.json``
    recorded when it was built (a second check, beside the stages' checksums, that also covers
    builds stored before checksums existed)."""
    recorded = summary(g)
    for kind, key, what in (("layers", "dim", "kept directions"),
                            ("layers", "leading_lambdas", "leading Lambdas"),
                            ("edges", "shape", "edge matrix shape"), ("edges", "sum", "edge sum")):
        for name, entry in recorded[kind].items():
            want = summ.get(kind, {}).get(name, {}).get(key)
            have = entry.get(key)
            if want is None or have is None:
                continue
            if not _agrees(have, want, exact=key in ("dim", "shape")):
                stage = basis_stage(name) if kind == "layers" else edge_stage(*name.split("->"))
                raise StoreError(
                    f"stage {stage!r} of the build in {path} disagrees with its summary ({what} "
                    f"{have}, recorded {want}): the stage or {store.SUMMARY_FILE} is corrupt, and "
                    "nothing was computed from it; rerun the same compute_basis.py command with "
                    f"--overwrite to rebuild it, or delete {path / 'stages' / stage} and "
                    f"{path / store.SUMMARY_FILE} and rerun the same command to recompute the "
                    "stage")


def load(out_dir: str | os.PathLike) -> Graph:
    """Read a finished build from ``out_dir`` (refuses an incomplete or damaged one: stages are
    checked against their checksums and against the sums ``summary.json`` records)."""
    path, info, summ = store.open_complete(out_dir)
    node_layers = tuple(info["node_layers"])
    stats = store.read_stage(path, STATS_STAGE)
    bases = {}
    for name in node_layers:
        if (path / "stages" / basis_stage(name)).exists():
            bases[name] = basis_from_tree(store.read_stage(path, basis_stage(name)))
    edges = {}
    for a, b in zip(node_layers[:-1], node_layers[1:]):
        if (path / "stages" / edge_stage(a, b)).exists():
            edges[(a, b)] = np.asarray(store.read_stage(path, edge_stage(a, b))["E"])
    stat_layers = info["stat_layers"]
    g = Graph(
        node_layers=node_layers, bases=bases, edges=edges,
        means=dict(zip(stat_layers, map(np.asarray, stats["means"]))),
        grams=dict(zip(stat_layers, map(np.asarray, stats["grams"]))),
        orig_dims=dict(zip(node_layers, info["orig_dims"])), config=info["config"],
        timings=summ.get("timings_s", {}))
    _check_against_summary(path, summ, g)
    return g
