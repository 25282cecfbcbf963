"""LIB on MLPs: the authors' MNIST and CIFAR-10 checkpoints fed from files in the real formats
(folded = unfolded, docs/method.md 1.9 invariants), and linear MLPs, whose edges have a known
structure."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from libjax import pipeline
from models.common import images
from models.mlp import model as mlp
from tests.helpers.image_files import random_mnist, write_cifar, write_mnist


def batched(fn, model, x):
    return np.asarray(jax.jit(jax.vmap(fn, in_axes=(None, 0)))(model.params, x))


def acts_at(model, x, index: int) -> np.ndarray:
    """``(N, d)`` activations of node layer ``index`` (the MLP's position axis is a singleton)."""
    return batched(lambda p, s: model.run_to(p, s, index), model, x)[:, 0]


def check_lib_invariants(model, graph, x):
    """docs/method.md 1.9 on every basis: ``C+ C = I``, ``C^T S C = diag(Lambda)`` with the
    uncentred second moment ``S = E[f^T f]``, and the centred constant direction first.

    Directions kept just above the truncation threshold (Lambda ~ 1e-15, round-off) have columns
    of ``C`` of size ``sqrt(Lambda)`` and rows of ``C+`` of size ``1/sqrt(Lambda)``, so their raw
    errors are ``eps * sqrt(Lambda_max / Lambda)``; the identities are checked on the
    scale-free ``sqrt(Lambda) C+`` and ``C / sqrt(Lambda)``, and raw on the well-measured rest.
    """
    for i, name in enumerate(model.node_layers[:-1]):
        b = graph.bases[name]
        lam, root = b.Lambda, np.sqrt(b.Lambda)
        err = b.C_pinv @ b.C - np.eye(b.dim)
        assert np.abs(root[:, None] * err / root[None, :]).max() <= 1e-12, name
        big = lam > 1e-6 * lam.max()
        assert np.abs(err[np.ix_(big, big)]).max() <= 1e-11, name
        f = acts_at(model, x, i)
        cs = b.C.T @ (f.T @ f / len(f)) @ b.C
        assert np.abs(cs - np.diag(lam)).max() <= 1e-12 * lam.max(), name
        # constant direction: C+[0] = +-mean / sqrt(Lambda_0), f_hat_0 = +-sqrt(Lambda_0) always
        scale = b.C_pinv[0, -1]
        np.testing.assert_allclose(b.C_pinv[0], graph.means[name] * scale, rtol=0,
                                   atol=1e-12 * np.abs(b.C_pinv[0]).max())
        f_hat = f @ b.C
        np.testing.assert_allclose(f_hat[:, 0], 1 / scale, rtol=1e-12)
        assert (1 / scale) ** 2 == pytest.approx(lam[0], rel=1e-10)
        # the other directions read no bias and are centred
        rows = root[:, None] * b.C_pinv
        assert np.abs(rows[1:, -1]).max() <= 1e-12 * np.abs(rows).max(), name
        assert np.abs(f_hat[:, 1:].mean(0)).max() <= 1e-12 * root.max(), name
    for pair, e in graph.edges.items():
        assert np.all(e >= 0) and np.any(e > 0), pair


def check_folded_equals_unfolded(cfg, weights, model, x):
    logits = batched(model.forward, model, x)[:, 0]
    params = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    reference = jax.jit(mlp.MLP(cfg).apply)({"params": params}, x.astype(np.float64))
    np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-12 * np.abs(reference).max())


@pytest.fixture(scope="module")
def mnist_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mnist")
    write_mnist(directory, "train", *random_mnist(600, np.random.default_rng(0)), gz=True)
    return directory


@pytest.fixture(scope="module")
def cifar_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cifar")
    write_cifar(directory, 60, np.random.default_rng(0))
    return directory


