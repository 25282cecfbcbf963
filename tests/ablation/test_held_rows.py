"""Rows of an edge-masked section computed from the sums they were last computed with
(libjax/ablation/held_rows.py, masks.cheapest_lists): each row's list rebuilds its mask row, and
a bisection's masks score the same with and without held sums, and as the general path."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from libjax import ablation, pipeline
from libjax.ablation import experiments, held_rows
from libjax.ablation.edge_attention import AttentionRows
from libjax.ablation.edge_mlp import MLPRows
from libjax.ablation.masks import FULL, HELD, ZERO, cheapest_lists
from tests.helpers.edge_cases import bisection_masks, tiny_block


def test_each_list_rebuilds_its_row_and_is_the_shortest():
    """Base pattern plus signed list is the row of the mask; the list is the shortest of the
    kept nodes, the ablated ones and, for the first 25 rows (those held), the changes since
    the held pattern; rows sorted by it."""
    rng = np.random.default_rng(0)
    mask = rng.random((40, 17)) < rng.random((40, 1))
    held = mask ^ (rng.random((40, 17)) < rng.random((40, 1)) / 2)
    rows = rng.permutation(40)[:30]
    lists, signs, out_rows, bases, kept, lengths = cheapest_lists(mask, rows, 32, 8, held[:25])
    assert sorted(out_rows[:30]) == sorted(rows) and (out_rows[30:] == 40).all()
    assert (np.diff(lengths) >= 0)[:29].all() and set(np.unique(bases[:30])) == {ZERO, FULL,
                                                                                  HELD}
    for row, lst, sign, base, length in zip(out_rows[:30], lists, signs, bases, lengths):
        start = {ZERO: np.zeros(17), FULL: np.ones(17), HELD: held[row].astype(float)}[base]
        assert (lst[length:] == 17).all()
        np.add.at(start, lst[:length], sign[:length])
        np.testing.assert_array_equal(start, mask[row])
        n_kept = mask[row].sum()
        changes = (mask[row] != held[row]).sum() if row < 25 else 17
        assert length == min(n_kept, 17 - n_kept, changes)
        assert row < 25 or base != HELD
    assert (bases[30:] == ZERO).all() and not kept[30:].any()


@pytest.fixture(scope="module", params=["ln", "llama"])
def built(request):
    model, tokens = tiny_block(request.param)
    graph = pipeline.build(model, tokens, pipeline.BuildConfig(batch_size=64))
    return request.param, model, graph, np.asarray(tokens), np.roll(tokens, -1, axis=1)


@pytest.mark.parametrize("layer, rows_type", [("mlp_in.0", MLPRows),
                                              ("attn_in.0", AttentionRows)])
def test_a_bisection_scores_the_same_from_held_sums(built, layer, rows_type, caplog,
                                                     monkeypatch):
    """Masks of a bisection in float64, each scored once: from held sums of every row, of half
    the rows and of none (no room for more, as the log says), and on the general path, to
    1e-10; most rows after the first mask start from their held sums, written after every list
    (LayerNorm model) or only after lists of 3 nodes or more (Llama; the tiny models' lists are
    short)."""
    name, model, graph, tokens, labels = built
    monkeypatch.setattr(held_rows, "WORTH_HOLDING", {"ln": 1, "llama": 3}[name])
    ev = ablation.Evaluator(model, tokens, labels, "ce_loss", 16, dtype=np.float64)
    index = graph.node_layers.index(layer)
    a, b = graph.edge_pairs[index]
    args = (ev, index, graph.bases[a].C, graph.bases[a].C_pinv,
            None if b not in graph.bases else (graph.bases[b].C, graph.bases[b].C_pinv))
    held = ablation.EdgeForward(*args)
    assert isinstance(held.rows, rows_type)
    n_out = held.shape[0]
    assert len(held.rows.held.patterns) == n_out
    room = sum(x.nbytes for x in held.rows.held.arrays)
    with caplog.at_level(logging.INFO, logger="libjax"):
        others = [ablation.EdgeForward(*args, held_bytes=budget) for budget in (room // 2, 0)]
    assert f"the sums of {n_out // 2} of {n_out} output nodes fit in memory" in caplog.text
    assert f"the sums of 0 of {n_out} output nodes fit" in caplog.text
    assert others[1].rows.held.arrays is None
    general = ablation.EdgeForward(*args, cache_bytes=0, try_affine=False, try_products=False)
    from_held = 0
    for mask in bisection_masks(held.shape, np.random.default_rng(1)):
        changed = np.flatnonzero((mask != held.rows.held.patterns).any(1) & ~mask.all(1))
        bases = cheapest_lists(mask, changed, len(mask), mask.shape[1],
                               held.rows.held.patterns)[3]
        from_held += (bases == HELD).sum()
        want = general.score(mask)
        for forward in (held, *others):
            assert forward.score(mask) == pytest.approx(want, rel=1e-10, abs=1e-12)
    assert from_held >= n_out


@pytest.mark.parametrize("built", ["ln"], indirect=True)
def test_a_bisection_releases_its_held_sums(built, monkeypatch):
    """After each transition's bisection its forward holds no sums and no cached rows."""
    _, model, graph, tokens, labels = built
    ev = ablation.Evaluator(model, tokens, labels, "ce_loss", 16, dtype=np.float32)
    made = []

    def recorded(*args, **kwargs):
        made.append(ablation.EdgeForward(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(experiments, "EdgeForward", recorded)
    pairs = [graph.edge_pairs[graph.node_layers.index(name)] for name in ("attn_in.0",
                                                                          "mlp_in.0")]
    ablation.edge_ablation(ev, graph, pairs, ablation.Bisect(0.05))
    assert [type(f.rows) for f in made] == [AttentionRows, MLPRows]
    for forward in made:
        assert forward.rows.held.arrays is None and not forward._steps
