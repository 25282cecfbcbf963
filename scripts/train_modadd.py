"""Train the paper's modular-addition transformer (docs/method.md 4.2) with optax and write a
checkpoint.

    python scripts/train_modadd.py --out=models/assets/modadd_p113_seed0.npz

Full-batch AdamW (lr 1e-3, weight decay 1, betas 0.9/0.98, 10-step linear warm-up) on the
reference's 30% train split, cross-entropy at the last position. The checkpoint uses
TransformerLens names, the same format as the authors' weights.
"""

from __future__ import annotations

import time

from absl import flags, logging

import jax
import jax.numpy as jnp
import numpy as np
import optax

from libjax.errors import ConfigError
from libjax.runtime import cli
from models.common import checkpoints
from models.modadd import model as modadd


_OUT = flags.DEFINE_string("out", str(modadd.DEFAULT_CHECKPOINT), "checkpoint to write (.npz)")
_EPOCHS = flags.DEFINE_integer("epochs", 60000, "full-batch training steps")
_SEED = flags.DEFINE_integer("seed", 0, "parameter initialisation seed")
_LR = flags.DEFINE_float("lr", 1e-3, "AdamW learning rate")
_WD = flags.DEFINE_float("weight_decay", 1.0, "AdamW weight decay")
_LOG_EVERY = flags.DEFINE_integer("log_every", 1000, "steps between progress lines")
_STOP_AT = flags.DEFINE_float("stop_at_test_acc", None,
                              "stop early once test accuracy reaches this (default: never)")


def last_logits(model, params, tokens):
    return model.apply({"params": params}, tokens, last_position_only=True)[:, -1]


def loss_fn(model, params, tokens, labels):
    logits = last_logits(model, params, tokens)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(model, params, tokens, labels):
    return jnp.mean(jnp.argmax(last_logits(model, params, tokens), -1) == labels)


def check_flags() -> None:
    """Refuse settings that would train nothing, never stop, or fail only at the end."""
    if _EPOCHS.value < 1 or _LOG_EVERY.value < 1:
        raise ConfigError(f"--epochs and --log_every must be >= 1, got {_EPOCHS.value} and "
                          f"{_LOG_EVERY.value}")
    if not _LR.value > 0 or not _WD.value >= 0:
        raise ConfigError(f"--lr must be > 0 and --weight_decay >= 0, got {_LR.value} and "
                          f"{_WD.value}")
    if _STOP_AT.value is not None and not 0 < _STOP_AT.value <= 1:
        raise ConfigError(f"--stop_at_test_acc is an accuracy in (0, 1], got {_STOP_AT.value}")
    checkpoints.check_writable(_OUT.value)


def main(argv):
    del argv
    check_flags()
    cfg = modadd.config()
    model = modadd.ModAddTransformer(cfg)
    x_train, y_train = map(jnp.asarray, modadd.split_data("train"))
    x_test, y_test = map(jnp.asarray, modadd.split_data("test"))
    params = model.init(jax.random.key(_SEED.value), x_train[:1])["params"]
    schedule = lambda step: _LR.value * jnp.minimum(step / 10, 1.0)  # noqa: E731
    opt = optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=_WD.value)
    opt_state = opt.init(params)

    def one_step(carry, _):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(lambda p: loss_fn(model, p, x_train, y_train))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    @jax.jit
    def run(params, opt_state):
        (params, opt_state), losses = jax.lax.scan(one_step, (params, opt_state), None,
                                                   length=_LOG_EVERY.value)
        return params, opt_state, losses[-1], accuracy(model, params, x_test, y_test)

    start = time.perf_counter()
    step, test_acc = 0, 0.0
    while step < _EPOCHS.value:
        params, opt_state, loss, test_acc = run(params, opt_state)
        loss, test_acc = float(loss), float(test_acc)  # waits for the asynchronous step
        step += _LOG_EVERY.value
        rate = step / (time.perf_counter() - start)
        logging.info("step %d/%d: train loss %.3g, test acc %.4f (%.0f steps/s, ETA %.0fs)", step,
                     _EPOCHS.value, loss, test_acc, rate, (_EPOCHS.value - step) / rate)
        if _STOP_AT.value is not None and test_acc >= _STOP_AT.value:
            break
    weights = {k: np.asarray(v, np.float32) for k, v in params.items()}
    train_acc = float(jax.jit(accuracy, static_argnums=0)(model, params, x_train, y_train))
    modadd.save(_OUT.value, weights, seed=_SEED.value, steps=step, lr=_LR.value,
                weight_decay=_WD.value, train_accuracy=train_acc, test_accuracy=test_acc)
    logging.info("wrote %s: train acc %.4f, test acc %.4f after %d steps", _OUT.value,
                 train_acc, test_acc, step)


if __name__ == "__main__":
    cli.run(main, float64=False)  # the authors trained in float32
