"""Graphs made up on the spot (random bases and edges of chosen sizes) for the analysis tests:
what the explorer, the clustering and the feature cards read, without running a build."""

from __future__ import annotations

import numpy as np

from libjax.basis import Basis
from libjax.storage.graph import Graph


def basis(orig: int, dim: int, rng, kind: str = "lib") -> Basis:
    """A random basis ``C`` ``(orig, dim)``; Lambda decreasing (LIB), or variances only (PCA)."""
    C = rng.normal(size=(orig, dim))
    values = np.sort(rng.uniform(0.1, 10.0, dim))[::-1]
    return Basis(C=C, C_pinv=np.linalg.pinv(C), W=C, W_pinv=np.linalg.pinv(C),
                 Lambda=values if kind == "lib" else None, gram_eigenvalues=values, kind=kind)


def graph(orig_dims: dict, dims: dict, seed: int = 0, kind: str = "lib", center: bool = True,
          edges: dict | None = None) -> Graph:
    """Node layers in ``orig_dims``' order; ``dims[name]`` directions (None: no basis, its
    neurons are its nodes); heavy-tailed random edges unless ``edges`` gives them."""
    rng = np.random.default_rng(seed)
    names = tuple(orig_dims)
    bases = {n: basis(orig_dims[n], dims[n], rng, kind) for n in names if dims.get(n)}
    width = {n: dims.get(n) or orig_dims[n] for n in names}
    if edges is None:
        edges = {(a, b): rng.exponential(size=(width[b], width[a])) ** 3
                 for a, b in zip(names[:-1], names[1:])}
    grams = {}
    for n in names:
        x = rng.normal(size=(4 * orig_dims[n], orig_dims[n]))
        grams[n] = x.T @ x / len(x)
    return Graph(node_layers=names, bases=bases, edges=edges,
                 means={n: np.zeros(orig_dims[n]) for n in names}, grams=grams,
                 orig_dims=dict(orig_dims), config={"basis": kind, "center": center})
