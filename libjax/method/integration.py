"""Quadrature rules for integrated gradients along ``alpha * f``, ``alpha`` in [0, 1]
(docs/method.md 2.5).

Every rule returns points ``alphas`` and weights summing to 1; a Jacobian integrated with a rule is
``sum_k w_k J(alpha_k f)``. ``gradient`` is the plain Jacobian at ``f`` (the paper's setting).
"""

from __future__ import annotations

import numpy as np

RULES = ("gradient", "gauss-legendre", "trapezoidal")


def points(rule: str, n_intervals: int) -> tuple[np.ndarray, np.ndarray]:
    """``(alphas, weights)`` in float64 for ``rule`` with ``n_intervals``."""
    if rule not in RULES:
        raise ValueError(f"unknown integration rule {rule!r}; choose one of {', '.join(RULES)}")
    if n_intervals < 0:
        raise ValueError(f"n_intervals must be >= 0, got {n_intervals}")
    if rule == "gradient":
        if n_intervals != 0:
            raise ValueError("the 'gradient' rule takes no intervals (n_intervals must be 0); use "
                             "'gauss-legendre' or 'trapezoidal' to integrate")
        return np.ones(1), np.ones(1)
    if rule == "gauss-legendre":
        nodes, weights = np.polynomial.legendre.leggauss(n_intervals + 1)
        return (nodes + 1) / 2, weights / 2
    if n_intervals == 0:  # trapezoidal with no intervals: the midpoint
        return np.array([0.5]), np.ones(1)
    eps = 1e-3 / (n_intervals + 1)
    alphas = np.linspace(eps, 1 - eps, n_intervals + 1)
    weights = np.full(n_intervals + 1, 1.0 / n_intervals)
    weights[[0, -1]] /= 2
    return alphas, weights


def for_layer(spec: str | dict, node_layer: str) -> str | int:
    """Resolve a per-node-layer setting: a plain value, or a dict keyed by node-layer name or by
    its module prefix (``"ln2"`` matches ``ln2.0``); exact names win over prefixes."""
    if not isinstance(spec, dict):
        return spec
    if node_layer in spec:
        return spec[node_layer]
    prefix = node_layer.split(".")[0]
    if prefix in spec:
        return spec[prefix]
    raise ValueError(f"no integration setting for node layer {node_layer!r} in {spec}; add the "
                     f"layer name or its prefix {prefix!r}")
