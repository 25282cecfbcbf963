"""The bases as linear algebra (docs/method.md 1.5-1.9) on random statistics."""

import numpy as np
import pytest

from libjax import basis
from libjax.errors import BasisError, NumericalError


def layer_stats(rng, n=400, d=9, rank=None, var_first=False):
    """Activations with a trailing constant 1 (and optionally a LayerNorm-variance-like first
    coordinate), their mean, centred Gram and uncentred second moment."""
    rank = rank or d - 1
    f = np.ones((n, d))
    f[:, :-1] = (rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d - 1)) * 2
                 + rng.normal(size=d - 1))
    if var_first:
        f[:, 0] = rng.gamma(2.0, size=n)
    mean = f.mean(0)
    g = f - np.append(mean[:-1], 0.0)
    return f, mean, g.T @ g / n, f.T @ f / n


def random_m_prime(rng, d, rank=None):
    a = rng.normal(size=(rank or d, d))
    return a.T @ a


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("var_first", [False, True])
def test_lib_basis_invariants(center, var_first):
    rng = np.random.default_rng(1)
    f, mean, gram, second = layer_stats(rng, var_first=var_first)
    if not center:
        gram = second
    m_prime = random_m_prime(rng, f.shape[1])
    b = basis.lib_basis(gram, mean, m_prime, center=center, isolate_var=var_first)
    np.testing.assert_allclose(b.C_pinv @ b.C, np.eye(b.dim), atol=1e-11)
    # LIB coordinates are uncorrelated with variances Lambda (exact without LN-variance masking).
    if not var_first:
        cov = b.C.T @ second @ b.C
        np.testing.assert_allclose(np.diag(cov), b.Lambda, rtol=1e-10)
        off = cov - np.diag(np.diag(cov))
        assert np.max(np.abs(off)) <= 1e-10 * np.max(b.Lambda)
    # Unit Jacobian norm per direction: C^+ M' C^+T = I on the kept directions.
    np.testing.assert_allclose(np.diag(b.C_pinv @ m_prime @ b.C_pinv.T), 1.0, rtol=1e-10)
    # Masked directions first, then Lambda descending.
    n_masked = int(center) + int(var_first)
    assert np.all(np.diff(b.Lambda[n_masked:]) <= 0)


def test_constant_direction_with_centring():
    rng = np.random.default_rng(2)
    f, mean, gram, _ = layer_stats(rng)
    b = basis.lib_basis(gram, mean, random_m_prime(rng, f.shape[1]), center=True)
    f_hat = f @ b.C
    sign = np.sign(b.C_pinv[0, -1])
    np.testing.assert_allclose(b.C_pinv[0], sign * mean / np.sqrt(b.Lambda[0]), rtol=1e-12)
    np.testing.assert_allclose(f_hat[:, 0], sign * np.sqrt(b.Lambda[0]), rtol=1e-12)
    np.testing.assert_allclose(b.C_pinv[1:, -1], 0.0, atol=1e-14)
    np.testing.assert_allclose(f_hat[:, 1:].mean(0), 0.0, atol=1e-10 * np.abs(f_hat).max())


def test_ln_variance_is_its_own_direction():
    rng = np.random.default_rng(3)
    f, mean, gram, _ = layer_stats(rng, var_first=True)
    b = basis.lib_basis(gram, mean, random_m_prime(rng, f.shape[1]), center=True, isolate_var=True)
    var_row = b.C_pinv[1] / np.linalg.norm(b.C_pinv[1])
    np.testing.assert_allclose(np.abs(var_row), np.eye(f.shape[1])[0], atol=1e-14)
    np.testing.assert_allclose(b.C_pinv[2:, 0], 0.0, atol=1e-14)  # nobody else reads the variance


def test_pca_basis_is_the_centred_gram_eigenbasis():
    rng = np.random.default_rng(4)
    f, mean, gram, second = layer_stats(rng, rank=5)
    b = basis.pca_basis(gram, mean, center=True, threshold=1e-10)
    assert b.Lambda is None and np.array_equal(b.C, b.W)
    assert b.dim == 6  # const + rank 5; the rest has round-off variance (~1e-14), truncated
    np.testing.assert_allclose(b.C.T @ second @ b.C, np.diag(b.gram_eigenvalues), atol=1e-10)
    np.testing.assert_allclose(b.gram_eigenvalues[0], 1.0)
    np.testing.assert_allclose(np.sort(b.gram_eigenvalues),
                               np.sort(np.linalg.eigvalsh(gram))[-6:], rtol=1e-10)


def test_rank_deficient_m_prime_truncates_directions():
    rng = np.random.default_rng(5)
    f, mean, gram, _ = layer_stats(rng)
    b = basis.lib_basis(gram, mean, random_m_prime(rng, f.shape[1], rank=3), center=True,
                        threshold=1e-10)
    assert b.dim <= 4  # rank 3 plus the constant direction; round-off Lambdas are truncated
    np.testing.assert_allclose(b.C_pinv @ b.C, np.eye(b.dim), atol=1e-11)


def test_gram_eigenbasis_inserts_the_constant_direction_exactly():
    rng = np.random.default_rng(6)
    _, _, gram, _ = layer_stats(rng)
    u, d = basis.gram_eigenbasis(gram, center=True, isolate_var=False)
    np.testing.assert_array_equal(u[:, 0], np.eye(len(d))[-1])
    np.testing.assert_allclose(np.sort(d), np.linalg.eigvalsh(gram), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(u.T @ u, np.eye(len(d)), atol=1e-13)


def test_neuron_basis_is_the_identity():
    b = basis.neuron_basis(5)
    assert b.kind == "neuron" and b.Lambda is None
    np.testing.assert_array_equal(b.C, np.eye(5))


def test_failures_are_reported():
    rng = np.random.default_rng(7)
    f, mean, gram, _ = layer_stats(rng)
    with pytest.raises(BasisError, match="below the truncation threshold"):
        basis.lib_basis(gram, mean, np.zeros_like(gram), center=False)
    with pytest.raises(BasisError, match="truncation threshold"):
        basis.pca_basis(np.zeros_like(gram), mean, center=False)
    bad = gram.copy()
    bad[0, 0] = np.nan
    with pytest.raises(NumericalError, match="NaN"):
        basis.pca_basis(bad, mean)
    with pytest.raises(NumericalError, match="M'"):
        basis.lib_basis(gram, mean, np.full_like(gram, np.inf))
