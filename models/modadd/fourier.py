"""Fourier frequencies of the modular-addition model's basis directions.

A trained modular-addition transformer computes with a few Fourier frequencies ``k``: its
activations are combinations of ``cos/sin(2 pi k a / p)``, ``(... b ...)`` and ``(... (a+b) ...)``.
To say which a basis direction carries, its activation is evaluated on the full ``p x p`` grid of
inputs ``(a, b)`` and expanded in the 2-D Fourier basis: the power at ``(k, 0)`` is frequency ``k``
in ``a``, at ``(0, k)`` in ``b``, and at ``(k, k)`` in ``a + b`` (``k`` and ``p - k`` are one real
frequency). Power is summed over the layer's positions; the constant (DC) term is left out.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from models.modadd import model as modadd

GROUPS = ("a", "b", "a+b")


@dataclasses.dataclass(frozen=True)
class Frequencies:
    """The dominant frequency of one direction in each group, with its share of the direction's
    non-constant power; ``constant`` when the direction has no non-constant power at all."""

    dominant: dict[str, int]
    share: dict[str, float]
    constant: bool

    def label(self, min_share: float = 0.1) -> str:
        """E.g. ``"a+b 14"``, ``"a 3, b 5"`` or ``"a,b 3"``: the groups holding at least
        ``min_share`` of the power (``mixed`` if none does)."""
        if self.constant:
            return "const"
        shown = [g for g in GROUPS if self.share[g] >= min_share]
        if "a" in shown and "b" in shown and self.dominant["a"] == self.dominant["b"]:
            shown = ["a,b"] + [g for g in shown if g not in ("a", "b")]
        dominant = dict(self.dominant, **{"a,b": self.dominant["a"]})
        return ", ".join(f"{g} {dominant[g]}" for g in shown) if shown else "mixed"


def grid_activations(model, p: int = modadd.P) -> list[np.ndarray]:
    """Activations ``(p, p, pos, d)`` at every node layer for every input ``(a, b)`` (a-major)."""
    tokens, _ = modadd.dataset(p)
    acts = jax.jit(jax.vmap(lambda x: model.all_acts(model.params, x)))(tokens)
    return [np.asarray(a, np.float64).reshape(p, p, *a.shape[1:]) for a in acts]


def frequencies(grid) -> list[Frequencies]:
    """Dominant frequencies of each direction of ``grid`` ``(p, p, pos, n_directions)``."""
    grid = np.asarray(grid, np.float64)
    p = grid.shape[0]
    power = (np.abs(np.fft.fft2(grid, axes=(0, 1))) ** 2).sum(axis=2)  # (p, p, n)
    total = power.sum(axis=(0, 1)) - power[0, 0]
    k = np.arange(1, (p - 1) // 2 + 1)
    folded = {  # (n_freq, n): power of frequency k and its mirror p - k
        "a": power[k, 0] + power[p - k, 0],
        "b": power[0, k] + power[0, p - k],
        "a+b": power[k, k] + power[p - k, p - k],
    }
    scale = power.sum(axis=(0, 1))
    out = []
    for j in range(grid.shape[-1]):
        constant = not total[j] > 1e-12 * max(scale[j], 1e-300)
        dominant = {g: int(k[np.argmax(folded[g][:, j])]) for g in GROUPS}
        share = {g: (0.0 if constant else float(folded[g][:, j].max() / total[j]))
                 for g in GROUPS}
        out.append(Frequencies(dominant, share, constant))
    return out


def direction_frequencies(model, graph) -> dict[str, list[Frequencies]]:
    """Frequencies of every direction of every node layer of ``graph`` that has a basis."""
    return {name: frequencies(grid @ np.asarray(graph.basis(name).C, np.float64))
            for name, grid in zip(model.node_layers, grid_activations(model))
            if graph.basis(name) is not None}


def labels(model, graph, min_share: float = 0.1) -> dict[str, list[str]]:
    """Short per-direction labels for graph plots, e.g.
    ``{"unembed": ["const", "a+b 14", ...]}``."""
    return {name: [f.label(min_share) for f in freqs]
            for name, freqs in direction_frequencies(model, graph).items()}
