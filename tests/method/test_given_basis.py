"""Basis kinds as objects, and the basis given by the user (docs/method.md 1.14): LIB and PCA
bases passed back as given bases reproduce their own graphs; an overcomplete given basis builds
and ablates with its reconstruction error as a node that is never ablated; bad bases are refused
with what to do. A tiny random transformer runs in the default suite, the shipped
modular-addition model (truncated LIB bases, 15 s a build) in the slow one."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from libjax import ablation, kinds
from libjax.basis import Basis, error_factors
from libjax.errors import ConfigError
from libjax.pipeline import BuildConfig, build
from libjax.storage import graph as graph_lib
from models.modadd import model as modadd
from tests.helpers.tiny import tiny_transformer

LAYERS = ("ln1.0", "ln2.0", "unembed", "output")
CASES = ["tiny", pytest.param("modadd", marks=pytest.mark.slow)]


@functools.cache
def case(name="modadd"):
    """``(model, inputs, labels)``: modular addition's train split (128 samples) or the tiny
    transformer's random tokens with random labels."""
    if name == "tiny":
        model, tokens = tiny_transformer(LAYERS)
        return model, tokens, np.random.default_rng(0).integers(0, 11, len(tokens))
    cfg, weights = modadd.load()
    tokens, labels = modadd.split_data("train")
    return modadd.sectioned_model(weights, cfg, LAYERS), tokens[:128], labels[:128]


@functools.cache
def built(name, basis, center=True):
    model, inputs, _ = case(name)
    return build(model, inputs, BuildConfig(basis=basis, center=center))


def assert_same_graph(given, own, rtol):
    assert given.edges.keys() == own.edges.keys() and given.bases.keys() == own.bases.keys()
    for name, b in own.bases.items():
        assert given.bases[name].kind == "given"
        assert np.array_equal(given.bases[name].C_pinv, b.C_pinv)
        np.testing.assert_allclose(given.bases[name].C, b.C, rtol=rtol,
                                   atol=rtol * np.abs(b.C).max(), err_msg=name)
    for pair, e in own.edges.items():
        np.testing.assert_allclose(given.edges[pair], e, rtol=rtol, atol=rtol * e.max(),
                                   err_msg=str(pair))


@pytest.mark.parametrize("basis", ["lib", "pca"])
@pytest.mark.parametrize("name", CASES)
def test_lib_and_pca_passed_back_as_given_bases_reproduce_their_graphs(name, basis, tmp_path):
    """Through a basis file (directions C^+ and readouts C) and as an instance: the same bases
    and, from the same machinery, the same edges to round-off."""
    own = built(name, basis)
    kinds.GivenBasis.from_bases(own.bases).save(tmp_path / "dirs.npz")
    model, inputs, _ = case(name)
    given = build(model, inputs, BuildConfig(basis=kinds.GivenBasis.load(tmp_path / "dirs.npz")))
    assert_same_graph(given, own, rtol=1e-12)
    assert given.config["basis"] == "given"
    assert set(given.config["given_basis"]["readouts"]) == set(own.bases)


@pytest.mark.parametrize("name", CASES)
def test_directions_alone_read_back_by_pinv(name):
    """Without readouts C = pinv(C^+): an uncentred PCA basis (orthonormal rows) comes back."""
    own = built(name, "pca", center=False)
    model, inputs, _ = case(name)
    gb = kinds.GivenBasis.from_bases(own.bases, readouts=False)
    given = build(model, inputs, BuildConfig(basis=gb, center=False))
    assert_same_graph(given, own, rtol=1e-10)


SHAPES = {"tiny": (4, 12), "modadd": (40, 160)}  # (rank, directions) of an overcomplete basis


def overcomplete(name, seed=0):
    """Per node layer, more random directions than the width inside the span of the first
    ``rank`` PCA directions: overcomplete, and C C^+ != I (the rest of the space is the
    error)."""
    rng = np.random.default_rng(seed)
    rank, n = SHAPES[name]
    pca = built(name, "pca")
    return kinds.GivenBasis({layer: rng.normal(size=(n, rank)) @ b.C_pinv[:rank]
                             for layer, b in pca.bases.items()})


@functools.cache
def overcomplete_graph(name):
    model, inputs, _ = case(name)
    return build(model, inputs, BuildConfig(basis=overcomplete(name)))


@pytest.mark.parametrize("name", CASES)
def test_overcomplete_basis_builds_with_the_same_machinery(name):
    g = overcomplete_graph(name)
    rank, n = SHAPES[name]
    for layer, b in g.bases.items():
        width = g.orig_dims[layer]
        assert b.C_pinv.shape == (n, width) and b.C.shape == (width, n)
        # C^+ C != I: a projector of the directions' rank
        assert np.linalg.matrix_rank(b.C_pinv @ b.C, tol=1e-8) == rank
        a, e = error_factors(b.C, b.C_pinv)
        assert a.shape[1] == width - rank
        np.testing.assert_allclose(a @ e, np.eye(width) - b.C @ b.C_pinv, atol=1e-12)
    for (a, b), e in g.edges.items():
        assert e.shape == (g.dim(b), g.dim(a)) and np.all(e >= 0) and e.sum() > 0


