"""Training an image MLP (:class:`models.mlp.model.MLP`) with optax, as the reference trains its
MLPs.

Adam on mean cross-entropy over shuffled minibatches (reference: lr 1e-3, batch 64, 12 epochs);
each epoch is one jitted ``lax.scan`` over its steps, and the last partial batch of an epoch is
dropped (the shuffle changes which samples that is). Training runs in float32 whatever JAX's x64
setting, since parameters, inputs and optimiser state are all created as float32.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from libjax.errors import ConfigError
from models.mlp.model import MLP, MLPConfig

log = logging.getLogger("libjax")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or not 0 < self.lr < float("inf"):
            raise ConfigError(f"epochs and batch_size must be >= 1 and lr > 0, got {self}")


@dataclasses.dataclass(frozen=True)
class Result:
    """Trained weights (reference names, float32 NumPy) and how well they do."""

    weights: dict
    train_accuracy: float
    test_accuracy: float
    final_loss: float
    seconds: float


def _flat(x) -> jnp.ndarray:
    return jnp.asarray(np.asarray(x, np.float32).reshape(len(x), -1))


@functools.partial(jax.jit, static_argnums=0)
def _predictions(model: MLP, params, x):
    return jnp.argmax(model.apply({"params": params}, x), axis=-1)


def accuracy(model: MLP, params, x, y) -> float:
    """Fraction of ``x`` whose argmax logit is the label ``y``."""
    return float(np.mean(np.asarray(_predictions(model, params, _flat(x))) == np.asarray(y)))


def _epoch_fn(model: MLP, opt, n: int, batch_size: int):
    steps, size = max(n // batch_size, 1), min(batch_size, n)

    def loss_fn(params, x, y):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def epoch(params, opt_state, key, x, y):
        def step(carry, idx):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx])
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        order = jax.random.permutation(key, n)[:steps * size].reshape(steps, size)
        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), order)
        return params, opt_state, jnp.mean(losses)
    return epoch


def train(cfg: MLPConfig, train_data, test_data, tc: TrainConfig = TrainConfig()) -> Result:
    """Train a fresh MLP of architecture ``cfg`` on ``train_data = (images, labels)`` and report
    its accuracy on both splits (``test_data`` is only evaluated, once per epoch for the log)."""
    x, y = _flat(train_data[0]), jnp.asarray(train_data[1], jnp.int32)
    if x.shape[1] != cfg.widths[0]:
        raise ConfigError(f"images have {x.shape[1]} pixels but the MLP takes {cfg.widths[0]}")
    model = MLP(cfg)
    init_key, key = jax.random.split(jax.random.key(tc.seed))
    params = jax.jit(model.init)(init_key, x[:1])["params"]
    opt = optax.adam(tc.lr)
    opt_state = opt.init(params)
    epoch = _epoch_fn(model, opt, len(x), tc.batch_size)
    start = time.perf_counter()
    loss = float("nan")
    for e in range(1, tc.epochs + 1):
        params, opt_state, loss = epoch(params, opt_state, jax.random.fold_in(key, e), x, y)
        loss = float(loss)  # waits for the asynchronous epoch
        log.info("epoch %d/%d: train loss %.4f, test acc %.4f (%.1fs)", e, tc.epochs, loss,
                 accuracy(model, params, *test_data), time.perf_counter() - start)
    seconds = time.perf_counter() - start
    return Result(weights={k: np.asarray(v) for k, v in params.items()},
                  train_accuracy=accuracy(model, params, *train_data),
                  test_accuracy=accuracy(model, params, *test_data), final_loss=loss,
                  seconds=seconds)
