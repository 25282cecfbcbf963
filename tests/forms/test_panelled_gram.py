"""The MLP form's derivative Gram in column panels (upper block triangle, mirrored) is the whole
product to round-off, and the closed form built on it still agrees with the general VJP path."""

import collections

import jax.numpy as jnp
import numpy as np
import pytest

from libjax.forms import mlp
from libjax.pipeline import BuildConfig, steps
from libjax.pipeline.run import compute_m_prime
from tests.forms.test_fast_paths import case, graph, rel


@pytest.mark.parametrize("panel", [1, 3, 4, 10, 11])
def test_gram_in_panels_equals_the_whole_product(panel):
    rng = np.random.default_rng(0)
    w, a = jnp.asarray(rng.uniform(size=(2, 5))), jnp.asarray(rng.normal(size=(2, 5, 11)))
    whole = np.einsum("bp,bpm,bpn->mn", w, a, a)
    gram = np.asarray(mlp.weighted_gram(w, a, panel))
    assert np.max(np.abs(gram - whole)) <= 1e-14 * np.max(np.abs(whole))
    if panel < 11:  # the mirrored upper triangle (the whole product need not be bitwise so)
        assert np.array_equal(gram, gram.T)


@pytest.mark.parametrize("name", ["mlp_gelu", "tiny_ln"])
def test_m_prime_with_gram_panels_agrees_with_the_general_path(name, monkeypatch):
    """Panels of 4 columns (the last one ragged where the width is no multiple of 4), in steps
    made afresh (the step cache keys do not hold the panel width)."""
    monkeypatch.setattr(mlp, "GRAM_PANEL", 4)
    monkeypatch.setattr(steps, "_steps", collections.OrderedDict())
    model, inputs = case(name)
    g = graph(name)
    fast = BuildConfig(integration="gauss-legendre", n_intervals=3)
    general = BuildConfig(integration="gauss-legendre", n_intervals=3, fast_paths=False)
    sections = [i for i, s in enumerate(model.sections) if isinstance(s.form, mlp.MLPForm)
                and s.form.act is not None]
    assert sections
    for i in sections:
        assert model.sections[i].form.matrices(model.params)["B"].shape[1] > mlp.GRAM_PANEL
        nxt = g.bases.get(model.node_layers[i + 1])
        c_next = None if nxt is None else nxt.C
        assert rel(compute_m_prime(model, i, inputs, fast, c_next),
                   compute_m_prime(model, i, inputs, general, c_next)) < 1e-10