def test_mnist_reference_checkpoint(shared_data, mnist_files):
    cfg, weights, _ = mlp.load(shared_data / "weights_mnist_mlp_100_100.npz")
    assert cfg == mlp.MLPConfig((784, 100, 100, 10), "relu")
    model = mlp.sectioned_model(weights, cfg)
    assert tuple(layer.width for layer in model.layers) == (785, 101, 101, 10)  # docs/method.md 4.1
    x, _ = images.load("mnist", "train", mnist_files)
    check_folded_equals_unfolded(cfg, weights, model, x)
    graph = pipeline.build(model, x, pipeline.BuildConfig())
    check_lib_invariants(model, graph, x)
    # the always-blank border (docs/method.md 4.1 data: 28 x 28 with a 4-pixel margin here) is
    # truncated
    assert graph.dim("layers.0") <= 20 * 20 + 1


def test_cifar_reference_checkpoint(shared_data, cifar_files):
    cfg, weights, _ = mlp.load(shared_data / "weights_cifar_mlp_50_50.npz")
    assert cfg == mlp.MLPConfig((3072, 50, 50, 10), "relu")
    x, _ = images.load("cifar10", "train", cifar_files)
    model = mlp.sectioned_model(weights, cfg, ("layers.1", "layers.2", "output"))
    check_folded_equals_unfolded(cfg, weights, model, x)
    graph = pipeline.build(model, x, pipeline.BuildConfig())
    check_lib_invariants(model, graph, x)


@pytest.mark.slow
def test_cifar_reference_checkpoint_all_layers(shared_data, cifar_files):
    """Including the 3073-wide input layer (a 3073 x 3073 ``M'`` and eigendecomposition)."""
    cfg, weights, _ = mlp.load(shared_data / "weights_cifar_mlp_50_50.npz")
    x, _ = images.load("cifar10", "train", cifar_files)
    model = mlp.sectioned_model(weights, cfg)
    graph = pipeline.build(model, x, pipeline.BuildConfig())
    check_lib_invariants(model, graph, x)


# --- linear MLPs ----------------------------------------------------------------------------------

def linear_mlp(widths=(6, 5, 4, 3), n: int = 400):
    rng = np.random.default_rng(3)
    cfg = mlp.MLPConfig(widths, "identity")
    weights = {k: rng.normal(size=s) for k, s in mlp.expected_shapes(cfg).items()}
    x = rng.normal(size=(n, widths[0])) * rng.uniform(0.5, 2, widths[0]) + 0.7
    return cfg, weights, x


def test_linear_mlp_lib_edges_are_diagonal():
    """With identity activations each section is linear, and LIB pairs every direction with one
    direction of the next layer (docs/method.md 7): ``F^ = C+ W C'`` has orthonormal rows (``M`` is
    whitened and diagonalised) and maps uncorrelated coordinates to uncorrelated ones, so with
    distinct Lambdas it is diagonal; so are the edges ``E_ij = F^_ji^2 E[f^_j^2]``."""
    cfg, weights, x = linear_mlp()
    model = mlp.sectioned_model(weights, cfg, ("layers.0", "layers.1", "layers.2"))
    cfg = pipeline.BuildConfig(rotate_final_node_layer=True, center=True)
    graph = pipeline.build(model, x, cfg)
    check_lib_invariants(model, graph, x)
    for pair, e in graph.edges.items():
        off = e.copy()
        k = min(e.shape)
        off[np.arange(k), np.arange(k)] = 0
        assert e.shape[0] > 1 and np.abs(off).max() <= 1e-9 * e.max(), (pair, e)


def test_linear_mlp_neuron_edges_are_weights_squared():
    """Neuron basis, linear sections: ``E_ij = W_ji^2 E[f_j^2]`` exactly (diagonal when W is)."""
    cfg, weights, x = linear_mlp()
    model = mlp.sectioned_model(weights, cfg)
    graph = pipeline.build(model, x, pipeline.BuildConfig(basis="neuron", center=False))
    folded = mlp.fold_biases(cfg, weights)
    for i, (a, b) in enumerate(graph.edge_pairs):
        f = acts_at(model, x, i)
        expected = folded[f"layers.{i}.W"].T ** 2 * np.mean(f ** 2, axis=0)
        np.testing.assert_allclose(graph.edges[(a, b)], expected, rtol=1e-10, atol=0)
