"""Property-based tests (hypothesis) of the statistics and the bases on random layers.

Layers are random activations ending in the folded-bias 1 (rank-deficient, columns spread over up
to 8 orders of magnitude, means up to 1e6 times the spread) and random MLP sections behind them
(``x -> act(x B) D + x R`` with badly scaled weights and dead units), so Gram matrices and ``M'``
are positive semi-definite, often singular and badly conditioned. Every build either satisfies
the docs/method.md 1.9 invariants or raises a :class:`~libjax.errors.LibjaxError`; a NaN, an inf or
a floating-point exception (division by zero, overflow, invalid value) is a failure.

Tolerances follow from the conditioning, not from the examples: eigenvectors are orthonormal to
``~d eps``, and whitening by ``D^-1/2`` amplifies that by ``sqrt(D_max / D_min)`` (``C^+ C``) or
``D_max / D_min`` (``C^T S C``); ``C^+ M' C^+T`` is exact up to ``eps Lambda_max / Lambda_k``. So
``C^+ C = I`` is checked on the directions with ``Lambda > 1e-8 Lambda_max`` to
``100 d eps sqrt(kappa)``, where ``kappa`` is the kept Gram eigenvalues' condition number, plus
the forward error of the product itself (``100 d eps |C^+| |C|``). The checks sum in
``np.longdouble`` so that their own round-off stays below those bounds (x86).

``LIBJAX_HYPOTHESIS_PROFILE=slow`` runs 1000 examples per property instead of 50.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from libjax import basis
from libjax.errors import BasisError, LibjaxError
from libjax.method import stats
from libjax.pipeline import BuildConfig, build
from tests.helpers.tiny import tiny_transformer

settings.register_profile("libjax-default", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("libjax-slow", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = settings.get_profile(f"libjax-{os.environ.get('LIBJAX_HYPOTHESIS_PROFILE', 'default')}")

EPS = np.finfo(np.float64).eps
EXACT = np.longdouble
THRESHOLDS = st.sampled_from([0.0, 1e-15, 1e-10, 1e-6])
RAISE_ON_FP_ERRORS = dict(divide="raise", over="raise", invalid="raise")


# --- random layers and sections -------------------------------------------------------------------

@st.composite
def activations(draw, var_first=False):
    """Activations ``(n, d)`` with a trailing 1 (and a positive first coordinate, like a
    LayerNorm variance, if ``var_first``)."""
    d = draw(st.integers(2, 10))
    n = draw(st.integers(1, 40))
    rank = draw(st.integers(0, d - 1))
    spread = draw(st.floats(0, 8))  # log10 range of the column scales
    offset = draw(st.floats(-3, 6))  # log10 of the mean's size relative to the spread
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scales = 10 ** rng.uniform(-spread / 2, spread / 2, d - 1)
    latent = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d - 1))
    f = np.ones((n, d))
    f[:, :-1] = (latent + 10**offset * rng.normal(size=d - 1)) * scales
    if var_first and d > 2:
        f[:, 0] = rng.gamma(2.0, size=n) * scales[0]
    return f


@st.composite
def mlp_sections(draw, d_in):
    """A section ``x -> act(x B) D + x R`` as its per-sample Jacobian function ``x -> (d_in,
    d_out)``; units of B may be dead (zero columns) and rows of B badly scaled."""
    m = draw(st.integers(1, 12))
    d_out = draw(st.integers(1, 8))
    act = draw(st.sampled_from(["relu", "gelu", "identity"]))
    spread = draw(st.floats(0, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    b = rng.normal(size=(d_in, m)) * 10 ** rng.uniform(-spread / 2, spread / 2, (d_in, 1))
    b[:, rng.random(m) < draw(st.floats(0, 0.5))] = 0.0
    d = rng.normal(size=(m, d_out))
    r = rng.normal(size=(d_in, d_out)) if draw(st.booleans()) else np.zeros((d_in, d_out))

    def slope(z):
        if act == "relu":
            return (z > 0).astype(float)
        if act == "gelu":  # d/dz z Phi(z)
            return 0.5 * (1 + np.vectorize(math.erf)(z / np.sqrt(2))) + \
                z * np.exp(-z**2 / 2) / np.sqrt(2 * np.pi)
        return np.ones_like(z)

    return lambda x: (b * slope(x @ b)) @ d + r


def m_prime(jacobian, f) -> np.ndarray:
    """``M' = (1/N) sum_b J_b J_b^T`` in the neuron basis of the next layer (docs/method.md 1.7, P =
    1)."""
    return sum(jacobian(x) @ jacobian(x).T for x in f) / len(f)


def gram_and_mean(f, center: bool, batch: int):
    """The pipeline's statistics: streamed :class:`stats.Moments` over batches of ``batch``."""
    acc = stats.Moments.zeros(f.shape[1])
    for start in range(0, len(f), batch):
        chunk = f[start:start + batch, None, :]
        acc = stats.merge(acc, stats.batch_moments(jnp.asarray(chunk), jnp.ones(len(chunk))))
    mean, gram = stats.mean_and_gram(acc, center, has_bias_coordinate=True)
    return np.asarray(gram), np.asarray(mean)


