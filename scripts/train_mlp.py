"""Train an image MLP (docs/method.md 4.1) with optax and write a checkpoint in the reference's
format.

    python scripts/train_mlp.py                                   # digits, 64-50-50-10, offline
    python scripts/train_mlp.py --dataset=mnist --data_dir=~/data/mnist --hidden=100,100 \\
        --epochs=12 --out=out/mlp_mnist.npz                       # the paper's MNIST setting

Trains on the dataset's train split, reports accuracy on its held-out test split, and writes
``layers.i.W`` (in, out) / ``layers.i.b`` weights plus metadata (activation, dataset, accuracies)
to --out; ``python scripts/compute_basis.py --model=mlp --checkpoint=OUT`` builds its graph.
"""

from __future__ import annotations

import numpy as np
from absl import flags

from libjax.errors import ConfigError
from libjax.runtime import cli
from models.common import checkpoints, images
from models.mlp import model as mlp
from models.mlp import training as mlp_training

_DATASET = flags.DEFINE_enum("dataset", "digits", list(images.DATASETS), "image dataset")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "directory with the dataset's files (MNIST idx, "
                                "CIFAR-10 python batches); default: download if a hub is installed")
_HIDDEN = flags.DEFINE_list("hidden", ["50", "50"], "hidden layer widths")
_ACT = flags.DEFINE_enum("act_fn", "relu", list(mlp.FOLDABLE), "hidden activation")
_EPOCHS = flags.DEFINE_integer("epochs", 40, "passes over the train split")
_BATCH = flags.DEFINE_integer("batch_size", 64, "minibatch size")
_LR = flags.DEFINE_float("lr", 1e-3, "Adam learning rate")
_SEED = flags.DEFINE_integer("seed", 0, "initialisation and shuffling seed")
_OUT = flags.DEFINE_string("out", None,
                           "checkpoint to write (default out/mlp_<dataset>_<hidden>.npz)")


def hidden_widths() -> tuple[int, ...]:
    try:
        return tuple(int(h) for h in _HIDDEN.value)
    except ValueError:
        raise ConfigError(f"--hidden must be comma-separated layer widths (integers), got "
                          f"{','.join(_HIDDEN.value)!r}") from None


def main(argv):
    del argv
    # Every setting is checked before the data is read and the training starts.
    hidden = hidden_widths()
    pixels = int(np.prod(images.IMAGE_SHAPES[_DATASET.value]))
    cfg = mlp.MLPConfig((pixels, *hidden, images.N_CLASSES), _ACT.value)
    tc = mlp_training.TrainConfig(epochs=_EPOCHS.value, batch_size=_BATCH.value, lr=_LR.value,
                                  seed=_SEED.value)
    out = _OUT.value or f"out/mlp_{_DATASET.value}_{'_'.join(map(str, hidden))}.npz"
    checkpoints.check_writable(out)
    x_train, y_train = images.load(_DATASET.value, "train", _DATA_DIR.value)
    x_test, y_test = images.load(_DATASET.value, "test", _DATA_DIR.value)
    print(f"training a {cfg.act_fn} MLP {'-'.join(map(str, cfg.widths))} on {len(x_train)} "
          f"{_DATASET.value} images ({len(x_test)} held out)")
    result = mlp_training.train(cfg, (x_train, y_train), (x_test, y_test), tc)
    mlp.save(out, result.weights, cfg, dataset=_DATASET.value, seed=tc.seed, epochs=tc.epochs,
             batch_size=tc.batch_size, lr=tc.lr, train_accuracy=result.train_accuracy,
             test_accuracy=result.test_accuracy)
    print(f"wrote {out}: train accuracy {result.train_accuracy:.4f}, test accuracy "
          f"{result.test_accuracy:.4f} after {tc.epochs} epochs ({result.seconds:.1f}s)")


if __name__ == "__main__":
    cli.run(main, float64=False)  # the authors trained in float32
