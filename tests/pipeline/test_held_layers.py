"""The build's steps start at held node layers (:mod:`libjax.pipeline.held_layers`): the first
node layer and the attention's output; the activations held are the model's, and the graph is
the same as when every step runs from the inputs."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from libjax import pipeline
from libjax.pipeline import held_layers
from libjax.runtime import memory
from libjax.runtime.sharding import Placement
from models.lm import model as lm
from tests.helpers.tiny import tiny_ln_weights

LIB = pipeline.BuildConfig(batch_size=5, n_stochastic_sources_basis_pos=2,
                           n_stochastic_sources_edges=2, rotate_final_node_layer=True)


def block_1():
    """Block 1 of a 2-block LayerNorm transformer (block 0 runs before its first node layer)."""
    cfg, weights, rng = tiny_ln_weights(n_layers=2)
    model = lm.sectioned_model("tiny_ln", cfg, weights, lm.block_node_layers(1, 2), 5)
    return model, rng.integers(0, cfg.d_vocab, size=(12, cfg.n_ctx)).astype(np.int32)


def test_the_first_layer_and_the_attentions_output_are_held_with_the_models_activations():
    model, tokens = block_1()
    after_attention = model.node_layers.index("ln2.1")
    assert held_layers.hold_points(model) == [0, after_attention]
    held = held_layers.HeldLayers(model, tokens, 5, "float64", Placement())
    for i in range(len(model.sections)):
        started, acts, j = held.start(i)
        assert j == (0 if i < after_attention else after_attention)
        assert started.node_layers == model.node_layers[j:]
        expected = np.stack([np.asarray(model.run_to(model.params, t, j)) for t in tokens])
        assert acts.shape == (12, model.layers[j].positions, model.layers[j].width)
        np.testing.assert_allclose(acts, expected, rtol=0, atol=1e-13)


@pytest.mark.parametrize("share, message", [
    (0.0, "would not fit in memory: every step runs from the inputs"),
    ("first", "only the first node layer is held")])
def test_a_build_from_held_layers_equals_one_with_fewer(monkeypatch, caplog, share, message):
    """Stochastic sources, padded last batch: the graph does not depend on where steps start;
    where the activations would not fit the host, fewer layers are held (and the log says so)."""
    model, tokens = block_1()
    held = pipeline.build(model, tokens, LIB)
    if share == "first":  # room for the first layer's activations only
        layer = model.layers[0]
        share = 1.5 * 12 * layer.positions * layer.width * 8 / memory.host_memory_bytes()
    monkeypatch.setattr(held_layers, "HOST_SHARE", share)
    with caplog.at_level(logging.INFO, logger="libjax"):
        fewer = pipeline.build(model, tokens, LIB)
    assert message in caplog.text
    for name, b in fewer.bases.items():  # the final layer's PCA basis has no Lambda
        assert held.bases[name].dim == b.dim
        if b.Lambda is not None:
            np.testing.assert_allclose(held.bases[name].Lambda, b.Lambda, rtol=1e-10)
    for pair, e in fewer.edges.items():
        np.testing.assert_allclose(held.edges[pair], e, rtol=1e-9, atol=1e-12 * e.max())