def coordinate_moments(c, gram, mean, center: bool) -> np.ndarray:
    """``E[f_hat^T f_hat] = C^T S C`` with ``S = Y^-T G Y^-1`` (docs/method.md 1.9), summed in
    longdouble
    as ``(Y^-1 C)^T G (Y^-1 C)``: forming ``S`` first would cancel terms of size ``mu^2``."""
    _, y_inv = basis.centring_matrices(mean, center)
    z = y_inv.astype(EXACT) @ c.astype(EXACT)
    return z.T @ gram.astype(EXACT) @ z


def _kappa(b) -> float:
    d = b.gram_eigenvalues
    return float(d.max() / d.min())


# --- properties -----------------------------------------------------------------------------------

@PROFILE
@given(data=st.data(), center=st.booleans(), isolate=st.booleans(), threshold=THRESHOLDS,
       batch=st.integers(1, 50))
def test_lib_basis_satisfies_spec_1_9_or_says_why(data, center, isolate, threshold, batch):
    f = data.draw(activations(var_first=isolate))
    isolate = isolate and f.shape[1] > 2
    jacobian = data.draw(mlp_sections(f.shape[1]))
    gram, mean = gram_and_mean(f, center, batch)
    mp = m_prime(jacobian, f)
    with np.errstate(**RAISE_ON_FP_ERRORS):
        try:
            b = basis.lib_basis(gram, mean, mp, center, isolate, threshold)
        except LibjaxError as err:
            event(f"{type(err).__name__}: {str(err).split(';')[0][:40]}")
            assert isinstance(err, BasisError), err  # statistics are finite: never numerical
            return
    d, k, rib = f.shape[1], len(b.gram_eigenvalues), b.dim
    note(f"d={d} k={k} rib={rib} kappa={_kappa(b):.3g} Lambda={b.Lambda}")
    event(f"kept {'all' if rib == d else 'some'} directions")
    for name in ("C", "C_pinv", "W", "W_pinv", "Lambda", "gram_eigenvalues", "V"):
        assert np.all(np.isfinite(getattr(b, name))), name
    assert b.C.shape == (d, rib) and b.C_pinv.shape == (rib, d) and b.V.shape == (k, k)
    n_masked = int(center) + int(isolate)
    assert np.all(b.Lambda >= threshold) and np.all(b.Lambda > 0)
    assert np.all(np.diff(b.Lambda[n_masked:]) <= 0)  # masked first, then descending

    big = b.Lambda > 1e-8 * b.Lambda.max()
    product = (b.C_pinv @ b.C)[np.ix_(big, big)]
    rounding = (np.abs(b.C_pinv) @ np.abs(b.C))[np.ix_(big, big)]  # of the product itself
    tol = 100 * d * EPS * (np.sqrt(_kappa(b)) + rounding)
    assert np.all(np.abs(product - np.eye(big.sum())) <= tol)
    # Unit Jacobian norm per direction (docs/method.md 1.12): C^+ M' C^+T = I, up to the round-off
    # of Lambda (eps Lambda_max / Lambda_k) and of C^+ (that of the quadratic form |C^+| |M'|
    # |C^+|).
    c_pinv = b.C_pinv.astype(EXACT)
    unit = np.diag(c_pinv @ mp.astype(EXACT) @ c_pinv.T)
    rounding = np.diag(np.abs(b.C_pinv) @ np.abs(mp) @ np.abs(b.C_pinv).T)
    tol = 100 * d * EPS * (b.Lambda.max() / b.Lambda + rounding)
    assert np.all((np.abs(unit - 1) <= tol)[big])
    if not isolate:  # LIB coordinates uncorrelated, with variances Lambda (docs/method.md 1.9)
        cov = coordinate_moments(b.C, gram, mean, center)
        tol = 100 * d * EPS * _kappa(b)
        event(f"C^T S C = Lambda checked to {'better' if tol < 1e-6 else 'worse'} than 1e-6")
        assert np.all(np.abs(np.diag(cov)[big] / b.Lambda[big] - 1) <= tol)
        off = np.abs(cov - np.diag(np.diag(cov)))[np.ix_(big, big)]
        assert np.all(off <= tol * b.Lambda.max())
    if center:  # the constant direction (docs/method.md 1.9): first, reads (mu, 1), nobody else
        # reads the 1
        sign = np.sign(b.C_pinv[0, -1])
        np.testing.assert_allclose(b.C_pinv[0], sign * mean / np.sqrt(b.Lambda[0]), rtol=1e-13)
        assert np.all(b.C_pinv[1:, -1] == 0) and np.all(b.C[:-1, 0] == 0)
        centred = np.abs(mean @ b.C[:, 1:])  # the other coordinates have mean 0
        assert np.all(centred <= 100 * d * EPS * np.abs(mean) @ np.abs(b.C[:, 1:]))
    if isolate:  # the LayerNorm variance is one direction of its own
        var = int(center)
        assert np.all(b.C_pinv[var + 1:, 0] == 0) and np.all(b.C_pinv[var, 1:] == 0)


