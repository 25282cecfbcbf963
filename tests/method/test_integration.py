"""Quadrature rules (docs/method.md 2.5): points, weights, exactness and convergence."""

import numpy as np
import pytest

from libjax.method import integration


def test_reference_points_and_weights():
    alphas, weights = integration.points("gauss-legendre", 1)
    np.testing.assert_allclose(alphas, [0.5 - 0.5 / np.sqrt(3), 0.5 + 0.5 / np.sqrt(3)], atol=1e-15)
    np.testing.assert_allclose(weights, [0.5, 0.5], atol=1e-15)
    alphas, weights = integration.points("gauss-legendre", 2)
    np.testing.assert_allclose(alphas, [0.5 - 0.5 * np.sqrt(0.6), 0.5, 0.5 + 0.5 * np.sqrt(0.6)],
                               atol=1e-15)
    np.testing.assert_allclose(weights, [5 / 18, 8 / 18, 5 / 18], atol=1e-15)
    assert integration.points("gradient", 0) == (np.ones(1), np.ones(1))
    np.testing.assert_array_equal(integration.points("trapezoidal", 0)[0], [0.5])
    alphas, weights = integration.points("trapezoidal", 4)
    eps = 1e-3 / 5
    np.testing.assert_allclose(alphas, np.linspace(eps, 1 - eps, 5), atol=1e-15)
    np.testing.assert_allclose(weights, [1 / 8, 1 / 4, 1 / 4, 1 / 4, 1 / 8], atol=1e-15)


@pytest.mark.parametrize("rule,n", [("gauss-legendre", 0), ("gauss-legendre", 3),
                                    ("gauss-legendre", 10), ("trapezoidal", 0),
                                    ("trapezoidal", 7), ("gradient", 0)])
def test_weights_sum_to_one(rule, n):
    assert np.sum(integration.points(rule, n)[1]) == pytest.approx(1.0, abs=1e-14)


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_gauss_legendre_exact_on_polynomials_of_its_degree(n):
    alphas, weights = integration.points("gauss-legendre", n)
    rng = np.random.default_rng(n)
    coeffs = rng.normal(size=2 * n + 2)  # degree 2(n+1) - 1
    exact = sum(c / (k + 1) for k, c in enumerate(coeffs))
    approx = weights @ np.polynomial.polynomial.polyval(alphas, coeffs)
    assert approx == pytest.approx(exact, rel=1e-13, abs=1e-13)
    if n > 0:  # and not beyond: x^(2n+2) is integrated with an error
        high = np.zeros(2 * n + 3)
        high[-1] = 1
        assert abs(weights @ np.polynomial.polynomial.polyval(alphas, high)
                   - 1 / (2 * n + 3)) > 1e-8


def test_trapezoid_exact_on_lines_up_to_endpoint_shift():
    alphas, weights = integration.points("trapezoidal", 9)
    assert weights @ (3 * alphas + 1) == pytest.approx(2.5, rel=1e-13)


def test_convergence_on_reference_integral():
    # docs/method.md 7: integral_0^1 (e^x + x^sin(x)) dx = 2.5096861280.
    f = lambda x: np.exp(x) + x ** np.sin(x)  # noqa: E731
    err = lambda rule, n: abs(np.dot(integration.points(rule, n)[1],  # noqa: E731
                                     f(integration.points(rule, n)[0])) - 2.5096861280)
    assert err("trapezoidal", 50) < 3e-4
    assert err("gauss-legendre", 5) < 2e-4
    assert err("gauss-legendre", 50) < 1e-7
    assert err("gauss-legendre", 20) < err("gauss-legendre", 5) < err("gauss-legendre", 1)


def test_invalid_rules_are_rejected():
    with pytest.raises(ValueError, match="takes no intervals"):
        integration.points("gradient", 3)
    with pytest.raises(ValueError, match="unknown integration rule"):
        integration.points("simpson", 2)
    with pytest.raises(ValueError, match=">= 0"):
        integration.points("trapezoidal", -1)


def test_per_layer_settings_prefer_exact_names_over_prefixes():
    spec = {"ln2": "trapezoidal", "ln2.3": "gauss-legendre", "mlp_in": "gradient"}
    assert integration.for_layer(spec, "ln2.3") == "gauss-legendre"
    assert integration.for_layer(spec, "ln2.0") == "trapezoidal"
    assert integration.for_layer("gradient", "anything") == "gradient"
    with pytest.raises(ValueError, match="ln1"):
        integration.for_layer(spec, "ln1.0")
