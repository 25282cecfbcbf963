"""Fidelity of the mixed precision policy: a model built in float64, in float64 truncated as the
mixed policy truncates, and in mixed, compared per node layer in a Markdown table, as
``precision_fidelity.py`` writes it (the builds and ablations are runs of the scripts).

Per node layer: directions kept, the number of Lambdas above 1e-4 of the layer's largest, the
largest relative error of the leading Lambdas (above 1e-2 of the largest), the edge sums'
relative difference, the edges each transition requires and the largest node-ablation accuracy
difference over the paper's points. The Lambda and edge-sum errors are given twice: against the
float64 build, and against a float64 build truncated at the mixed policy's relative threshold,
which separates what float32 arithmetic loses from what the different truncation changes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from libjax.storage import graph as graph_lib

# float64, float64 truncated as mixed is, mixed
VARIANTS = ("float64", "float64_rel", "mixed")


def ablations(directory: Path) -> tuple[dict, dict]:
    """The node-ablation results and the edges required of the LIB build in ``directory``."""
    node = json.loads(next((directory / "ablations").glob("*_lib_ablation_results.json"))
                      .read_text())
    edge = json.loads(next((directory / "ablations").glob("*_edge_ablation_results.json"))
                      .read_text())
    return node["results"], edge["n_edges_required"]


def leading_error(reference: np.ndarray, other: np.ndarray) -> float:
    """Largest relative error of ``other``'s leading Lambdas: the ``n`` largest of each, ``n``
    those of ``reference`` above 1e-2 of its largest (sorted: the constant and an isolated
    variance keep their places in a basis, not their rank)."""
    reference, other = np.sort(reference)[::-1], np.sort(other)[::-1]
    n = int(np.sum(reference > 1e-2 * reference[0]))
    return float(np.max(np.abs(other[:n] - reference[:n]) / reference[:n]))


def rows(name: str, dirs: Mapping[str, Path], ablated: bool) -> list[str]:
    """The table rows of one model: ``dirs`` holds its builds by variant (:data:`VARIANTS`),
    those of float64 and mixed also ablated (``ablate.py``'s records) where ``ablated``."""
    graphs = {v: graph_lib.load(d) for v, d in dirs.items()}
    ref, rel, mixed = (graphs[v] for v in VARIANTS)
    if ablated:
        (node_r, edges_r), (node_m, edges_m) = ablations(dirs["float64"]), ablations(dirs["mixed"])
    rows = []
    for layer in ref.node_layers:
        bases = [g.bases.get(layer) for g in (ref, rel, mixed)]
        cells = [name, layer]
        if bases[0] is not None and bases[0].Lambda is not None:
            lam_r, lam_rel, lam_m = (b.Lambda for b in bases)
            above = [int(np.sum(v > 1e-4 * v.max())) for v in (lam_r, lam_m)]
            cells += [" / ".join(str(b.dim) for b in bases), f"{above[0]} / {above[1]}",
                      f"{leading_error(lam_r, lam_m):.1e} / {leading_error(lam_rel, lam_m):.1e}"]
        else:
            cells += ["", "", ""]
        pair = next(((a, b) for a, b in ref.edges if a == layer), None)
        if pair is None:
            cells += ["", ""]
        else:
            total = mixed.edges[pair].sum()
            cells.append(f"{total / ref.edges[pair].sum() - 1:+.1e} / "
                         f"{total / rel.edges[pair].sum() - 1:+.1e}")
            if ablated:
                e_r, e_m = edges_r[layer], edges_m[layer]
                cells.append(f"{e_r} / {e_m} ({100 * (e_m / e_r - 1):+.1f}%)")
            else:
                cells.append("")
        if ablated and layer in node_r:
            points = sorted(set(node_r[layer]) & set(node_m[layer]), key=int)
            node = max(abs(node_r[layer][p] - node_m[layer][p]) for p in points)
            cells.append(f"{node:.4f} ({len(points)} points)")
        else:
            cells.append("")
        rows.append("| " + " | ".join(cells) + " |")
    return rows


HEADER = ("| model | node layer | kept f64 / f64 at mixed's truncation / mixed | "
          "Lambdas > 1e-4 max f64 / mixed | leading Lambda max rel. error vs f64 / vs f64 at "
          "mixed's truncation | edge sum rel. diff vs f64 / vs f64 at mixed's truncation | "
          "edges required f64 / mixed | node ablation max abs. diff |\n|" + "---|" * 8)
