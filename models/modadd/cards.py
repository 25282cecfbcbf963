"""Feature cards of the modular-addition model (format: :mod:`libjax.analysis.feature_cards`):
each direction's activation over the whole ``(a, b)`` grid, at the position where it varies
most, in natural order and in Fourier order (both axes sorted by ``k x mod p`` for the
direction's key frequency ``k``, where a wave of frequency ``k`` becomes one smooth stripe), with
the frequencies that carry its power (the paper's reading of these features), its histogram and
the answers it raises and lowers."""

from __future__ import annotations

import numpy as np

from libjax.analysis import activations, feature_cards
from models.modadd import fourier as modadd_fourier
from models.modadd import model as modadd

MIN_SHARE = 0.05  # a frequency is named in a card's summary when it holds this much power


def summary(f: modadd_fourier.Frequencies, min_share: float = MIN_SHARE) -> str:
    """The groups whose dominant frequency holds at least ``min_share`` of the power."""
    if f.constant:
        return "constant"
    shown = [f"{g}: k={f.dominant[g]} ({100 * f.share[g]:.0f}%)" for g in modadd_fourier.GROUPS
             if f.share[g] >= min_share]
    return ", ".join(shown) or f"no frequency holds {100 * min_share:.0f}% of the power"


def key_frequency(f: modadd_fourier.Frequencies, min_share: float = MIN_SHARE) -> int:
    """The dominant frequency of the group with the most power; 0 when none holds
    ``min_share``."""
    group = max(modadd_fourier.GROUPS, key=lambda g: f.share[g])
    return 0 if f.constant or f.share[group] < min_share else f.dominant[group]


def fourier_order(k: int, p: int) -> np.ndarray:
    """The residues ``0..p-1`` sorted by ``k x mod p`` (natural order for ``k = 0``)."""
    return np.argsort((k * np.arange(p)) % p, kind="stable")


def output_names(width: int, p: int) -> list[str]:
    """The model's outputs: the answer ``c = (a + b) mod p`` for each of the first ``p`` logits,
    then the other tokens (the ``=`` sign)."""
    return [f"c={j}" if j < p else "=" for j in range(width)]


def modadd_cards(model, graph, node_layers, p: int = modadd.P, effect_stride: int = 25) -> dict:
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
            label = [f"logit {j} (c={j}): {text}" if j < p else f"logit {j} (=): {text}"
                     for j, text in enumerate(label)]
        keys = np.asarray([key_frequency(f) for f in freqs], np.int32)
        cards[name] = {"kind": "grid", "grid": codes, "scale": scale, "position": position,
                       "label": np.asarray(label), "summary": np.asarray([summary(f)
                                                                          for f in freqs]),
                       "axes": np.asarray(["a", "b"]), "key_frequency": keys,
                       "fourier_order": np.stack([fourier_order(k, p) for k in keys])
                       .astype(np.int16),
                       **feature_cards.histograms(best.reshape(p * p, -1)),
                       **feature_cards.effects(model, graph, name, tokens[::effect_stride],
                                               acts.reshape(-1, acts.shape[-1]).std(axis=0),
                                               output_names(model.layers[-1].width, p))}
    return cards
