"""Probe sets, M' and squared edges against direct Jacobians (docs/method.md 1.7, 2.2-2.3, 2.5)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from libjax.method import integration
from libjax.method.probes import ProbeSet
from libjax.method.vjp import m_prime_sum, squared_edges_sum

P_IN, D_IN, D_OUT = 4, 5, 3


@functools.cache
def make_section(p_out, seed=0, linear=False):
    """A small attention-like per-sample map ``(P_IN, D_IN) -> (p_out, D_OUT)`` mixing positions."""
    k = jax.random.split(jax.random.key(seed), 4)
    wq, wk, wv = (jax.random.normal(key, (D_IN, D_IN)) / 2 for key in k[:3])
    wo = jax.random.normal(k[3], (D_IN, D_OUT))

    def fn(x):
        if linear:
            return (jnp.cumsum(x, axis=0) @ wo)[-p_out:]
        scores = (x @ wq) @ (x @ wk).T
        return (jax.nn.softmax(scores, axis=-1) @ jnp.tanh(x @ wv) @ wo)[-p_out:]
    return fn


def data(n=6, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, P_IN, D_IN)))


def integrated_jacobian(fn, x, rule="gradient", n=0):
    alphas, weights = integration.points(rule, n)
    return sum(w * jax.jacrev(fn)(a * x) for a, w in zip(alphas, weights))  # (Po, Do, Pi, Di)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def direct_m_prime(fn, xs, rule="gradient", n=0):
    jac = jax.vmap(lambda x: integrated_jacobian(fn, x, rule, n))(xs)
    return jnp.einsum("btisj,btisk->jk", jac, jac)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def direct_edges(fn, xs, rule="gradient", n=0):
    jac = jax.vmap(lambda x: integrated_jacobian(fn, x, rule, n))(xs)
    return jnp.sum(jnp.einsum("btisj,bsj->btij", jac, xs) ** 2, axis=(0, 1))


_m_prime = jax.jit(m_prime_sum, static_argnums=(0, 3, 7))
_edges = jax.jit(squared_edges_sum, static_argnums=(0, 3, 7))


def run_m_prime(fn, xs, probes, rule="gradient", n=0, chunk=4, key=0, weights=None):
    alphas, ws = integration.points(rule, n)
    weights = jnp.ones(len(xs)) if weights is None else weights
    signs = probes.draw_signs(jax.random.key(key), len(xs))
    return _m_prime(fn, xs, weights, probes, signs, alphas, ws, chunk)


def run_edges(fn, xs, probes, rule="gradient", n=0, chunk=4, key=0):
    alphas, ws = integration.points(rule, n)
    signs = probes.draw_signs(jax.random.key(key), len(xs))
    return _edges(fn, xs, jnp.ones(len(xs)), probes, signs, alphas, ws, chunk)


@pytest.mark.parametrize("chunk", [1, 4, 100])
@pytest.mark.parametrize("rule,n", [("gradient", 0), ("gauss-legendre", 2), ("trapezoidal", 3)])
def test_exact_m_prime_equals_direct_jacobian(chunk, rule, n):
    fn, xs = make_section(p_out=2), data()
    probes = ProbeSet(2, D_OUT)
    np.testing.assert_allclose(run_m_prime(fn, xs, probes, rule, n, chunk),
                               direct_m_prime(fn, xs, rule, n), rtol=1e-12, atol=1e-13)


def test_padded_samples_do_not_count():
    fn, xs = make_section(p_out=2), data()
    padded = jnp.concatenate([xs, 100 * xs[:2]])
    weights = jnp.array([1.0] * len(xs) + [0.0, 0.0])
    np.testing.assert_allclose(run_m_prime(fn, padded, ProbeSet(2, D_OUT), weights=weights),
                               direct_m_prime(fn, xs), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("chunk", [1, 5])
def test_exact_edges_equal_direct_attributions(chunk):
    fn, xs = make_section(p_out=3), data()
    for rule, n in [("gradient", 0), ("gauss-legendre", 3)]:
        np.testing.assert_allclose(run_edges(fn, xs, ProbeSet(3, D_OUT), rule, n, chunk),
                                   direct_edges(fn, xs, rule, n), rtol=1e-12, atol=1e-13)


def test_integration_rule_is_irrelevant_for_linear_sections():
    fn, xs = make_section(p_out=2, linear=True), data()
    probes = ProbeSet(2, D_OUT)
    base_m, base_e = run_m_prime(fn, xs, probes), run_edges(fn, xs, probes)
    for rule, n in [("gauss-legendre", 4), ("trapezoidal", 5), ("trapezoidal", 0)]:
        np.testing.assert_allclose(run_m_prime(fn, xs, probes, rule, n), base_m, rtol=1e-12)
        np.testing.assert_allclose(run_edges(fn, xs, probes, rule, n), base_e, rtol=1e-12)


@pytest.mark.parametrize("sources", [(1, None), (3, None), (None, 2), (2, 2)])
def test_probe_counts_and_second_moments(sources):
    probes = ProbeSet(3, 4, *sources)
    exact_terms = 3 * 4
    signs = probes.draw_signs(jax.random.key(0), 4000)
    ids = jnp.arange(probes.n_probes + 2)  # two padding ids
    phis = jax.vmap(lambda s: probes.make(s, ids, jnp.float64))(signs)
    assert phis.shape == (4000, probes.n_probes + 2, 3, 4)
    assert np.all(np.asarray(phis[:, probes.n_probes:]) == 0)
    assert set(np.unique(np.asarray(phis))) <= {-1.0, 0.0, 1.0}
    flat = phis.reshape(4000, -1, exact_terms)
    # E[sum_phi phi phi^T] = S * I: every exact term counted S times, cross terms vanish.
    second = np.einsum("npi,npj->ij", flat, flat) / 4000
    np.testing.assert_allclose(second, probes.divisor * np.eye(exact_terms),
                               atol=0.1 * probes.divisor)


def test_stochastic_probes_are_exact_with_one_output_position():
    fn, xs = make_section(p_out=1), data()
    exact_m = run_m_prime(fn, xs, ProbeSet(1, D_OUT))
    exact_e = run_edges(fn, xs, ProbeSet(1, D_OUT))
    for r in (1, 3):
        probes = ProbeSet(1, D_OUT, pos_sources=r)
        np.testing.assert_allclose(run_m_prime(fn, xs, probes) / r, exact_m, rtol=1e-12)
        np.testing.assert_allclose(run_edges(fn, xs, probes) / r, exact_e, rtol=1e-12)


@pytest.mark.parametrize("sources", [(1, None), (None, 1), (1, 1)])
def test_stochastic_m_prime_is_unbiased_and_converges(sources):
    fn, xs = make_section(p_out=4), data()
    exact = np.asarray(run_m_prime(fn, xs, ProbeSet(4, D_OUT)))

    def rel_error(n_sources, n_keys):
        pos, hidden = (None if s is None else n_sources for s in sources)
        probes = ProbeSet(4, D_OUT, pos, hidden)
        est = np.mean([run_m_prime(fn, xs, probes, key=k) for k in range(n_keys)], 0)
        return np.linalg.norm(est / probes.divisor - exact) / np.linalg.norm(exact)

    few, many = rel_error(1, 4), rel_error(64, 4)
    assert many < few / 2.5  # error shrinks like 1/sqrt(sources): 8x fewer in expectation
    assert many < 0.15


def test_stochastic_edges_are_unbiased():
    fn, xs = make_section(p_out=4), data()
    exact = np.asarray(run_edges(fn, xs, ProbeSet(4, D_OUT)))
    probes = ProbeSet(4, D_OUT, pos_sources=256)
    est = np.asarray(run_edges(fn, xs, probes)) / 256
    assert np.linalg.norm(est - exact) / np.linalg.norm(exact) < 0.1