@pytest.mark.parametrize("name", CASES)
def test_overcomplete_edges_agree_with_the_general_path(name):
    """The closed forms and the general VJP path give the same edges on an overcomplete basis
    too."""
    model, inputs, _ = case(name)
    general = build(model, inputs, BuildConfig(basis=overcomplete(name), fast_paths=False))
    for pair, e in overcomplete_graph(name).edges.items():
        np.testing.assert_allclose(general.edges[pair], e, rtol=1e-10, atol=1e-10 * e.max())


def test_a_complete_basis_has_no_error():
    rng = np.random.default_rng(1)
    model, _, _ = case("tiny")
    gb = kinds.GivenBasis({n: rng.normal(size=(9, 9)) for n in LAYERS[:-1]})
    gb.check(BuildConfig(), model)
    b = gb.make(_stats("ln2.0", 9))
    np.testing.assert_allclose(b.C_pinv @ b.C, np.eye(9), atol=1e-10)
    assert error_factors(b.C, b.C_pinv)[0].shape[1] == 0


def _stats(name, width):
    return kinds.LayerStats(name=name, width=width, mean=None, gram=None, m_prime=None,
                            center=True, isolate_var=False, threshold=1e-15, relative=0.0,
                            given_relative=0.0)


@functools.cache
def evaluator(name):
    model, inputs, labels = case(name)
    return ablation.Evaluator(model, inputs, labels, "ce_loss", dtype=np.float64)


