"""Multi-layer perceptrons on images (docs/method.md 4.1): Flax model, bias folding, sections,
checkpoints.

``layers.i`` computes ``act(x W + b)`` (no activation after the last layer) on the flattened
image; ``W`` is stored ``(in, out)`` under the reference's names ``layers.i.W``/``layers.i.b``, so
the authors' MNIST/CIFAR checkpoints and ours share one ``.npz`` format (widths are read from the
shapes, the activation from the metadata, ``relu`` if there is none).

For LIB the weights are bias-folded (docs/method.md 1.2) and the model becomes the module list
``flatten, layers.0, ..., layers.{n-1}``: ``flatten`` turns one image into a single row
``(1, pixels + 1)`` ending in the constant 1 (an MLP has no position axis, so activations carry a
singleton one and the model is not ``positional``). Node layer ``layers.i`` is the input of layer
``i``; ``output`` is the logits. As in the reference, node layers must be consecutive.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from libjax import model as contract
from libjax.errors import CheckpointError, ConfigError, NodeLayerError
from libjax.forms.mlp import MLPForm
from models.common import checkpoints, transformer

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_CHECKPOINT = ASSETS / "mlp_digits_50_50.npz"
FOLDABLE = tuple(transformer.ACTIVATIONS)  # relu, identity, gelu_new, gelu
_WEIGHT = re.compile(r"layers\.(\d+)\.W$")


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """Layer widths ``(inputs, hidden..., outputs)`` and the hidden layers' activation."""

    widths: tuple[int, ...]
    act_fn: str = "relu"

    def __post_init__(self):
        check_activation(self.act_fn)
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ConfigError(f"an MLP needs at least input and output widths >= 1, got "
                              f"{self.widths}")

    @property
    def n_layers(self) -> int:
        return len(self.widths) - 1


def check_activation(act_fn: str) -> None:
    """Reject activations that cannot carry the folded bias: folding needs an ``r`` with
    ``act(r) = 1`` (docs/method.md 1.2), and tanh and sigmoid only approach 1."""
    if act_fn not in FOLDABLE:
        why = (" never reaches 1, so its biases cannot be folded into the weights"
               if act_fn in ("tanh", "sigmoid") else " is unknown")
        raise ConfigError(f"activation {act_fn!r}{why}; use one of {', '.join(FOLDABLE)}")


# --- the trainable (unfolded) model ---------------------------------------------------------------

def _uniform(bound: float):
    """PyTorch ``nn.Linear``'s initialiser: ``U(-bound, bound)`` with ``bound = 1/sqrt(in)``."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


class MLP(nn.Module):
    """Unfolded MLP with the reference's parameter names and shapes."""

    cfg: MLPConfig

    @nn.compact
    def __call__(self, x):
        """images ``(batch, ...)`` -> logits ``(batch, outputs)``."""
        x = x.reshape(x.shape[0], -1)
        act = transformer.ACTIVATIONS[self.cfg.act_fn]
        for i, (d_in, d_out) in enumerate(zip(self.cfg.widths[:-1], self.cfg.widths[1:])):
            init = _uniform(1 / math.sqrt(d_in))
            x = x @ self.param(f"layers.{i}.W", init, (d_in, d_out)) \
                + self.param(f"layers.{i}.b", init, (d_out,))
            if i < self.cfg.n_layers - 1:
                x = act(x)
        return x


def expected_shapes(cfg: MLPConfig) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for i, (d_in, d_out) in enumerate(zip(cfg.widths[:-1], cfg.widths[1:])):
        shapes[f"layers.{i}.W"], shapes[f"layers.{i}.b"] = (d_in, d_out), (d_out,)
    return shapes


# --- bias folding and sections (docs/method.md 1.2, 4.1)
# ----------------------------------------------------

def fold_biases(cfg: MLPConfig, weights: dict, dtype=np.float64) -> dict:
    """``layers.i.W``/``layers.i.b`` -> folded ``layers.i.W`` only: ``[[W, 0], [b, r]]`` for hidden
    layers (``act(r) = 1`` keeps the trailing 1), ``[[W], [b]]`` for the last. Computed in float64,
    returned as ``dtype``."""
    r = transformer.root_one(cfg.act_fn)
    folded = {}
    for i in range(cfg.n_layers):
        w = np.asarray(weights[f"layers.{i}.W"], np.float64)
        b = np.asarray(weights[f"layers.{i}.b"], np.float64)
        w = np.concatenate([w, b[None, :]], axis=0)
        if i < cfg.n_layers - 1:
            extra = np.zeros((w.shape[0], 1))
            extra[-1, 0] = r
            w = np.concatenate([w, extra], axis=1)
        folded[f"layers.{i}.W"] = w.astype(dtype)
    return folded


def _flatten(p, image):
    """One image (any shape) -> ``((1, pixels + 1),)``: its pixels in a row, then the constant 1."""
    row = image.reshape(1, -1).astype(p["layers.0.W"].dtype)
    return (jnp.concatenate([row, jnp.ones((1, 1), row.dtype)], axis=-1),)


