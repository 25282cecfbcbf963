"""Ablations on hand-made cases: schedules, bisection, edge masks, rotations, metrics, and the
fast edge-masked forward against a direct per-row implementation (docs/method.md 3)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from libjax import ablation, pipeline
from libjax.ablation.metrics import metric_sums
from libjax.errors import ConfigError, DataError
from tests.helpers.tiny import tiny_transformer

LAYERS = ("ln1.0", "ln2.0", "unembed", "output")


# --- schedules ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, cutoff, base, expected", [
    (12, 3, 2.0, [12, 11, 10, 9, 8, 6, 2, 0]),  # docs/method.md 3.2
    (12, 0, 2.0, [12, 11, 9, 5, 0]),
    (12, 1, 2.0, [12, 11, 10, 8, 4, 0]),
    (24, 3, 2.0, [24, 23, 22, 21, 20, 18, 14, 6, 0]),
    (5, None, 2.0, [5, 4, 3, 2, 1, 0]),
    (5, 10, 2.0, [5, 4, 3, 2, 1, 0]),  # a layer narrower than the cutoff: every value
])
def test_exponential_schedule(n, cutoff, base, expected):
    assert ablation.exponential_schedule(n, cutoff, base) == expected


def test_paper_modadd_schedule_has_the_48_points_of_spec():
    remaining = [129, 125, 119, 113, 107, 102, 97, 92, 87, 83, 79, 75, 71, 67, 63, 60, 57, 54, 51,
                 48, 45, 42, 39, 37, 35, 33, 31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11]
    remaining += list(range(10, -1, -1))
    schedule = ablation.Schedule("exponential", ablate_every_vec_cutoff=10, exp_base=1.05)
    ablated = schedule.n_ablated(129)
    assert len(ablated) == 48
    assert [129 - v for v in ablated] == sorted(remaining)


def test_linear_and_explicit_schedules_and_specific_points():
    assert ablation.linear_schedule(12, 3) == [12, 6, 0]
    schedule = ablation.Schedule("linear", n_points=3, specific_points=(5, 12, 40))
    # 5 and 12 remaining -> 7 and 0 ablated; 40 > n is ignored, as the reference does.
    assert schedule.n_ablated(12) == [12, 7, 6, 0]
    assert ablation.Schedule("explicit", specific_points=(5, 12, 40)).n_ablated(12) == [7, 0]


@pytest.mark.parametrize("schedule", [
    ablation.Schedule("exponential", ablate_every_vec_cutoff=-1),
    ablation.Schedule("exponential", ablate_every_vec_cutoff=3, exp_base=0.5),
    ablation.Schedule("linear"),
    ablation.Schedule("linear", n_points=1),
    ablation.Schedule("cosine"),
    ablation.Schedule("exponential", specific_points=(-2,)),
    ablation.Schedule("exponential", early_stopping_threshold=-0.1),
    ablation.Schedule("explicit"),
])
def test_bad_schedules_are_refused(schedule):
    with pytest.raises(ConfigError):
        schedule.n_ablated(12)


def test_a_linear_schedule_wider_than_the_layer_takes_every_value():
    """The language models' 20 points on a layer of 12 directions: every value 12..0 once (the
    reference refuses more than n + 1 points)."""
    every = list(range(12, -1, -1))
    assert ablation.Schedule("linear", n_points=13).n_ablated(12) == every
    assert ablation.Schedule("linear", n_points=20).n_ablated(12) == every
    assert ablation.Schedule("linear", n_points=12).n_ablated(12) == [12, 10, 9, 8, 7, 6, 5, 4,
                                                                      3, 2, 1, 0]


# --- bisection ------------------------------------------------------------------------------------

def _bisect(n, threshold, cfg):
    """Bisect a monotone score that is good (1) up to ``threshold`` ablated, bad (0) beyond."""
    probes = []

    def evaluate(k):
        probes.append(k)
        return 1.0 if k <= threshold else 0.0
    lower, upper = ablation.bisect(evaluate, lambda s: s >= 0.5, n, cfg)
    return lower, upper, probes


@pytest.mark.parametrize("scaling", ["linear", "logarithmic"])
@pytest.mark.parametrize("threshold", [0, 1, 77, 16508, 16640])
def test_bisect_finds_the_boundary(scaling, threshold):
    lower, upper, probes = _bisect(16641, threshold, ablation.Bisect(0.001, scaling, 1))
    assert (lower, upper) == (threshold, threshold + 1)
    assert len(set(probes)) == len(probes)  # never probes the same count twice
    if scaling == "linear":
        assert probes[0] == 8320  # keeps 16641 - 8320 = 8321 edges first (docs/method.md 3.3)
        assert len(probes) <= math.ceil(math.log2(16641)) + 1


@pytest.mark.parametrize("tolerance", [1, 2, 10, 100])
def test_bisect_stops_within_tolerance(tolerance):
    exact, _, _ = _bisect(5000, 1234, ablation.Bisect(0.001, "linear", 1))
    lower, upper, probes = _bisect(5000, 1234, ablation.Bisect(0.001, "linear", tolerance))
    assert upper - lower <= tolerance
    assert lower <= exact < upper  # lower stays a count seen to be ablatable
    assert exact - lower < tolerance
    if tolerance > 1:
        assert len(probes) < len(_bisect(5000, 1234, ablation.Bisect(0.001, "linear", 1))[2])


@pytest.mark.parametrize("cfg", [ablation.Bisect(0.001, "cubic"),
                                 ablation.Bisect(0.001, tolerance=0), ablation.Bisect(-0.1)])
def test_bad_bisect_settings_are_refused(cfg):
    with pytest.raises(ConfigError):
        ablation.bisect(lambda k: 1.0, lambda s: True, 10, cfg)


def test_good_scores_follow_the_metric_direction():
    assert ablation.is_good("accuracy", 0.9, 0.01)(0.89)
    assert not ablation.is_good("accuracy", 0.9, 0.01)(0.88)
    assert ablation.is_good("ce_loss", 1.0, 0.1)(1.09)
    assert not ablation.is_good("ce_loss", 1.0, 0.1)(1.2)


# --- matrices -------------------------------------------------------------------------------------

def _truncated_basis(rng, orig=6, rib=4):
    c = rng.normal(size=(orig, rib))
    return c, np.linalg.pinv(c)


def test_rotation_matrix():
    c, c_pinv = _truncated_basis(np.random.default_rng(0))
    assert np.array_equal(ablation.rotation_matrix(c, c_pinv, 0), np.eye(6))  # I, not C C^+
    assert not np.allclose(c @ c_pinv, np.eye(6))
    assert np.array_equal(ablation.rotation_matrix(c, c_pinv, 4), np.zeros((6, 6)))
    rot = ablation.rotation_matrix(c, c_pinv, 1)
    x = np.random.default_rng(1).normal(size=(5, 6))
    x_hat = (x @ rot) @ c  # coordinates after the ablation
    np.testing.assert_allclose(x_hat[:, :3], (x @ c)[:, :3], atol=1e-12)
    np.testing.assert_allclose(x_hat[:, 3], 0, atol=1e-12)
    with pytest.raises(ConfigError):
        ablation.rotation_matrix(c, c_pinv, 5)


def test_edge_mask_keep_all_and_keep_none():
    e = np.arange(12.0).reshape(3, 4)
    assert ablation.edge_mask(e, 10, free_const_column=True).all()  # 9 candidates < 10
    assert ablation.edge_mask(e, 9, free_const_column=True).all()
    none = ablation.edge_mask(e, 0, free_const_column=True)
    assert none[:, 0].all() and not none[:, 1:].any()  # the const column is free
    assert not ablation.edge_mask(e, 0, free_const_column=False).any()
    with pytest.raises(ConfigError):
        ablation.edge_mask(e, -1, True)


def test_edge_mask_keeps_the_strongest_and_not_the_const_column():
    e = np.array([[80.0, 0.1, 0.2, 0.3], [90.0, 0.4, 0.5, 0.6], [100.0, 0.7, 0.8, 0.9]])
    mask = ablation.edge_mask(e, 2, free_const_column=True)
    expected = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 1, 1]], bool)
    np.testing.assert_array_equal(mask, expected)
    # Without the free column the const edges are the strongest candidates.
    mask = ablation.edge_mask(e, 2, free_const_column=False)
    assert mask.sum() == 2 and mask[1:, 0].all()


def test_edge_mask_ties_keep_more():
    e = np.array([[0.0, 1.0, 2.0, 2.0], [0.0, 2.0, 1.0, 3.0]])
    mask = ablation.edge_mask(e, 2, free_const_column=True)
    assert mask[:, 1:].sum() == 4  # 3 and the three 2s tie for the second place


def test_group_rows():
    mask = np.array([[1, 0, 1], [1, 1, 1], [1, 0, 1], [0, 0, 1], [1, 0, 1]], bool)
    compute = np.array([True, False, True, True, False])
    patterns, inverse = ablation.group_rows(mask, compute)
    assert patterns.shape == (2, 3)
    assert inverse[1] == -1 and inverse[4] == -1
    assert inverse[0] == inverse[2] != inverse[3]
    for row in (0, 2, 3):
        np.testing.assert_array_equal(patterns[inverse[row]], mask[row])


# --- metrics --------------------------------------------------------------------------------------

def test_metric_sums_and_batch_convention():
    logits = jnp.asarray([[[0.0, 2.0, 1.0]], [[3.0, 0.0, 1.0]], [[0.0, 0.0, 5.0]]])  # (B, 1, V)
    labels = jnp.asarray([1, 2, 2])
    weights = jnp.asarray([1.0, 1.0, 0.0])  # the last sample is padding
    hits, count = metric_sums("accuracy", logits, labels, weights)
    assert (float(hits), float(count)) == (1.0, 2.0)
    total, count = metric_sums("ce_loss", logits, labels, weights)
    logp = jax.nn.log_softmax(logits[:, 0], axis=-1)
    assert float(total) == pytest.approx(-float(logp[0, 1] + logp[1, 2]))
    # Labels with a position axis count every token.
    hits, count = metric_sums("accuracy", logits, labels[:, None], weights)
    assert (float(hits), float(count)) == (1.0, 2.0)
    # Accuracy pools tokens; the loss is the mean of per-batch means (docs/method.md 3.4).
    assert ablation.combine("accuracy", [(1.0, 2.0), (3.0, 3.0)]) == pytest.approx(0.8)
    assert ablation.combine("ce_loss", [(1.0, 2.0), (3.0, 3.0)]) == pytest.approx(0.75)


# --- the model with interventions -----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    """A random tiny transformer, its LIB graph with the last direction of every layer dropped
    (so that ``C C^+ != I``), and labelled data."""
    model, tokens = tiny_transformer(LAYERS)
    g = pipeline.build(model, tokens, pipeline.BuildConfig(batch_size=64))
    bases = {k: dataclasses.replace(b, C=b.C[:, :-1], C_pinv=b.C_pinv[:-1], W=b.W[:, :-1],
                                    W_pinv=b.W_pinv[:-1], Lambda=b.Lambda[:-1])
             for k, b in g.bases.items()}
    edges = {(a, b): e[:bases[b].dim if b in bases else None, :bases[a].dim]
             for (a, b), e in g.edges.items()}
    g = dataclasses.replace(g, bases=bases, edges=edges)
    labels = np.random.default_rng(3).integers(0, 11, size=len(tokens)).astype(np.int32)
    return model, g, tokens, labels


def _ev(tiny, metric="ce_loss", batch_size=24):
    model, _, tokens, labels = tiny
    return ablation.Evaluator(model, tokens, labels, metric, batch_size, dtype=np.float64)


def _direct_edge_score(tiny, index, mask, metric="ce_loss"):
    """The edge-masked model computed row by row, as the reference's hook does (docs/method.md
    3.3)."""
    model, g, tokens, labels = tiny
    a, b = g.node_layers[index], g.node_layers[index + 1]
    p = model.params
    acts = jax.vmap(lambda x: model.run_to(p, x, index))(tokens)
    x_hat = acts @ g.bases[a].C
    out_basis = g.bases.get(b)
    c_out = np.eye(g.orig_dims[b]) if out_basis is None else out_basis.C
    section = jax.jit(jax.vmap(lambda x: model.sections[index].fn(p, x)))
    rows = [section((x_hat * mask[o]) @ g.bases[a].C_pinv) @ c_out[:, o]
            for o in range(mask.shape[0])]
    out = jnp.stack(rows, axis=-1)
    out = out if out_basis is None else out @ out_basis.C_pinv
    logits = jax.vmap(lambda z: model.run_from(p, z, index + 1))(out)
    return ablation.combine(metric, [metric_sums(metric, logits, labels,
                                                           jnp.ones(len(tokens)))])


def test_edge_forward_matches_the_row_by_row_definition(tiny):
    """Pattern grouping, the fori_loop and the row cache give the reference's numbers."""
    _, g, _, _ = tiny
    ev = _ev(tiny, batch_size=len(tiny[2]))  # one batch: the direct loss is one batch's mean
    rng = np.random.default_rng(0)
    for index, (a, b) in enumerate(g.edge_pairs):
        out = g.bases.get(b)
        out_basis = None if out is None else (out.C, out.C_pinv)
        fw = ablation.EdgeForward(ev, index, g.bases[a].C, g.bases[a].C_pinv, out_basis)
        uncached = ablation.EdgeForward(ev, index, g.bases[a].C, g.bases[a].C_pinv, out_basis,
                                        cache_bytes=0)
        # One row per chunk: the same jitted programs as above (they are shared per evaluator and
        # layer pair), so a chunk size must reach them through the arguments' shapes.
        one_row = ablation.EdgeForward(ev, index, g.bases[a].C, g.bases[a].C_pinv, out_basis,
                                       cache_bytes=0, row_bytes=1)
        shape = g.edges[(a, b)].shape
        first = rng.random(shape) < 0.5
        first[:2] = True  # rows keeping everything
        first[3] = first[2]  # two rows sharing a pattern
        second = first.copy()
        second[4] = ~second[4]  # one row changes; the others come from the cache
        for mask in (first, second, first):
            direct = _direct_edge_score(tiny, index, mask)
            assert fw.score(mask) == pytest.approx(direct, rel=1e-12)
            assert uncached.score(mask) == pytest.approx(direct, rel=1e-12)
            assert one_row.score(mask) == pytest.approx(direct, rel=1e-12)


