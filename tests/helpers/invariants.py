"""Assertions of docs/method.md 1.9 on a built graph, shared by the language-model build tests."""

from __future__ import annotations

import numpy as np

from libjax.basis import centring_matrices


def assert_spec_1_9(graph, layers, ln_var) -> None:
    """``C^+ C = I``; the constant direction first (it reads ``(mu, 1)``, no other reads the 1);
    non-constant coordinates have mean zero; and, for LIB bases of layers not in ``ln_var``,
    ``C^T S C = diag(Lambda)``."""
    for name in layers:
        b, mean, gram = graph.bases[name], graph.means[name], graph.grams[name]
        np.testing.assert_allclose(b.C_pinv @ b.C, np.eye(b.dim), atol=1e-9)
        const = b.C_pinv[0]
        np.testing.assert_allclose(const[:-1] / const[-1], mean[:-1], atol=1e-9)
        np.testing.assert_allclose(b.C_pinv[1:, -1], 0, atol=1e-12)
        np.testing.assert_allclose(mean @ b.C[:, 1:], 0, atol=1e-8 * np.abs(mean @ b.C).max())
        if b.kind != "lib" or name in ln_var:
            continue
        _, y_inv = centring_matrices(mean, True)
        product = b.C.T @ (y_inv.T @ gram @ y_inv) @ b.C
        np.testing.assert_allclose(product, np.diag(b.Lambda), atol=1e-9 * b.Lambda.max())
