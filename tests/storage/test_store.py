"""Staged builds: results on disk, resume, refusal of a different build, determinism."""

import shutil

import numpy as np
import pytest

from libjax.errors import StoreError
from libjax.pipeline import BuildConfig, build
from libjax.storage import graph, store
from tests.helpers.tiny import tiny_transformer

LAYERS = ("ln1.0", "ln2.0", "unembed", "output")


def assert_same_graph(a, b):
    assert a.node_layers == b.node_layers
    for name in a.bases:
        for field in ("C", "C_pinv", "W", "W_pinv", "Lambda"):
            x, y = getattr(a.bases[name], field), getattr(b.bases[name], field)
            assert (x is None and y is None) or np.array_equal(x, y), (name, field)
    assert a.edges.keys() == b.edges.keys()
    for pair in a.edges:
        assert np.array_equal(a.edges[pair], b.edges[pair]), pair


def test_saved_graph_loads_back(tmp_path):
    model, tokens = tiny_transformer(LAYERS)
    built = build(model, tokens, BuildConfig(n_stochastic_sources_edges=2), out_dir=tmp_path)
    loaded = graph.load(tmp_path)
    assert_same_graph(built, loaded)
    assert loaded.orig_dims == built.orig_dims and loaded.config == built.config
    for name in built.means:
        assert np.array_equal(loaded.grams[name], built.grams[name])


def test_interrupted_build_resumes_to_the_same_graph(tmp_path):
    # Every position kept, several batches: the stochastic sources really are random.
    model, tokens = tiny_transformer(LAYERS, last_pos_only=False)
    cfg = BuildConfig(n_stochastic_sources_basis_pos=2, n_stochastic_sources_edges=1,
                      batch_size=16)
    full = build(model, tokens, cfg, out_dir=tmp_path / "full")
    # Simulate a build killed after the bases and the first edge matrix.
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part)
    (part / store.SUMMARY_FILE).unlink()
    for stage in ("edges_ln2.0__unembed", "edges_unembed__output", "basis_ln1.0"):
        shutil.rmtree(part / "stages" / stage)
    with pytest.raises(StoreError, match="incomplete"):
        graph.load(part)
    assert_same_graph(build(model, tokens, cfg, out_dir=part), full)
    assert_same_graph(graph.load(part), full)


def test_a_different_build_is_refused_unless_overwritten(tmp_path):
    model, tokens = tiny_transformer(LAYERS)
    build(model, tokens, BuildConfig(), out_dir=tmp_path)
    before = (tmp_path / store.BUILD_FILE).read_text()
    with pytest.raises(StoreError, match="differs in: config"):
        build(model, tokens, BuildConfig(basis="pca"), out_dir=tmp_path)
    with pytest.raises(StoreError, match="differs in: data_sha256"):
        build(model, tokens[:-1], BuildConfig(), out_dir=tmp_path)
    assert (tmp_path / store.BUILD_FILE).read_text() == before
    assert graph.load(tmp_path).bases["ln1.0"].kind == "lib"
    build(model, tokens, BuildConfig(basis="pca"), out_dir=tmp_path, overwrite=True)
    assert graph.load(tmp_path).bases["ln1.0"].kind == "pca"


def test_builds_are_deterministic_and_seeded():
    model, tokens = tiny_transformer(LAYERS, last_pos_only=False)
    cfg = BuildConfig(n_stochastic_sources_basis_pos=1, n_stochastic_sources_edges=1, seed=3)
    first = build(model, tokens, cfg)
    assert_same_graph(first, build(model, tokens, cfg))
    other = build(model, tokens, BuildConfig(n_stochastic_sources_basis_pos=1,
                                             n_stochastic_sources_edges=1, seed=4))
    assert not np.array_equal(first.bases["ln1.0"].Lambda, other.bases["ln1.0"].Lambda)


def test_not_a_build_directory(tmp_path):
    with pytest.raises(StoreError, match="holds no libjax build"):
        graph.load(tmp_path)


def test_a_directory_with_other_files_is_left_alone(tmp_path):
    model, tokens = tiny_transformer(LAYERS)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty and holds no libjax build"):
        build(model, tokens, BuildConfig(), out_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
