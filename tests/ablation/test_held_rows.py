"""Rows of an edge-masked section computed from the sums they were last computed with
(libjax/ablation/held_rows.py, masks.cheapest_lists): each row's list rebuilds its mask row, and
a bisection's masks score the same with and without held sums, and as the general path."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from libjax import ablation, pipeline
from libjax.ablation import experiments, held_rows, masks
from libjax.ablation.edge_attention import AttentionRows
from libjax.ablation.edge_mlp import MLPRows
from libjax.ablation.masks import FULL, HELD, ZERO, cheapest_lists
from tests.helpers.edge_cases import bisection_masks, tiny_block


def _start(lists, slot, held, mask):
    """The pattern slot ``slot``'s list is added to."""
    base, source = lists.bases[slot], lists.sources[slot]
    if base == HELD:
        return (held if source == lists.rows[slot] else mask)[source].astype(float)
    return np.full(mask.shape[1], float(base == FULL))


@pytest.mark.parametrize("group", [4, 16])
@pytest.mark.parametrize("nested", [False, True])
def test_each_list_rebuilds_its_row_and_costs_at_most_its_own_start(nested, group):
    """Base pattern plus signed list is the row of the mask; no row costs more than its
    cheapest start of its own (kept nodes, ablated ones or, for the 25 held rows, the changes
    since their held pattern); a row started from another row's new sums comes in a later
    group than it, from a held row, and few groups are padded. Nearly nested rows (a
    bisection's first masks) are mostly started from each other, at a fraction of the cost."""
    rng = np.random.default_rng(0)
    n_out, n_in = 40, 200
    if nested:  # one order of the nodes, each row keeps a prefix of it, a few nodes flipped
        order = rng.permutation(n_in)
        mask = np.zeros((n_out, n_in), bool)
        for row, n in enumerate(rng.integers(40, 160, n_out)):
            mask[row, order[:n]] = True
        mask ^= rng.random((n_out, n_in)) < 0.01
    else:
        mask = rng.random((n_out, n_in)) < rng.random((n_out, 1))
    held = mask ^ (rng.random((n_out, n_in)) < rng.random((n_out, 1)) / 2)
    rows = rng.permutation(n_out)[:30]
    lists = cheapest_lists(mask, rows, group, masks.longest_list(n_in), held[:25])
    real = np.flatnonzero(lists.rows < n_out)
    assert sorted(lists.rows[real]) == sorted(rows) and lists.n_groups * group > real.max()
    assert len(lists.rows) == (-(-n_out // group) + masks.MAX_DEPTH + 1) * group
    group_of = {row: slot // group for slot, row in zip(real, lists.rows[real])}
    costs = own_costs = 0
    for slot in real:
        row, length = lists.rows[slot], lists.lengths[slot]
        start = _start(lists, slot, held, mask)
        assert length <= masks.longest_list(n_in) and (lists.lists[slot, length:] == n_in).all()
        np.add.at(start, lists.lists[slot, :length], lists.signs[slot, :length])
        np.testing.assert_array_equal(start, mask[row])
        n_kept = mask[row].sum()
        own = [n_kept, n_in - n_kept + masks.BASE_COST]
        if row < 25:
            own.append((mask[row] != held[row]).sum() + masks.BASE_COST)
        cost = length + (lists.bases[slot] != ZERO) * masks.BASE_COST
        assert cost <= min(own)
        costs, own_costs = costs + cost, own_costs + min(own)
        source = lists.sources[slot]
        if lists.bases[slot] == HELD and source != row:
            assert source < 25 and source in group_of and group_of[source] < group_of[row]
            assert lists.sourced[np.flatnonzero(lists.rows == source)[0]]
    source_of = {row: source for row, source, base in zip(lists.rows[real], lists.sources[real],
                                                          lists.bases[real])
                 if base == HELD and source != row}
    depth = {row: 0 for row in rows}
    for _ in range(masks.MAX_DEPTH):
        depth = {row: depth[source_of[row]] + 1 if row in source_of else 0 for row in rows}
    assert max(depth.values()) <= masks.MAX_DEPTH
    assert lists.n_groups <= -(-len(rows) // group) + max(depth.values())
    padding = np.setdiff1d(np.arange(len(lists.rows)), real)
    assert (lists.bases[padding] == ZERO).all() and not lists.kept[padding].any()
    if nested:
        assert costs < own_costs / 2
    else:
        assert set(np.unique(lists.bases[real])) == {ZERO, FULL, HELD}


@pytest.fixture(scope="module", params=["ln", "llama"])
def built(request):
    model, tokens = tiny_block(request.param)
    graph = pipeline.build(model, tokens, pipeline.BuildConfig(batch_size=64))
    return request.param, model, graph, np.asarray(tokens), np.roll(tokens, -1, axis=1)


@pytest.mark.parametrize("built, layer, rows_type", [
    ("ln", "mlp_in.0", MLPRows), ("llama", "attn_in.0", AttentionRows),
    pytest.param("ln", "attn_in.0", AttentionRows, marks=pytest.mark.slow),
    pytest.param("llama", "mlp_in.0", MLPRows, marks=pytest.mark.slow)], indirect=["built"])
def test_a_bisection_scores_the_same_from_held_sums(built, layer, rows_type, caplog,
                                                     monkeypatch):
    """Masks of a bisection in float64, each scored once: from held sums of every row, of half
    the rows and of none (no room for more, as the log says), and on the general path, to
    1e-10; most rows after the first mask start from their held sums, written after every list
    (LayerNorm model) or only after lists of 3 nodes or more (Llama; the tiny models' lists are
    short)."""
    name, model, graph, tokens, labels = built
    monkeypatch.setattr(held_rows, "WORTH_HOLDING", {"ln": 1, "llama": 3}[name])
    monkeypatch.setattr(masks, "BASE_COST", 1)  # the tiny models' rows are a few nodes long
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
    from_held = from_others = 0
    for mask in bisection_masks(held.shape, np.random.default_rng(1)):
        changed = np.flatnonzero((mask != held.rows.held.patterns).any(1) & ~mask.all(1))
        lists = cheapest_lists(mask, changed, 4, mask.shape[1], held.rows.held.patterns)
        from_held += (lists.bases == HELD).sum()
        from_others += ((lists.bases == HELD) & (lists.sources != lists.rows)).sum()
        want = general.score(mask)
        for forward in (held, *others):
            assert forward.score(mask) == pytest.approx(want, rel=1e-10, abs=1e-12)
    assert from_held >= n_out and from_others >= n_out // 4


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