def test_everything_kept_reproduces_the_unablated_model(tiny):
    model, g, _, _ = tiny
    ev = _ev(tiny)
    base = ev.base()
    for index, name in enumerate(g.bases):
        assert ev.node_score(index, np.eye(g.orig_dims[name])) == pytest.approx(base, rel=1e-14)
    # Node ablations that zero no kept direction reuse the unablated score.
    orig, rib = g.bases["ln2.0"].C.shape
    scores = ablation.node_ablation(ev, g, ["ln2.0"], ablation.Schedule("linear", n_points=2,
                                                                      specific_points=(rib,)))
    assert scores["ln2.0"][orig] == scores["ln2.0"][rib] == base
    assert list(scores["ln2.0"]) == sorted(scores["ln2.0"], reverse=True)
    # In a basis without truncation (neurons), the all-kept edge mask is the model itself.
    eye = np.eye(g.orig_dims["ln2.0"])
    fw = ablation.EdgeForward(ev, 1, eye, eye, (eye, eye))
    assert fw.score(np.ones((eye.shape[0], eye.shape[0]), bool)) == pytest.approx(base, rel=1e-12)


def test_edge_ablation_counts_against_the_original_dims(tiny):
    _, g, _, _ = tiny
    ev = _ev(tiny, metric="accuracy")
    results = ablation.edge_ablation(ev, g, g.edge_pairs, ablation.Bisect(0.0))
    for a, b in g.edge_pairs:
        r = results[a]
        n = g.orig_dims[a] * g.orig_dims[b]
        assert max(r.scores) <= n and 0 <= r.n_edges_required <= n
        assert list(r.scores) == sorted(r.scores, reverse=True)
        kept_mask = r.mask[:, 1:].sum()  # counted edges of the required mask (ties may add)
        assert kept_mask >= min(r.n_edges_required, r.mask[:, 1:].size)
        # Every probed count at or above the answer that kept all candidates scores the base.
        assert all(s == ev.base() for k, s in r.scores.items() if k > g.edges[(a, b)][:, 1:].size)


