"""Training the paper's modular-addition transformer (docs/method.md 4.2) with optax, as
``train_modadd.py`` runs it: full-batch AdamW (weight decay, betas 0.9/0.98, 10-step linear
warm-up) on the reference's 30% train split, cross-entropy at the last position, in jitted
``lax.scan``s of ``log_every`` steps."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from libjax.errors import ConfigError
from models.modadd import model as modadd

log = logging.getLogger("libjax")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training steps, seed, AdamW's rate and weight decay, steps between progress lines, and
    the test accuracy to stop at (None: never)."""

    epochs: int = 60000
    seed: int = 0
    lr: float = 1e-3
    weight_decay: float = 1.0
    log_every: int = 1000
    stop_at_test_acc: Optional[float] = None

    def validate(self) -> None:
        """Refuse settings that would train nothing or never stop."""
        if self.epochs < 1 or self.log_every < 1:
            raise ConfigError(f"--epochs and --log_every must be >= 1, got {self.epochs} and "
                              f"{self.log_every}")
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ConfigError(f"--lr must be > 0 and --weight_decay >= 0, got {self.lr} and "
                              f"{self.weight_decay}")
        if self.stop_at_test_acc is not None and not 0 < self.stop_at_test_acc <= 1:
            raise ConfigError(f"--stop_at_test_acc is an accuracy in (0, 1], got "
                              f"{self.stop_at_test_acc}")


@dataclasses.dataclass(frozen=True)
class Trained:
    weights: dict[str, np.ndarray]  # float32, TransformerLens names
    steps: int
    train_accuracy: float
    test_accuracy: float


def last_logits(model, params, tokens):
    return model.apply({"params": params}, tokens, last_position_only=True)[:, -1]


def loss_fn(model, params, tokens, labels):
    logits = last_logits(model, params, tokens)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(model, params, tokens, labels):
    return jnp.mean(jnp.argmax(last_logits(model, params, tokens), -1) == labels)


def train(tc: TrainConfig) -> Trained:
    """Train the paper's architecture from ``tc.seed``'s initialisation, logging progress every
    ``tc.log_every`` steps."""
    tc.validate()
    cfg = modadd.config()
    model = modadd.ModAddTransformer(cfg)
    x_train, y_train = map(jnp.asarray, modadd.split_data("train"))
    x_test, y_test = map(jnp.asarray, modadd.split_data("test"))
    params = model.init(jax.random.key(tc.seed), x_train[:1])["params"]
    schedule = lambda step: tc.lr * jnp.minimum(step / 10, 1.0)  # noqa: E731
    opt = optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=tc.weight_decay)
    opt_state = opt.init(params)

    def one_step(carry, _):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(lambda p: loss_fn(model, p, x_train, y_train))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    @jax.jit
    def run(params, opt_state):
        (params, opt_state), losses = jax.lax.scan(one_step, (params, opt_state), None,
                                                   length=tc.log_every)
        return params, opt_state, losses[-1], accuracy(model, params, x_test, y_test)

    start = time.perf_counter()
    step, test_acc = 0, 0.0
    while step < tc.epochs:
        params, opt_state, loss, test_acc = run(params, opt_state)
        loss, test_acc = float(loss), float(test_acc)  # waits for the asynchronous step
        step += tc.log_every
        rate = step / (time.perf_counter() - start)
        log.info("step %d/%d: train loss %.3g, test acc %.4f (%.0f steps/s, ETA %.0fs)", step,
                 tc.epochs, loss, test_acc, rate, (tc.epochs - step) / rate)
        if tc.stop_at_test_acc is not None and test_acc >= tc.stop_at_test_acc:
            break
    weights = {k: np.asarray(v, np.float32) for k, v in params.items()}
    train_acc = float(jax.jit(accuracy, static_argnums=0)(model, params, x_train, y_train))
    return Trained(weights, step, train_acc, test_acc)
