"""Fourier labels of modular-addition directions on synthetic activation grids."""

from __future__ import annotations

import numpy as np
import pytest

from models.modadd import fourier as modadd_fourier

P = 113


def _grid(*directions):
    """Stack per-position direction grids into ``(p, p, pos, n)``."""
    return np.stack(directions, axis=-1)


def test_frequencies_of_pure_waves():
    a, b = np.meshgrid(np.arange(P), np.arange(P), indexing="ij")
    w = 2 * np.pi / P
    sum_wave = np.cos(w * 5 * (a + b))[:, :, None]
    separate = np.stack([np.cos(w * 3 * a + 0.4), np.sin(w * 7 * b)], axis=-1)  # two positions
    product = (np.cos(w * 9 * a) * np.cos(w * 9 * b))[:, :, None]  # = (a+b) and (a-b) halves
    const = np.full((P, P, 1), 2.5)
    grid = _grid(np.concatenate([sum_wave, sum_wave], axis=2), separate,
                 np.concatenate([product, product], axis=2), np.concatenate([const, const], axis=2))
    f_sum, f_sep, f_prod, f_const = modadd_fourier.frequencies(grid)
    assert f_sum.dominant["a+b"] == 5 and f_sum.share["a+b"] == pytest.approx(1.0)
    assert f_sum.label() == "a+b 5"
    assert (f_sep.dominant["a"], f_sep.dominant["b"]) == (3, 7)
    assert f_sep.share["a"] == pytest.approx(0.5) and f_sep.share["a+b"] == pytest.approx(0.0)
    assert f_sep.label() == "a 3, b 7"
    assert f_prod.dominant["a+b"] == 9 and f_prod.share["a+b"] == pytest.approx(0.5)
    assert f_const.constant and f_const.label() == "const"


def test_shared_frequency_label():
    f = modadd_fourier.Frequencies({"a": 15, "b": 15, "a+b": 2}, {"a": 0.4, "b": 0.4, "a+b": 0.01},
                                   False)
    assert f.label() == "a,b 15"
    assert modadd_fourier.Frequencies({"a": 1, "b": 2, "a+b": 3}, {g: 0.02 for g in
                                      modadd_fourier.GROUPS}, False).label() == "mixed"