def test_early_stopping(tiny):
    _, g, _, _ = tiny
    ev = _ev(tiny)
    full = ablation.node_ablation(ev, g, ["ln1.0"], ablation.Schedule("exponential"))["ln1.0"]
    first = full[max(full)]
    stop = ablation.Schedule("exponential", early_stopping_threshold=1e-9)
    stopped = ablation.node_ablation(ev, g, ["ln1.0"], stop)["ln1.0"]
    moved = [k for k in sorted(full, reverse=True) if abs(full[k] - first) > 1e-9]
    assert min(stopped) == moved[0]  # the first point past the threshold ends the layer


def test_bad_requests_are_refused(tiny):
    model, g, tokens, labels = tiny
    ev = _ev(tiny)
    sched = ablation.Schedule("exponential")
    with pytest.raises(ConfigError, match="output"):
        ablation.node_ablation(ev, g, ["output"], sched)
    with pytest.raises(ConfigError, match="unknown node layer"):
        ablation.node_ablation(ev, g, ["ln3.0"], sched)
    with pytest.raises(ConfigError, match="basis"):
        ablation.node_ablation(ev, g, ["ln1.0"], sched, basis="svd")
    with pytest.raises(ConfigError, match="no edges"):
        ablation.edge_ablation(ev, g, [("ln1.0", "unembed")], ablation.Bisect())
    with pytest.raises(ConfigError, match="metric"):
        ablation.Evaluator(model, tokens, labels, "perplexity")
    with pytest.raises(DataError, match="labels"):
        ablation.Evaluator(model, tokens, None)
    other, _ = tiny_transformer(("ln1.0", "unembed", "output"))
    with pytest.raises(ConfigError, match="cut at"):
        ablation.node_ablation(ablation.Evaluator(other, tokens, labels), g, ["ln1.0"], sched)
