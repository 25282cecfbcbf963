"""Stochastic probes (docs/method.md 1.7, 2.3) on a small LayerNorm transformer: unbiased estimates
of the exact ``M'`` and edges, converging as sources grow, and exactly equal with one output
position.

The section is ``attn_in.0 -> ln2.0`` (attention and the residual add), so output positions mix
input positions.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from libjax.basis import neuron_basis
from libjax.method.probes import ProbeSet
from libjax.method.vjp import m_prime_sum, squared_edges_sum
from libjax.pipeline import BuildConfig
from libjax.pipeline.run import compute_edges, compute_m_prime
from models.common import transformer
from models.lm import model as lm

CFG = transformer.TransformerConfig(
    n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, d_vocab=16, n_ctx=6, act_fn="gelu_new",
    normalization="LN")
EXACT = BuildConfig(batch_size=4)


def model_and_tokens(n_pos: int):
    rng = np.random.default_rng(0)
    tl = {k: 0.5 * rng.standard_normal(s) for k, s in lm.expected_shapes(CFG).items()}
    for name in ("blocks.0.ln1.w", "blocks.0.ln2.w", "ln_final.w"):
        tl[name] += 1.0
    model = lm.sectioned_model("tiny", CFG, tl, ("attn_in.0", "ln2.0"), n_pos)
    return model, rng.integers(0, CFG.d_vocab, (8, n_pos)).astype(np.int32)


def rel_err(estimate, exact):
    return np.linalg.norm(estimate - exact) / np.linalg.norm(exact)


def test_stochastic_equals_exact_with_one_output_position():
    model, tokens = model_and_tokens(n_pos=1)
    stochastic = dataclasses.replace(EXACT, n_stochastic_sources_basis_pos=3,
                                     n_stochastic_sources_edges=3)
    exact_m = compute_m_prime(model, 0, tokens, EXACT, None)
    np.testing.assert_allclose(compute_m_prime(model, 0, tokens, stochastic, None), exact_m,
                               rtol=1e-12, atol=1e-12 * np.abs(exact_m).max())
    basis = neuron_basis(model.layers[0].width)
    exact_e = compute_edges(model, 0, tokens, EXACT, basis, None)
    np.testing.assert_allclose(compute_edges(model, 0, tokens, stochastic, basis, None), exact_e,
                               rtol=1e-12, atol=1e-12 * exact_e.max())


@pytest.mark.parametrize("what", ["m_prime", "edges"])
def test_stochastic_estimates_converge_to_exact(what):
    """Position-stochastic ``M'`` and edges are unbiased: the average over independent draws, and
    an estimate with 16x the sources, come much closer to the exact value than single draws
    (the error falls like ``1/sqrt(sources)``)."""
    model, tokens = model_and_tokens(n_pos=5)
    xs = jax.vmap(model.embed, (None, 0))(model.params, jnp.asarray(tokens))
    section = lambda x: model.sections[0].fn(model.params, x)  # noqa: E731
    accumulate = m_prime_sum if what == "m_prime" else squared_edges_sum
    ones, one = jnp.ones(len(tokens)), jnp.ones(1)

    def estimator(sources):
        probes = ProbeSet(model.layers[1].positions, model.layers[1].width, sources)
        run = jax.jit(lambda signs: accumulate(section, xs, ones, probes, signs, one, one, 64)
                      / probes.divisor)
        return lambda seed: np.asarray(run(probes.draw_signs(jax.random.key(seed), len(tokens))))

    exact = estimator(None)(0)
    draw = estimator(2)
    few = np.stack([draw(seed) for seed in range(16)])
    many = estimator(32)(0)
    err_few = np.mean([rel_err(f, exact) for f in few])
    assert rel_err(many, exact) < err_few / 2
    assert rel_err(few.mean(axis=0), exact) < err_few / 2


def test_the_log_calls_an_estimate_stochastic_even_with_one_source():
    """One source over several positions is an estimate (divisor 1 notwithstanding); over one
    position, or positionwise, it is the exact sum."""
    assert ProbeSet(n_pos=5, dim=3, pos_sources=1).stochastic
    assert ProbeSet(n_pos=5, dim=3, hidden_sources=1).stochastic
    assert not ProbeSet(n_pos=5, dim=3).stochastic
    assert not ProbeSet(n_pos=1, dim=3, pos_sources=1).stochastic
    assert not ProbeSet(n_pos=5, dim=3, pos_sources=2, positionwise=True).stochastic