@PROFILE
@given(f=activations(), center=st.booleans(), threshold=THRESHOLDS, batch=st.integers(1, 50))
def test_pca_basis_is_an_orthonormal_eigenbasis_or_says_why(f, center, threshold, batch):
    gram, mean = gram_and_mean(f, center, batch)
    with np.errstate(**RAISE_ON_FP_ERRORS):
        try:
            b = basis.pca_basis(gram, mean, center, False, threshold)
        except LibjaxError as err:
            event(f"{type(err).__name__}")
            assert isinstance(err, BasisError) and "truncation threshold" in str(err), err
            return
    d = f.shape[1]
    assert np.array_equal(b.C, b.W) and np.all(np.isfinite(b.C)) and np.all(np.isfinite(b.C_pinv))
    assert np.all(b.gram_eigenvalues > threshold)
    centring = 1 + np.abs(mean).max()  # Y and Y^-1 hold the mean: their products round off
    np.testing.assert_allclose(b.C_pinv @ b.C, np.eye(b.dim), atol=100 * d * EPS * centring)
    # PCA coordinates are uncorrelated with variances D (about the mean when centred).
    cov = coordinate_moments(b.C, gram, mean, center)
    np.testing.assert_allclose(np.asarray(cov, np.float64), np.diag(b.gram_eigenvalues),
                               atol=100 * d * EPS * (b.gram_eigenvalues.max() + centring))
    if center:
        assert b.C[-1, 0] == 1 and np.all(b.C[:-1, 0] == 0)  # f_hat_0 = 1 for every input


@PROFILE
@given(f=activations(), splits=st.lists(st.integers(1, 40), min_size=1, max_size=6),
       padding=st.integers(0, 5), junk=st.floats(-1e6, 1e6))
