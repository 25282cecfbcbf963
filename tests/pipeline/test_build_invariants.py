"""Invariants of built graphs (docs/method.md 1.9, 1.12, 7) on the shipped model and small random
models."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from libjax.pipeline import BuildConfig, build
from models.modadd import model as modadd
from tests.helpers.tiny import tiny_transformer


@functools.cache
def case(name):
    """``(model, inputs)`` of each test model."""
    if name == "modadd":
        cfg, weights = modadd.load()
        return modadd.sectioned_model(weights, cfg), modadd.split_data("train")[0][:128]
    if name == "tiny":
        return tiny_transformer(("ln1.0", "ln2.0", "unembed", "output"))
    if name == "tiny_positions":  # every position kept: sections with several output positions
        return tiny_transformer(("ln1.0", "mlp_in.0", "unembed", "output"), last_pos_only=False,
                                act_fn="gelu_new")
    raise KeyError(name)


@functools.cache
def graph(name, basis="lib"):
    model, inputs = case(name)
    return build(model, inputs, BuildConfig(basis=basis))


@functools.cache
def acts(name):
    model, inputs = case(name)
    return [np.asarray(a) for a in jax.vmap(lambda x: model.all_acts(model.params, x))(inputs)]


CASES = ["modadd", "tiny", "tiny_positions"]


def based_layers(name, basis="lib"):
    g = graph(name, basis)
    return [(i, n, g.bases[n]) for i, n in enumerate(g.node_layers) if n in g.bases]


@pytest.mark.parametrize("basis", ["lib", "pca"])
@pytest.mark.parametrize("name", CASES)
def test_pseudo_inverse(name, basis):
    """C^+ C = I on the directions well above round-off (Lambda or D > 1e-8 of the largest):
    directions at ~1e-15 amplify round-off by 1/sqrt(D) (BUILD_NOTES)."""
    for _, layer, b in based_layers(name, basis):
        weight = b.Lambda if b.Lambda is not None else b.gram_eigenvalues
        big = weight > 1e-8 * weight.max()
        np.testing.assert_allclose((b.C_pinv @ b.C)[np.ix_(big, big)], np.eye(big.sum()),
                                   atol=1e-10, err_msg=layer)


@pytest.mark.parametrize("name", CASES)
def test_lib_coordinates_are_uncorrelated_with_variance_lambda(name):
    for i, layer, b in based_layers(name):
        f = acts(name)[i].reshape(-1, b.orig_dim)
        cov = b.C.T @ (f.T @ f / len(f)) @ b.C
        big = b.Lambda > 1e-8 * b.Lambda.max()
        np.testing.assert_allclose(np.diag(cov)[big], b.Lambda[big], rtol=1e-7, err_msg=layer)
        off = np.abs(cov - np.diag(np.diag(cov)))[np.ix_(big, big)]
        assert off.max() <= 1e-7 * b.Lambda.max(), layer


@pytest.mark.parametrize("name", [n if n == "tiny" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in CASES])  # a jacrev of every section: slow
def test_unit_jacobian_norm_per_direction(name):
    """docs/method.md 1.12-1: (1/NP) sum (dF^/df^_k)^2 = 1, from a direct jax.jacrev of each
    section."""
    model, _ = case(name)
    g = graph(name)
    for i, layer, b in based_layers(name):
        if i == len(g.node_layers) - 1:
            continue
        nxt = g.bases.get(g.node_layers[i + 1])
        c_next = np.eye(model.layers[i + 1].width) if nxt is None else nxt.C
        section = lambda x: model.sections[i].fn(model.params, x) @ c_next  # noqa: E731
        jac = jax.vmap(jax.jacrev(section))(jnp.asarray(acts(name)[i]))  # (N, t, o, s, j)
        along = jnp.einsum("ntosj,kj->ntosk", jac, b.C_pinv)
        norms = np.asarray(jnp.sum(along ** 2, axis=(0, 1, 2, 3))) / (jac.shape[0] * jac.shape[3])
        big = b.Lambda > 1e-8 * b.Lambda.max()
        np.testing.assert_allclose(norms[big], 1.0, rtol=1e-7, err_msg=layer)


@pytest.mark.parametrize("basis", ["lib", "pca"])
@pytest.mark.parametrize("name", CASES)
def test_constant_direction(name, basis):
    for i, layer, b in based_layers(name, basis):
        mean = graph(name, basis).means[layer]
        f_hat = acts(name)[i].reshape(-1, b.orig_dim) @ b.C
        row0 = b.C_pinv[0] / np.linalg.norm(b.C_pinv[0])
        np.testing.assert_allclose(np.abs(row0), np.abs(mean) / np.linalg.norm(mean), atol=1e-12)
        np.testing.assert_allclose(f_hat[:, 0], f_hat[0, 0], rtol=1e-12)
        np.testing.assert_allclose(b.C_pinv[1:, -1], 0.0, atol=1e-12)
        # Centred coordinates have mean 0, up to round-off of the layer's scale.
        assert np.all(np.abs(f_hat[:, 1:].mean(0)) <= 1e-12 * np.abs(f_hat).max()), layer


@pytest.mark.parametrize("basis", ["lib", "pca"])
@pytest.mark.parametrize("name", CASES)
def test_edges_are_nonnegative_and_shaped(name, basis):
    g = graph(name, basis)
    for (a, b), e in g.edges.items():
        assert e.shape == (g.dim(b), g.dim(a))
        assert np.all(e >= 0) and e.sum() > 0


@pytest.mark.parametrize("name", CASES)
def test_output_sum_rule_is_the_same_for_lib_and_pca(name):
    """docs/method.md 1.12-3: a linear section into the unrotated output gives sum_j E_ij =
    E[F_i^2]."""
    logits = acts(name)[-1].reshape(-1, acts(name)[-1].shape[-1])
    expected = np.mean(logits ** 2, axis=0)
    for basis in ("lib", "pca"):
        g = graph(name, basis)
        e = g.edges[(g.node_layers[-2], "output")]
        np.testing.assert_allclose(e.sum(1), expected, rtol=1e-9, err_msg=basis)


@pytest.mark.parametrize("name", ["modadd", "tiny"])
def test_constant_column_carries_lambda_0_with_one_input_position(name):
    """docs/method.md 1.12-4: with one input position, sum_i E_{i,0} = Lambda_0."""
    model, _ = case(name)
    g = graph(name)
    checked = 0
    for i, (a, b) in enumerate(g.edge_pairs):
        if model.layers[i].positions == 1:
            np.testing.assert_allclose(g.edges[(a, b)][:, 0].sum(), g.bases[a].Lambda[0], rtol=1e-9)
            checked += 1
    assert checked > 0


def test_pca_basis_is_w_and_diagonalises_the_gram():
    for i, _layer, b in based_layers("modadd", "pca"):
        assert np.array_equal(b.C, b.W)
        f = acts("modadd")[i].reshape(-1, b.orig_dim)
        cov = b.C.T @ (f.T @ f / len(f)) @ b.C
        np.testing.assert_allclose(np.diag(cov), b.gram_eigenvalues, rtol=1e-7, atol=1e-12)


@pytest.mark.slow
def test_rotating_the_final_layer_leaves_earlier_bases_and_edges():
    """Only what reads the bias coordinate changes: the centring of the new final basis
    subtracts the mean through it, which rescales the constant directions (Lambda_0) and the
    constant input column of the edges. Every other direction and edge is unchanged."""
    layers = ("ln1.0", "ln2.0", "unembed")
    model, tokens = tiny_transformer(layers)
    plain = build(model, tokens, BuildConfig())
    rotated = build(model, tokens, BuildConfig(rotate_final_node_layer=True))
    assert "unembed" not in plain.bases and rotated.bases["unembed"].kind == "pca"
    for layer in layers[:-1]:
        a, b = plain.bases[layer], rotated.bases[layer]
        np.testing.assert_allclose(b.Lambda[1:], a.Lambda[1:], rtol=1e-8)
        np.testing.assert_allclose(np.abs(b.C_pinv[1:]), np.abs(a.C_pinv[1:]), rtol=1e-6, atol=1e-9)
    e_plain, e_rot = plain.edges[("ln1.0", "ln2.0")], rotated.edges[("ln1.0", "ln2.0")]
    np.testing.assert_allclose(e_rot[:, 1:], e_plain[:, 1:], rtol=1e-7, atol=1e-9 * e_plain.max())


def test_neuron_basis_on_a_linear_model_reads_each_neuron_once():
    """Identity activation, neuron basis: the MLP section unembed <- ln2.0 is affine, and the
    unembedding is a fixed matrix, so edges unembed->output equal E[(f_j W_U[j, i])^2]."""
    model, tokens = tiny_transformer(("ln2.0", "unembed", "output"), act_fn="identity")
    g = build(model, tokens, BuildConfig(basis="neuron", center=False))
    f = acts_of(model, tokens)[1].reshape(-1, model.layers[1].width)
    w_u = np.asarray(model.params["unembed.W_U"])
    expected = np.einsum("nj,ji->ij", f ** 2, w_u ** 2) / len(f)
    np.testing.assert_allclose(g.edges[("unembed", "output")], expected, rtol=1e-10)


def acts_of(model, inputs):
    return [np.asarray(a) for a in jax.vmap(lambda x: model.all_acts(model.params, x))(inputs)]
