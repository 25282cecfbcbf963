"""Train the paper's modular-addition transformer (docs/method.md 4.2) with optax and write a
checkpoint.

    python scripts/train_modadd.py --out=models/assets/modadd_p113_seed0.npz

Full-batch AdamW (lr 1e-3, weight decay 1, betas 0.9/0.98, 10-step linear warm-up) on the
reference's 30% train split, cross-entropy at the last position. The checkpoint uses
TransformerLens names, the same format as the authors' weights.
"""

from __future__ import annotations

import logging

from absl import flags

from libjax.runtime import cli
from models.common import checkpoints
from models.modadd import model as modadd
from models.modadd import training

_OUT = flags.DEFINE_string("out", str(modadd.DEFAULT_CHECKPOINT), "checkpoint to write (.npz)")
_EPOCHS = flags.DEFINE_integer("epochs", 60000, "full-batch training steps")
_SEED = flags.DEFINE_integer("seed", 0, "parameter initialisation seed")
_LR = flags.DEFINE_float("lr", 1e-3, "AdamW learning rate")
_WD = flags.DEFINE_float("weight_decay", 1.0, "AdamW weight decay")
_LOG_EVERY = flags.DEFINE_integer("log_every", 1000, "steps between progress lines")
_STOP_AT = flags.DEFINE_float("stop_at_test_acc", None,
                              "stop early once test accuracy reaches this (default: never)")


def main(argv):
    del argv
    tc = training.TrainConfig(_EPOCHS.value, _SEED.value, _LR.value, _WD.value,
                              _LOG_EVERY.value, _STOP_AT.value)
    tc.validate()  # and the checkpoint path: before the training, not at its end
    checkpoints.check_writable(_OUT.value)
    result = training.train(tc)
    modadd.save(_OUT.value, result.weights, seed=tc.seed, steps=result.steps, lr=tc.lr,
                weight_decay=tc.weight_decay, train_accuracy=result.train_accuracy,
                test_accuracy=result.test_accuracy)
    logging.getLogger("libjax").info(
        "wrote %s: train acc %.4f, test acc %.4f after %d steps", _OUT.value,
        result.train_accuracy, result.test_accuracy, result.steps)


if __name__ == "__main__":
    cli.run(main, float64=False)  # the authors trained in float32
