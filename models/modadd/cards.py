"""Feature cards of the modular-addition model (format: :mod:`libjax.analysis.feature_cards`):
each direction's activation over the whole ``(a, b)`` grid, at the position where it varies
most, with its dominant Fourier frequencies (the paper's reading of these features)."""

from __future__ import annotations

import numpy as np

from libjax.analysis import activations, feature_cards
from models.modadd import fourier as modadd_fourier
from models.modadd import model as modadd


def modadd_cards(model, graph, node_layers, p: int = modadd.P) -> dict:
    tokens, _ = modadd.dataset(p)
    cards = {}
    for name in node_layers:
        acts = activations.basis_activations(model, name, tokens,
                                             feature_cards.basis_matrix(graph, name), 4096)
        grid = acts.reshape(p, p, *acts.shape[1:])  # (a, b, pos, dirs)
        freqs = modadd_fourier.frequencies(grid)
        position = grid.var(axis=(0, 1)).argmax(axis=0)  # (dirs,)
        best = np.take_along_axis(grid, position[None, None, None, :], axis=2)[:, :, 0]
        codes, scale = feature_cards.quantise(np.moveaxis(best, -1, 0), axis=(1, 2))
        label = [f.label() for f in freqs]
        if graph.basis(name) is None:
            label = [f"logit {j}: {text}" for j, text in enumerate(label)]
        summary = [", ".join(f"{g}: k={f.dominant[g]} ({100 * f.share[g]:.0f}%)"
                             for g in modadd_fourier.GROUPS) if not f.constant else "constant"
                   for f in freqs]
        cards[name] = {"kind": "grid", "grid": codes, "scale": scale, "position": position,
                       "label": np.asarray(label), "summary": np.asarray(summary),
                       "axes": np.asarray(["a", "b"])}
    return cards