def _layer(i: int, act):
    def fn(p, inputs):
        (x,) = inputs
        y = x @ p[f"layers.{i}.W"]
        return (y if act is None else act(y),)
    return fn


def modules(cfg: MLPConfig) -> list[contract.Module]:
    """``flatten, layers.0, ..., layers.{n-1}`` as per-sample functions of folded weights."""
    act = transformer.ACTIVATIONS[cfg.act_fn]
    last = cfg.n_layers - 1
    return [("flatten", _flatten)] + [
        (f"layers.{i}", _layer(i, None if i == last else act)) for i in range(cfg.n_layers)]


def all_node_layers(cfg: MLPConfig) -> tuple[str, ...]:
    """Every node layer, in order: ``layers.0 .. layers.{n-1}, output``."""
    return tuple(f"layers.{i}" for i in range(cfg.n_layers)) + (contract.OUTPUT,)


def check_node_layers(node_layers, cfg: MLPConfig) -> tuple[str, ...]:
    """Valid, ordered and **consecutive** node layers (each section is one layer, docs/method.md
    4.1)."""
    valid = all_node_layers(cfg)
    node_layers = contract.validate_node_layers(node_layers, valid)
    idx = [valid.index(n) for n in node_layers]
    if idx != list(range(idx[0], idx[0] + len(idx))):
        raise NodeLayerError(f"MLP node layers must be consecutive, got {list(node_layers)}; to "
                             f"span them list {', '.join(valid[idx[0]:idx[-1] + 1])}. Valid "
                             f"node layers in order: {', '.join(valid)}")
    return node_layers


def sectioned_model(weights: dict, cfg: MLPConfig, node_layers=None,
                    dtype=np.float64) -> contract.SectionedModel:
    """The folded MLP cut at ``node_layers`` (default: all of them)."""
    node_layers = check_node_layers(node_layers or all_node_layers(cfg), cfg)
    folded = jax.device_put(fold_biases(cfg, weights, dtype))
    example = jax.ShapeDtypeStruct((cfg.widths[0],), jnp.dtype(dtype))
    ids = [mid for mid, _ in modules(cfg)]
    return contract.cut("mlp", modules(cfg), folded, example, node_layers, positional=False,
                         positionwise_modules=ids, form_of=lambda span: _form(cfg, span))


def _form(cfg: MLPConfig, span: tuple[str, ...]) -> MLPForm | None:
    """Every section is one layer ``x -> act(x W)`` (the last one linear, ``x -> x W``)."""
    if len(span) != 1:
        return None
    i = int(span[0].split(".")[1])
    key = f"layers.{i}.W"
    if i == cfg.n_layers - 1:
        return MLPForm(None, lambda p: {"R": p[key]})
    return MLPForm(transformer.ACTIVATIONS[cfg.act_fn], lambda p: {"B": p[key]})


# --- checkpoints ----------------------------------------------------------------------------------

def config_from_weights(weights: dict, meta: dict, path) -> MLPConfig:
    """Widths from the shapes of ``layers.0.W .. layers.{n-1}.W``; activation from ``meta``."""
    indices = sorted(int(m.group(1)) for k in weights if (m := _WEIGHT.match(k)))
    if not indices:
        raise CheckpointError(f"checkpoint {path} has no 'layers.i.W' weights (found "
                              f"{sorted(weights)[:6]}); is it an MLP checkpoint?")
    missing = sorted(set(range(indices[-1] + 1)) - set(indices))
    if missing:
        raise CheckpointError(f"checkpoint {path} has layers {indices}: "
                              f"{', '.join(f'layers.{i}.W' for i in missing)} is missing")
    shapes = [checkpoints.shape_of(weights, f"layers.{i}.W", path, ndim=2) for i in indices]
    widths = (shapes[0][0],) + tuple(s[1] for s in shapes)
    try:
        return MLPConfig(widths, meta.get("act_fn", "relu"))
    except ConfigError as err:
        raise CheckpointError(f"checkpoint {path}: {err}") from None


def load(path: str | os.PathLike | None = None) -> tuple[MLPConfig, dict, dict]:
    """Load an MLP checkpoint: (config, weights, metadata). Accepts the authors' files
    (``weights_mnist_mlp_100_100.npz``, ``weights_cifar_mlp_50_50.npz``) and those written by
    ``scripts/train_mlp.py``; ``None`` loads the digits MLP shipped with the package."""
    path = DEFAULT_CHECKPOINT if path is None else Path(path)
    weights, meta = checkpoints.load_npz(path)
    if meta.get("model") not in (None, "mlp"):
        raise CheckpointError(f"{path} is a checkpoint of model {meta['model']!r}, not of an MLP")
    cfg = config_from_weights(weights, meta, path)
    checkpoints.check_shapes(weights, expected_shapes(cfg), path)
    return cfg, weights, meta


def save(path: str | os.PathLike, weights: dict, cfg: MLPConfig, **meta) -> None:
    """Write reference-named weights plus metadata (``model``, ``act_fn``, ...) to ``path``."""
    checkpoints.save_npz(path, weights, model="mlp", act_fn=cfg.act_fn, **meta)
