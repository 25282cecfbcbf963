"""The image MLP (models/mlp.py): Flax model, bias folding (docs/method.md 1.2), sections and node
layers
(docs/method.md 4.1), checkpoints, and the ``--model=mlp`` family."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from libjax import pipeline
from libjax.errors import CheckpointError, ConfigError, NodeLayerError
from libjax.pipeline.run import compute_stats
from models import registry
from models.common import checkpoints
from models.family import Options
from models.mlp import model as mlp


def random_weights(cfg: mlp.MLPConfig, seed: int = 0, scale: float = 1.0) -> dict:
    """float64 weights with sizeable biases, so folding is really exercised."""
    rng = np.random.default_rng(seed)
    return {k: scale * rng.normal(size=s) / np.sqrt(s[0] if len(s) == 2 else 1)
            for k, s in mlp.expected_shapes(cfg).items()}


def unfolded(cfg, weights, x):
    return jax.jit(mlp.MLP(cfg).apply)({"params": weights}, x)


def folded_forward(model, x):
    run = jax.jit(jax.vmap(model.forward, in_axes=(None, 0)))
    return run(model.params, x)[:, 0]


# --- the Flax model -------------------------------------------------------------------------------

def test_flax_model_names_shapes_and_init():
    cfg = mlp.MLPConfig((12, 7, 5, 3))
    params = jax.jit(mlp.MLP(cfg).init)(jax.random.key(0), jnp.zeros((1, 3, 4)))["params"]
    assert {k: v.shape for k, v in params.items()} == mlp.expected_shapes(cfg) == {
        "layers.0.W": (12, 7), "layers.0.b": (7,), "layers.1.W": (7, 5), "layers.1.b": (5,),
        "layers.2.W": (5, 3), "layers.2.b": (3,)}
    for k, v in params.items():  # PyTorch's U(-1/sqrt(in), 1/sqrt(in))
        fan_in = cfg.widths[int(k.split(".")[1])]
        assert v.dtype == jnp.float32 and np.abs(v).max() <= 1 / np.sqrt(fan_in)
    x = np.random.default_rng(0).random((4, 3, 4))
    apply = jax.jit(mlp.MLP(cfg).apply)
    np.testing.assert_allclose(apply({"params": params}, x),
                               apply({"params": params}, x.reshape(4, 12)))


@pytest.mark.parametrize("act", ["tanh", "sigmoid"])
def test_unfoldable_activations_are_rejected(act):
    with pytest.raises(ConfigError, match=f"{act}' never reaches 1, so its biases cannot be"):
        mlp.MLPConfig((4, 3, 2), act)
    with pytest.raises(ConfigError, match="'swish' is unknown; use one of relu, identity"):
        mlp.MLPConfig((4, 3, 2), "swish")


# --- folding and sections -------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["relu", "identity", "gelu_new", "gelu"])
def test_folding_preserves_outputs_activations_and_gradients(act):
    cfg = mlp.MLPConfig((10, 8, 6, 4), act)
    weights = random_weights(cfg, scale=2.0)
    model = mlp.sectioned_model(weights, cfg)
    x = np.random.default_rng(1).normal(size=(16, 10))
    # relu/identity fold exactly; gelus carry act(root_one) = 1 +- 1e-11 (bisection tolerance)
    atol = 1e-12 if act in ("relu", "identity") else 1e-9
    np.testing.assert_allclose(folded_forward(model, x), unfolded(cfg, weights, x),
                               rtol=0, atol=atol)
    # every node layer ends in the constant 1 (act(root_one) = 1 to bisection accuracy)
    acts = jax.jit(jax.vmap(model.all_acts, in_axes=(None, 0)))(model.params, x)
    for a in acts[:-1]:
        np.testing.assert_allclose(a[:, 0, -1], 1.0, rtol=0, atol=1e-10)
    v = np.random.default_rng(2).normal(size=4)
    grad_folded = jax.jit(jax.grad(lambda s: model.forward(model.params, s)[0] @ v))(x[0])
    grad_unfolded = jax.jit(jax.grad(lambda s: unfolded(cfg, weights, s[None])[0] @ v))(x[0])
    np.testing.assert_allclose(grad_folded, grad_unfolded, rtol=0, atol=atol)


def test_fold_layout():
    cfg = mlp.MLPConfig((3, 2, 2), "gelu_new")
    w = random_weights(cfg)
    f = mlp.fold_biases(cfg, w)
    assert f["layers.0.W"].shape == (4, 3) and f["layers.1.W"].shape == (3, 2)
    np.testing.assert_array_equal(f["layers.0.W"][:3, :2], w["layers.0.W"])
    np.testing.assert_array_equal(f["layers.0.W"][3, :2], w["layers.0.b"])
    np.testing.assert_array_equal(f["layers.0.W"][:3, 2], 0)
    assert f["layers.0.W"][3, 2] == pytest.approx(1.1446303090306174, abs=1e-10)
    np.testing.assert_array_equal(f["layers.1.W"][2], w["layers.1.b"])


def test_node_layers_dims_and_validation():
    cfg = mlp.MLPConfig((12, 7, 5, 3))
    model = mlp.sectioned_model(random_weights(cfg), cfg)
    assert model.node_layers == ("layers.0", "layers.1", "layers.2", "output")
    assert [(layer.width, layer.positions) for layer in model.layers] == \
        [(13, 1), (8, 1), (6, 1), (3, 1)]
    assert not model.positional
    assert [layer.constant is not None for layer in model.layers] == [True, True, True, False]
    sub = mlp.sectioned_model(random_weights(cfg), cfg, ("layers.1", "layers.2"))
    assert tuple(layer.width for layer in sub.layers) == (8, 6)
    valid = "alid node layers in order: layers.0, layers.1, layers.2, output"
    with pytest.raises(NodeLayerError, match=f"must be consecutive.*list layers.0, layers.1, "
                                             f"layers.2. V{valid}"):
        mlp.sectioned_model(random_weights(cfg), cfg, ("layers.0", "layers.2"))
    with pytest.raises(NodeLayerError, match=f"must be consecutive.*V{valid}"):
        mlp.sectioned_model(random_weights(cfg), cfg, ("layers.1", "output"))
    with pytest.raises(NodeLayerError, match=f"unknown node layer 'layers.3'; v{valid}"):
        mlp.sectioned_model(random_weights(cfg), cfg, ("layers.2", "layers.3"))
    with pytest.raises(NodeLayerError, match="out of order"):
        mlp.sectioned_model(random_weights(cfg), cfg, ("layers.1", "layers.0"))


def test_means_on_zero_data_are_relu_of_biases():
    """docs/method.md 7 (test_data_accumulator): zero images give ``layers.1`` mean ``[relu(b_0),
    1]``."""
    cfg = mlp.MLPConfig((6, 5, 4, 3))
    weights = random_weights(cfg)
    model = mlp.sectioned_model(weights, cfg)
    means, grams = compute_stats(model, np.zeros((7, 6)), pipeline.BuildConfig(), [0, 1])
    np.testing.assert_array_equal(means[0], np.r_[np.zeros(6), 1])
    np.testing.assert_allclose(means[1], np.r_[np.maximum(weights["layers.0.b"], 0), 1], atol=1e-15)
    assert grams[1].shape == (6, 6)


# --- checkpoints ----------------------------------------------------------------------------------

def test_checkpoint_round_trip(tmp_path):
    cfg = mlp.MLPConfig((9, 4, 2), "gelu")
    weights = {k: v.astype(np.float32) for k, v in random_weights(cfg).items()}
    mlp.save(tmp_path / "m.npz", weights, cfg, dataset="digits", test_accuracy=0.5)
    cfg2, weights2, meta = mlp.load(tmp_path / "m.npz")
    assert cfg2 == cfg and meta["dataset"] == "digits" and meta["model"] == "mlp"
    for k in weights:
        np.testing.assert_array_equal(weights2[k], weights[k])


def _write(path, weights, **meta):
    checkpoints.save_npz(path, weights, **meta)
    return path


@pytest.mark.parametrize("edit, meta, message", [
    (lambda w: w.pop("layers.1.W"), {}, r"has layers \[0, 2\]: layers.1.W is missing"),
    (lambda w: w.pop("layers.1.b"), {}, r"lacks weights \['layers.1.b'\]"),
    (lambda w: w.update({"layers.1.W": np.zeros((5, 4))}), {}, r"layers.2.W: \(5, 3\) "
     r"\(expected \(4, 3\)\)"),
    (lambda w: w.update({"extra": np.zeros(2)}), {}, r"does not use: \['extra'\]"),
    (lambda w: [w.pop(k) for k in list(w)] and w.update({"embed.W_E": np.zeros((3, 2))}), {},
     "no 'layers.i.W' weights"),
    (lambda w: None, {"model": "modadd"}, "checkpoint of model 'modadd', not of an MLP"),
    (lambda w: None, {"act_fn": "tanh"}, "never reaches 1"),
])
def test_bad_checkpoints(tmp_path, edit, meta, message):
    weights = random_weights(mlp.MLPConfig((6, 4, 5, 3)))
    edit(weights)
    with pytest.raises(CheckpointError, match=message):
        mlp.load(_write(tmp_path / "bad.npz", weights, **meta))


# --- the command-line family ----------------------------------------------------------------------

def test_family_defaults_and_errors(tmp_path):
    fam = registry.get("mlp")
    opts = Options()
    assert fam.node_layers(opts) == ("layers.0", "layers.1", "layers.2", "output")
    assert fam.dataset(opts) == "digits" and fam.model_id(opts).endswith("mlp_digits_50_50.npz")
    assert fam.ablation_defaults(opts)["exp_base"] == 2.0  # docs/method.md 5, MNIST ablations
    with pytest.raises(ConfigError, match="--layer selects a transformer block"):
        fam.node_layers(Options(layer=1))
    with pytest.raises(NodeLayerError, match="consecutive"):
        fam.node_layers(Options(node_layers=("layers.0", "layers.2")))
    with pytest.raises(ConfigError, match="mnist images have 784 pixels but the checkpoint's MLP "
                                          "takes 64 inputs"):
        fam.dataset(Options(dataset="mnist"))
    # a checkpoint without metadata (like the authors') gets the dataset its input width fits
    cfg = mlp.MLPConfig((784, 5, 10))
    path = _write(tmp_path / "ref_like.npz", random_weights(cfg))
    assert fam.dataset(Options(checkpoint=str(path))) == "mnist"


def test_family_builds_the_shipped_digits_model():
    pytest.importorskip("sklearn")
    fam = registry.get("mlp")
    opts = Options(n_samples=120, n_gram_samples=200)
    data = fam.data(opts)
    assert data.inputs.shape == (120, 8, 8) and data.gram_inputs.shape == (200, 8, 8)
    model = fam.load(opts, fam.node_layers(opts))
    logits = folded_forward(model, data.inputs)
    assert np.mean(np.argmax(logits, -1) == data.labels) > 0.9
    g = pipeline.build(model, data.inputs, pipeline.BuildConfig(), gram_inputs=data.gram_inputs)
    assert set(g.bases) == {"layers.0", "layers.1", "layers.2"}
    assert g.edges[("layers.2", "output")].shape == (10, g.dim("layers.2"))
    assert all(np.all(e >= 0) for e in g.edges.values())
