"""The modular-addition model: data, split, checkpoints, folding and sectioning (docs/method.md 4.2,
1.2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from libjax.errors import CheckpointError, NodeLayerError
from models.common import checkpoints
from models.modadd import model as modadd


def test_dataset_and_split():
    tokens, labels = modadd.dataset()
    assert tokens.shape == (113 * 113, 3) and np.all(tokens[:, 2] == 113)
    np.testing.assert_array_equal(tokens[113 * 5 + 7], [5, 7, 113])
    assert labels[113 * 100 + 20] == 7
    train, test = modadd.split_indices("train"), modadd.split_indices("test")
    assert len(train) == 3830 and len(test) == 8939
    assert len(np.union1d(train, test)) == 113 * 113


def test_split_is_torch_randperm_with_seed_0():
    torch = pytest.importorskip("torch")
    perm = torch.randperm(113 * 113, generator=torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_array_equal(modadd.split_indices("train"), perm[:3830])
    np.testing.assert_array_equal(modadd.split_indices("test"), perm[3830:])


def test_shipped_checkpoint_generalises():
    cfg, weights = modadd.load()
    model = modadd.ModAddTransformer(cfg)
    tokens, labels = modadd.split_data("test")
    logits = model.apply(modadd.tl_to_flax(weights), jnp.asarray(tokens))
    assert modadd.accuracy(logits, labels) >= 0.99


@pytest.mark.parametrize("last_pos_only", [True, False])
def test_folded_sectioned_model_equals_the_flax_model(last_pos_only):
    cfg, weights = modadd.load()
    tokens = modadd.dataset()[0][::97]
    flax_logits = modadd.ModAddTransformer(cfg).apply(
        modadd.tl_to_flax({k: np.asarray(v, np.float64) for k, v in weights.items()}),
        jnp.asarray(tokens))
    model = modadd.sectioned_model(weights, cfg, last_pos_only=last_pos_only)
    ours = jax.vmap(lambda x: model.forward(model.params, x))(jnp.asarray(tokens))
    expected = flax_logits[:, -1:] if last_pos_only else flax_logits
    np.testing.assert_allclose(ours, expected, rtol=1e-11, atol=1e-11)
    # Last-position training shortcut computes the same numbers.
    short = modadd.ModAddTransformer(cfg).apply(modadd.tl_to_flax(weights), jnp.asarray(tokens),
                                                last_position_only=True)
    np.testing.assert_allclose(short[:, 0], flax_logits[:, -1], rtol=1e-5, atol=1e-5)


def test_every_node_layer_has_the_reference_width():
    cfg, weights = modadd.load()
    widths = {"ln1.0": 129, "ln1_out.0": 129, "attn_in.0": 258, "attn_out.0": 517,
              "add_resid1.0": 258, "ln2.0": 129, "ln2_out.0": 129, "mlp_in.0": 258,
              "mlp_act.0": 642, "mlp_out.0": 642, "add_resid2.0": 258, "ln_final": 129,
              "ln_final_out": 129, "unembed": 129, "output": 114}
    model = modadd.sectioned_model(weights, cfg, tuple(widths))
    assert dict(zip(model.node_layers, tuple(layer.width for layer in model.layers))) == widths
    positions = [layer.positions for layer in model.layers]
    assert positions[:5] == [3, 3, 3, 3, 3] and set(positions[5:]) == {1}
    # Any cut gives the same model output, and every residual-carrying layer ends in 1.
    tokens = jnp.asarray(modadd.dataset()[0][:50])
    acts = jax.vmap(lambda x: model.all_acts(model.params, x))(tokens)
    for name, a in zip(model.node_layers[:-1], acts[:-1]):
        np.testing.assert_array_equal(a[..., -1], 1.0, err_msg=name)
    short = modadd.sectioned_model(weights, cfg, ("mlp_act.0", "output"))
    np.testing.assert_allclose(jax.vmap(lambda x: short.forward(short.params, x))(tokens), acts[-1],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layers,message", [
    (("ln1.0", "bogus", "output"), "unknown node layer 'bogus'"),
    (("ln2.0", "ln1.0"), "out of order"),
    (("ln1.0", "ln1.0", "output"), "more than once"),
    (("output", "unembed"), "out of order"),
    (("ln1.0",), "at least two"),
])
def test_bad_node_layers_are_named(layers, message):
    cfg, weights = modadd.load()
    with pytest.raises(NodeLayerError, match=message) as err:
        modadd.sectioned_model(weights, cfg, layers)
    assert "ln2.0" in str(err.value)  # lists the valid ones


def test_checkpoint_errors(tmp_path):
    cfg, weights = modadd.load()
    with pytest.raises(CheckpointError, match="does not exist"):
        modadd.load(tmp_path / "missing.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(modadd.DEFAULT_CHECKPOINT.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated or not a valid"):
        modadd.load(truncated)
    wrong = dict(weights, **{"blocks.0.mlp.W_in": np.zeros((128, 256), np.float32)})
    checkpoints.save_npz(tmp_path / "wrong.npz", wrong)
    with pytest.raises(CheckpointError, match="wrong shape"):
        modadd.load(tmp_path / "wrong.npz")
    missing = {k: v for k, v in weights.items() if k != "unembed.W_U"}
    checkpoints.save_npz(tmp_path / "missing_key.npz", missing)
    with pytest.raises(CheckpointError, match="unembed.W_U"):
        modadd.load(tmp_path / "missing_key.npz")
    nan = dict(weights, **{"embed.W_E": np.full((114, 128), np.nan, np.float32)})
    checkpoints.save_npz(tmp_path / "nan.npz", nan)
    with pytest.raises(CheckpointError, match="NaN"):
        modadd.load(tmp_path / "nan.npz")
    checkpoints.save_npz(tmp_path / "other.npz", weights, model="mlp")
    with pytest.raises(CheckpointError, match="not of the modular-addition model"):
        modadd.load(tmp_path / "other.npz")


def test_reference_checkpoints_load(shared_data):
    for seed in range(5):
        cfg, weights = modadd.load(shared_data / f"weights_modadd_seed{seed}.npz")
        assert cfg.d_model == 128 and cfg.d_vocab == 114


def test_last_query_attention_equals_the_module_by_module_section():
    """Cut at add_resid1.0, attention computes every query; across it, only the last one."""
    cfg, weights = modadd.load()
    fused = modadd.sectioned_model(weights, cfg, ("ln1.0", "ln2.0", "output"))
    split = modadd.sectioned_model(weights, cfg, ("ln1.0", "add_resid1.0", "ln2.0", "output"))
    x = jax.vmap(lambda t: fused.embed(fused.params, t))(jnp.asarray(modadd.dataset()[0][::53]))
    one = jax.vmap(lambda a: fused.sections[0].fn(fused.params, a))(x)
    two = jax.vmap(lambda a: split.sections[1].fn(
        split.params, split.sections[0].fn(split.params, a)))(x)
    assert split.layers[1].positions == 3 and one.shape == two.shape
    np.testing.assert_allclose(one, two, rtol=1e-13, atol=1e-13)
