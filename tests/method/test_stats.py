"""Streaming means and Gram matrices (docs/method.md 1.3, 1.4)."""

import jax.numpy as jnp
import numpy as np
import pytest

from libjax.method import stats


def _stream(acts, batch_size):
    """Moments of ``acts`` accumulated batch by batch, the last batch padded with garbage rows."""
    acc = stats.Moments.zeros(acts.shape[-1])
    for start in range(0, len(acts), batch_size):
        chunk = acts[start:start + batch_size]
        weights = np.ones(batch_size)
        if len(chunk) < batch_size:
            weights[len(chunk):] = 0
            chunk = np.concatenate([chunk,
                                    1e6 * np.ones((batch_size - len(chunk),) + chunk.shape[1:])])
        acc = stats.merge(acc, stats.batch_moments(jnp.asarray(chunk), jnp.asarray(weights)))
    return acc


@pytest.fixture
def acts():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(103, 4, 6)) * 3 + 50  # large mean: catches cancellation
    x[..., -1] = 1.0  # the folded-bias coordinate
    return x


@pytest.mark.parametrize("batch_size", [1, 7, 103, 500])
def test_streamed_moments_equal_two_pass_statistics(acts, batch_size):
    m = _stream(acts, batch_size)
    rows = acts.reshape(-1, acts.shape[-1])
    assert float(m.count) == len(rows)
    np.testing.assert_allclose(m.mean, rows.mean(0), rtol=1e-14)
    centred = rows - rows.mean(0)
    np.testing.assert_allclose(m.scatter, centred.T @ centred, rtol=1e-12, atol=1e-9)


def test_centred_gram_is_blockdiag_covariance_and_one(acts):
    mean, gram = stats.mean_and_gram(_stream(acts, 10), center=True, has_bias_coordinate=True)
    rows = acts.reshape(-1, acts.shape[-1])
    shifted = rows - np.append(rows.mean(0)[:-1], 0.0)  # docs/method.md 1.4: bias entry not shifted
    np.testing.assert_allclose(gram, shifted.T @ shifted / len(rows), rtol=1e-12, atol=1e-13)
    assert gram[-1, -1] == 1.0 and np.all(np.asarray(gram[-1, :-1]) == 0.0)
    assert mean[-1] == 1.0


def test_uncentred_gram_is_second_moment(acts):
    _, gram = stats.mean_and_gram(_stream(acts, 10), center=False, has_bias_coordinate=True)
    rows = acts.reshape(-1, acts.shape[-1])
    np.testing.assert_allclose(gram, rows.T @ rows / len(rows), rtol=1e-13)


def test_output_layer_is_centred_in_every_coordinate(acts):
    _, gram = stats.mean_and_gram(_stream(acts, 10), center=True, has_bias_coordinate=False)
    rows = acts.reshape(-1, acts.shape[-1])
    np.testing.assert_allclose(gram, np.cov(rows.T, bias=True), rtol=1e-11, atol=1e-13)