def test_streamed_moments_equal_the_two_pass_statistics(f, splits, padding, junk):
    """Any partition into batches, padded with weight-0 rows of junk, gives the count, mean and
    centred scatter of the whole set, to round-off relative to its spread."""
    acc, start, i = stats.Moments.zeros(f.shape[1]), 0, 0
    while start < len(f):
        chunk = f[start:start + splits[i % len(splits)]]
        rows = np.concatenate([chunk, np.full((padding, f.shape[1]), junk)])
        weights = np.concatenate([np.ones(len(chunk)), np.zeros(padding)])
        acc = stats.merge(acc, stats.batch_moments(jnp.asarray(rows[:, None]),
                                                   jnp.asarray(weights)))
        start, i = start + len(chunk), i + 1
    exact = f.astype(EXACT)
    mean = exact.mean(0)
    scatter = (exact - mean).T @ (exact - mean)
    assert float(acc.count) == len(f)
    # Round-off: summing n rows (relative n eps of the spread s) and centring on means that
    # are themselves rounded (eps |mu| per row, times the spread).
    n, s, mu = len(f), np.sqrt(np.diag(np.asarray(scatter, np.float64)) / len(f)), np.abs(f.mean(0))
    tol, e = 100 * n * EPS, s + EPS * mu  # e: the spread, or the mean's own round-off
    assert np.all(np.abs(np.asarray(acc.mean) - mean) <= tol * (mu + s))
    bound = tol * (n * np.outer(e, e) + np.outer(mu, e) + np.outer(e, mu))
    assert np.all(np.abs(np.asarray(acc.scatter) - scatter) <= bound)


@pytest.mark.parametrize("threshold", [0.0, 1e-15])
def test_a_next_layer_that_ignores_this_one_is_a_basis_error(threshold):
    """``M' = 0``: no direction matters downstream, and none can be scaled by 1/sqrt(Lambda)."""
    f = np.ones((20, 4))
    f[:, :3] = np.random.default_rng(0).normal(size=(20, 3))
    gram, mean = gram_and_mean(f, True, 20)
    with np.errstate(**RAISE_ON_FP_ERRORS), pytest.raises(BasisError, match="Lambda"):
        basis.lib_basis(gram, mean, np.zeros((4, 4)), True, False, threshold)


# --- whole builds of random small transformers ----------------------------------------------------

TINY_NODE_LAYERS = ("ln1.0", "attn_in.0", "ln2.0", "mlp_in.0", "mlp_act.0", "unembed", "output")


@pytest.mark.slow
@settings(PROFILE, max_examples=max(PROFILE.max_examples // 5, 10))
@given(layers=st.lists(st.sampled_from(TINY_NODE_LAYERS), min_size=2, max_size=4, unique=True),
       seed=st.integers(0, 2**16), act_fn=st.sampled_from(["relu", "gelu_new", "identity"]),
       last_pos_only=st.booleans(), kind=st.sampled_from(["lib", "pca"]))
def test_graphs_of_random_tiny_transformers_satisfy_spec_1_9_or_say_why(layers, seed, act_fn,
                                                                         last_pos_only, kind):
    layers = tuple(sorted(layers, key=TINY_NODE_LAYERS.index))
    model, tokens = tiny_transformer(layers, seed=seed, last_pos_only=last_pos_only,
                                     act_fn=act_fn)
    try:
        with np.errstate(**RAISE_ON_FP_ERRORS):
            g = build(model, tokens[:32], BuildConfig(basis=kind))
    except LibjaxError as err:
        event(f"{type(err).__name__}: {str(err)[:50]}")
        assert isinstance(err, BasisError), err
        return
    acts = jax.vmap(lambda x: model.all_acts(model.params, x))(tokens[:32])
    for i, name in enumerate(g.node_layers):
        b = g.bases.get(name)
        if b is None:
            continue
        d = b.orig_dim
        for field in ("C", "C_pinv", "W", "W_pinv"):
            assert np.all(np.isfinite(getattr(b, field))), (name, field)
        weight = b.Lambda if b.Lambda is not None else b.gram_eigenvalues
        big = weight > 1e-8 * weight.max()
        rounding = (np.abs(b.C_pinv) @ np.abs(b.C))[np.ix_(big, big)]
        tol = 100 * d * EPS * (np.sqrt(_kappa(b)) + rounding)
        assert np.all(np.abs((b.C_pinv @ b.C)[np.ix_(big, big)] - np.eye(big.sum())) <= tol), name
        if b.Lambda is not None:  # the activations' LIB coordinates have variances Lambda
            f = np.asarray(acts[i]).reshape(-1, d).astype(EXACT)
            var = np.diag(b.C.T.astype(EXACT) @ (f.T @ f / len(f)) @ b.C.astype(EXACT))
            assert np.all(np.abs(var[big] / b.Lambda[big] - 1) <= 100 * d * EPS * _kappa(b)), name
    for pair, e in g.edges.items():
        assert np.all(np.isfinite(e)) and np.all(e >= 0), pair
