"""Attention rows of the edge-masked forward from their own input nodes (libjax.ablation
.edge_attention) against its general path, one section evaluation per row pattern, on tiny
LayerNorm, Llama- (rotary, grouped-query) and Pythia-shaped (parallel, partial rotary) models,
and a LayerNorm-free one scoring the last position only (shared input, rotary, one key head)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from libjax import ablation
from libjax.ablation import edge_attention
from libjax.ablation.edge_attention import AttentionRows
from tests.helpers.edge_cases import edge_masks, tiny_block
from tests.helpers.tiny import tiny_transformer

LAYERS = ("attn_in.0", "ln2.0")


@pytest.fixture(scope="module", params=["ln", "llama", "pythia", "last"])
def built(request):
    """A tiny model, its tokens and labels, and the index of its attention transition."""
    if request.param == "last":
        model, tokens = tiny_transformer(("ln1_out.0", "ln2.0"), rotary_dim=2, kv_heads=1)
    else:
        model, tokens = tiny_block(request.param, LAYERS, n_samples=16)
    labels = tokens[:, 0] if request.param == "last" else np.roll(tokens, -1, axis=1)
    return request.param, model, np.asarray(tokens), labels, 0


def _forwards(ev, index, row_bytes=2**28):
    """The default edge forward and the general path (no shortcuts, no cache) of transition
    ``index``, in random bases: one node fewer than the input's width (``C_in^+`` a
    pseudo-inverse), as many as the output's (``C_out`` mixes every output coordinate)."""
    rng = np.random.default_rng(index)
    acts = ev.acts(index)[0]
    d_in = acts.shape[-1]
    d_out = ev.model.sections[index].fn(ev.params, acts[0]).shape[-1]
    c_in = rng.standard_normal((d_in, d_in - 1))
    c_out = rng.standard_normal((d_out, d_out))
    args = (ev, index, c_in, np.linalg.pinv(c_in), (c_out, np.linalg.inv(c_out)))
    return (ablation.EdgeForward(*args, row_bytes=row_bytes),
            ablation.EdgeForward(*args, cache_bytes=0, try_affine=False, try_products=False))


def _check(ev, index, row_bytes=2**28):
    """The shortcut is used, and its scores equal the general path's to 1e-10 at every density
    and from the cache."""
    fast, general = _forwards(ev, index, row_bytes)
    assert isinstance(fast.rows, AttentionRows) and general.rows is None
    rng = np.random.default_rng(0)
    for mask in edge_masks(fast.shape, rng):
        assert fast.score(mask) == pytest.approx(general.score(mask), rel=1e-10, abs=1e-12)
    assert fast.score(mask) == pytest.approx(general.score(mask), rel=1e-10)  # from the cache


def test_attention_rows_equal_the_general_path(built):
    name, model, tokens, labels, index = built
    _check(ablation.Evaluator(model, tokens, labels, "ce_loss", 16, dtype=np.float64), index)


@pytest.mark.parametrize("built", ["pythia"], indirect=True)
def test_attention_rows_with_positions_left_out(built):
    """Positions left out of the build read the whole input: their queries, keys and values
    are the unablated ones (docs/method.md 1.13)."""
    _, model, tokens, labels, index = built
    _check(ablation.Evaluator(model, tokens, labels, "ce_loss", 16, dtype=np.float64,
                              skip_positions=(0,)), index)


@pytest.mark.parametrize("built", ["llama"], indirect=True)
def test_attention_rows_in_many_chunks_and_blocks(built, monkeypatch):
    """One row per chunk and lists of several blocks: the traced trip counts."""
    _, model, tokens, labels, index = built
    monkeypatch.setattr(edge_attention, "BLOCK", 2)
    _check(ablation.Evaluator(model, tokens, labels, "ce_loss", 16, dtype=np.float64), index,
           row_bytes=1)


@pytest.mark.parametrize("built", ["llama"], indirect=True)
def test_a_form_that_misses_the_section_falls_back(built):
    """A form that does not reproduce the section (here a wrong scale) is not used."""
    _, model, tokens, labels, index = built
    fast, _ = _forwards(ablation.Evaluator(model, tokens, labels, "ce_loss", 16,
                                           dtype=np.float64), index)
    form = fast.section.form
    wrong = dataclasses.replace(form, scale=2 * form.scale)
    assert AttentionRows.of(fast.ev, wrong, fast._reference_section(),
                            [x for x, _ in fast._prepared],
                            np.asarray(fast.c_in_pinv, np.float64),
                            np.asarray(fast.c_out, np.float64), 2**28) is None
    assert AttentionRows.of(fast.ev, form, fast._reference_section(),
                            [x for x, _ in fast._prepared],
                            np.asarray(fast.c_in_pinv, np.float64),
                            np.asarray(fast.c_out, np.float64), 2**28) is not None
