"""Several graphs of one model in one job (:func:`libjax.pipeline.build_many`): statistics from one
pass equal to each graph's own build, bit for bit, and jitted steps that a second build reuses
instead of retracing (:data:`libjax.pipeline.steps.TRACES`)."""

from __future__ import annotations

import numpy as np
import pytest

from libjax import pipeline
from libjax.errors import ConfigError
from libjax.pipeline import steps
from models.lm import model as lm
from tests.helpers.script_runs import assert_identical_graphs
from tests.helpers.tiny import tiny_ln_weights

N_LAYERS = 2


@pytest.fixture(scope="module")
def blocks():
    """A 2-block LayerNorm transformer: the cut at all blocks' node layers, each block's own cut
    (truncated as a build loads it) and tokens."""
    cfg, weights, rng = tiny_ln_weights(n_layers=N_LAYERS)
    tokens = rng.integers(0, cfg.d_vocab, size=(48, cfg.n_ctx)).astype(np.int32)
    cuts = [lm.block_node_layers(b, N_LAYERS) for b in range(N_LAYERS)]
    union = tuple(dict.fromkeys(n for cut in cuts for n in cut))
    singles = [lm.sectioned_model("tiny_ln", cfg, weights, cut, 5, truncate=True) for cut in cuts]
    n_blocks, unembed = lm.extent(cfg, union)
    params = lm.processed_weights(cfg, weights, n_blocks, unembed)
    stats_model = lm.truncated_model("tiny_ln", cfg, params, union, 5, n_blocks, unembed)
    shared = [lm.truncated_model("tiny_ln", cfg, params, cut, 5, *lm.extent(cfg, cut))
              for cut in cuts]
    return stats_model, shared, singles, tokens


PCA = pipeline.BuildConfig(basis="pca", compute_edges=False, rotate_final_node_layer=True,
                        batch_size=16)


def test_truncated_model_keeps_only_the_blocks_it_runs(blocks):
    _, shared, singles, _ = blocks
    for b, model in enumerate(singles):
        kept = {k.split(".")[1] for k in model.params if k.startswith("blocks.")}
        assert kept == {str(i) for i in range(b + 1)}
        assert "unembed.W_U" not in model.params
    for single, model in zip(singles, shared):
        assert single.params.keys() == model.params.keys()
        for k in single.params:
            assert np.array_equal(single.params[k], model.params[k]), k


def test_one_statistics_pass_gives_each_block_its_own_build(blocks, tmp_path):
    """Means and Grams of every block from one pass through the union cut, each graph (and its
    directory) as the block's build alone gives it."""
    stats_model, shared, singles, tokens = blocks
    dirs = [tmp_path / f"layer_{b}" for b in range(N_LAYERS)]
    before = steps.TRACES.copy()
    many = pipeline.build_many(shared, tokens, PCA, out_dirs=dirs, stats_model=stats_model)
    traced = steps.TRACES - before
    assert sum(traced.values()) == 1, traced  # one statistics step, traced once
    for single, g, directory in zip(singles, many, dirs):
        assert_identical_graphs(pipeline.build(single, tokens, PCA), g)
        assert (directory / "summary.json").exists()
    # a rerun resumes every graph from its stages: no pass over the data at all
    before = steps.TRACES.copy()
    again = pipeline.build_many(shared, tokens, PCA, out_dirs=dirs, stats_model=stats_model)
    assert steps.TRACES == before
    for g, h in zip(many, again):
        assert_identical_graphs(g, h)


def test_a_second_build_reuses_the_compiled_steps(blocks):
    """Steps are cached on what their programs depend on: building the same model again (other
    seed, same shapes) traces nothing."""
    _, _, _, tokens = blocks
    cfg, weights, _ = tiny_ln_weights(n_layers=N_LAYERS)
    model = lm.sectioned_model("tiny_ln", cfg, weights,
                               ("ln2.0", "ln2_out.0", "mlp_in.0", "ln1.1"), 5,
                         truncate=True)
    cfg = pipeline.BuildConfig(rotate_final_node_layer=True, compute_edges=False, batch_size=16)
    first = steps.TRACES.copy()
    pipeline.build(model, tokens[:16], cfg)
    traced = steps.TRACES - first
    assert traced and max(traced.values()) == 1, traced
    again = steps.TRACES.copy()
    pipeline.build(model, tokens[16:32], cfg)
    assert steps.TRACES == again


def test_statistics_model_must_hold_every_node_layer(blocks):
    stats_model, shared, _, tokens = blocks
    with pytest.raises(ConfigError, match="statistics model has no node layer 'ln1_out.1'"):
        pipeline.build_many(shared, tokens, PCA, stats_model=shared[0])
