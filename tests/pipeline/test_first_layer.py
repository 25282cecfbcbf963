"""The build's steps start at the first node layer (:mod:`libjax.pipeline.first_layer`): the same
graph as steps that run from the inputs, and the activations are the model's."""

from __future__ import annotations

import logging

import numpy as np

from libjax import pipeline
from libjax.pipeline import first_layer
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


def test_the_activations_are_the_models_at_its_first_node_layer():
    model, tokens = block_1()
    acts = first_layer.first_layer_acts(model, tokens, 5, "float64", Placement())
    expected = np.stack([np.asarray(model.run_to(model.params, t, 0)) for t in tokens])
    assert acts.shape == (12, model.layers[0].positions, model.layers[0].width)
    np.testing.assert_allclose(acts, expected, rtol=0, atol=1e-13)


def test_a_build_from_the_first_node_layer_equals_one_from_the_inputs(monkeypatch, caplog):
    """Stochastic sources, padded last batch: the graph does not depend on where steps start;
    where the activations would not fit the host, the steps run from the inputs (and say so)."""
    model, tokens = block_1()
    started = pipeline.build(model, tokens, LIB)
    monkeypatch.setattr(first_layer, "HOST_SHARE", 0.0)
    with caplog.at_level(logging.INFO, logger="libjax"):
        from_inputs = pipeline.build(model, tokens, LIB)
    assert "would not fit in memory: every step runs from the inputs" in caplog.text
    for name, b in from_inputs.bases.items():  # the final layer's PCA basis has no Lambda
        assert started.bases[name].dim == b.dim
        if b.Lambda is not None:
            np.testing.assert_allclose(started.bases[name].Lambda, b.Lambda, rtol=1e-10)
    for pair, e in from_inputs.edges.items():
        np.testing.assert_allclose(started.edges[pair], e, rtol=1e-9, atol=1e-12 * e.max())