@pytest.mark.parametrize("name", CASES)
def test_node_ablation_keeps_the_error_node(name):
    """Ablating every direction leaves exactly the error term x - x C C^+; ablating none is the
    unablated model; a node ablation counts against max(width, directions)."""
    ev, g = evaluator(name), overcomplete_graph(name)
    n, width = SHAPES[name][1], g.orig_dims["ln2.0"]
    schedule = ablation.Schedule("explicit", specific_points=(n, n // 2, 0))
    results = ablation.node_ablation(ev, g, ["ln2.0"], schedule)["ln2.0"]
    assert list(results) == [n, n // 2, 0]
    b = g.bases["ln2.0"]
    error_only = np.eye(width) - b.C @ b.C_pinv
    assert results[n] == ev.base()
    assert results[0] == pytest.approx(ev.node_score(1, error_only), rel=1e-9)
    assert abs(results[0] - ev.node_score(1, np.zeros((width, width)))) > 1e-5


@pytest.mark.parametrize("name", CASES)
def test_edge_ablation_keeps_the_error_nodes(name):
    """With every basis edge ablated, the section sees only the input's error, and the output
    layer's error keeps its unablated value: checked against the model run by hand."""
    ev, g = evaluator(name), overcomplete_graph(name)
    model = ev.model
    i = 1  # ln2.0 -> unembed (the MLP)
    b_in, b_out = g.bases["ln2.0"], g.bases["unembed"]
    score = ablation.edge_scorer(ev, g, "ln2.0", "unembed")
    assert score(np.ones(g.edges[("ln2.0", "unembed")].shape, bool)) == \
        pytest.approx(ev.base(), rel=1e-12)

    def by_hand(params, x):
        f = model.run_to(params, x, i)
        err_in = f - f @ b_in.C @ b_in.C_pinv
        nxt = model.sections[i].fn(params, f)
        y = model.sections[i].fn(params, err_in)
        ablated = y @ b_out.C @ b_out.C_pinv + (nxt - nxt @ b_out.C @ b_out.C_pinv)
        return model.run_from(params, ablated, i + 1)

    logits = jax.vmap(lambda x: by_hand(ev.params, x))(ev.batches[0][0])
    y, w = ev.batches[0][1], ev.batches[0][2]
    expected = ev.combine([ev.sums(logits, None, y, w)])
    edges = g.edges[("ln2.0", "unembed")]
    nothing = np.zeros(edges.shape, bool)
    assert score(nothing) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("name", CASES)
def test_edge_ablation_of_an_overcomplete_basis_runs(name):
    ev, g = evaluator(name), overcomplete_graph(name)
    out = ablation.edge_ablation(ev, g, [("unembed", "output")], ablation.Bisect(0.05))
    n = g.edges[("unembed", "output")].size
    assert 0 < out["unembed"].n_edges_required <= n


def test_kinds_are_chosen_by_name_or_passed_as_objects():
    assert BuildConfig().kind is kinds.KINDS["lib"] and kinds.get("pca").name == "pca"
    assert kinds.get(kinds.Lib()).needs_m_prime and not kinds.get("pca").needs_m_prime
    with pytest.raises(ConfigError, match="basis_file"):
        kinds.get(BuildConfig(basis="given").basis)
    with pytest.raises(ConfigError, match="choose one of lib, pca, neuron, given"):
        kinds.get(BuildConfig(basis="svd").basis)


def test_old_stages_with_a_kind_index_still_load():
    """Stages written before kinds were stored by name held an index into (neuron, pca, lib)."""
    b = built("tiny", "lib").bases["ln1.0"]
    tree = graph_lib.basis_to_tree(b)
    assert bytes(tree["kind_name"]) == b"lib"
    del tree["kind_name"]
    tree["kind"] = np.asarray(2)
    old = graph_lib.basis_from_tree(tree)
    assert old.kind == "lib" and np.array_equal(old.C, b.C)
    given = Basis(C=b.C, C_pinv=b.C_pinv, kind="given")
    back = graph_lib.basis_from_tree(graph_lib.basis_to_tree(given))
    assert back.kind == "given" and back.W is None


BAD = {
    "unknown layer": ({"ln1.0": 1, "ln2.0": 1, "unembed": 1, "mlp": 1}, "not node layers"),
    "missing layer": ({"ln1.0": 1, "unembed": 1}, r"no directions for node layer\(s\) \['ln2.0'\]"),
    "wrong width": ({"ln1.0": 1, "ln2.0": np.ones((4, 7)), "unembed": 1}, "have width 7"),
    "NaN": ({"ln1.0": 1, "ln2.0": np.full((4, 9), np.nan), "unembed": 1}, "NaN or inf"),
    "zero direction": ({"ln1.0": 1, "ln2.0": np.zeros((4, 9)), "unembed": 1}, "zero rows"),
    "dependent": ({"ln1.0": 1, "ln2.0": np.ones((4, 9)), "unembed": 1}, "linearly dependent"),
    "not 2-d": ({"ln1.0": 1, "ln2.0": np.ones(9), "unembed": 1}, "2-d array"),
}


@pytest.mark.parametrize("what", list(BAD))
def test_bad_given_bases_are_refused_with_what_to_do(what, tmp_path):
    arrays, message = BAD[what]
    rng = np.random.default_rng(0)
    arrays = {k: rng.normal(size=(5, 9)) if isinstance(v, int) else v
              for k, v in arrays.items()}
    np.savez(tmp_path / "dirs.npz", **arrays)
    model, inputs, _ = case("tiny")
    with pytest.raises(ConfigError, match=message):
        build(model, inputs, BuildConfig(basis=kinds.GivenBasis.load(tmp_path / "dirs.npz")))


def test_bad_readouts_and_files_are_refused(tmp_path):
    model, inputs, _ = case("tiny")
    rng = np.random.default_rng(0)
    d = {k: rng.normal(size=(5, 9)) for k in LAYERS[:-1]}
    with pytest.raises(ConfigError, match="does not read its directions back"):
        kinds.GivenBasis(d, {"ln1.0": rng.normal(size=(9, 5))}).check(BuildConfig(), model)
    with pytest.raises(ConfigError, match=r"need \(9, 5\)"):
        kinds.GivenBasis(d, {"ln1.0": rng.normal(size=(5, 9))}).check(BuildConfig(), model)
    with pytest.raises(ConfigError, match="readouts for"):
        kinds.GivenBasis(d, {"output": rng.normal(size=(5, 9))})
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ConfigError, match="cannot read basis file"):
        kinds.GivenBasis.load(tmp_path / "junk.npz")
    with pytest.raises(ConfigError, match="rotate_final_node_layer"):
        kinds.GivenBasis(dict(d, output=rng.normal(size=(5, 11)))).check(
            BuildConfig(rotate_final_node_layer=True), model)
    with pytest.raises(ConfigError, match="stochastic basis sources"):
        BuildConfig(basis=kinds.GivenBasis(d), n_stochastic_sources_basis_hidden=2).validate(model)


def test_sae_widths_without_the_constant_get_a_zero_constant_coordinate():
    model, _, _ = case("tiny")
    rng = np.random.default_rng(0)
    gb = kinds.GivenBasis({k: rng.normal(size=(30, 8)) for k in LAYERS[:-1]})
    gb.check(BuildConfig(), model)
    b = gb.make(_stats("ln1.0", 9))
    assert b.C_pinv.shape == (30, 9) and np.all(b.C_pinv[:, -1] == 0)
    # the constant coordinate is outside the directions' span: it is (part of) the error
    a, e = error_factors(b.C, b.C_pinv)
    np.testing.assert_allclose(np.eye(9)[-1] @ a @ e, np.eye(9)[-1], atol=1e-12)
