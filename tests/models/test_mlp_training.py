"""Training image MLPs (models/mlp_training.py, scripts/train_mlp.py) on the offline digits data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from libjax.errors import ConfigError
from models.common import images
from models.mlp import model as mlp
from models.mlp import training as mlp_training

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return images.load("digits", "train"), images.load("digits", "test")


def test_training_learns_digits_in_float32(digits, tmp_path):
    train, test = digits
    cfg = mlp.MLPConfig((64, 32, 10))
    result = mlp_training.train(cfg, train, test, mlp_training.TrainConfig(epochs=8, lr=5e-3))
    assert result.test_accuracy > 0.9 and result.train_accuracy > 0.9  # 0.953 and 0.964 here
    assert jax.config.jax_enable_x64  # training does not touch the global setting ...
    assert all(w.dtype == np.float32 for w in result.weights.values())  # ... yet is float32
    mlp.save(tmp_path / "d.npz", result.weights, cfg, dataset="digits")
    cfg2, weights, _ = mlp.load(tmp_path / "d.npz")
    model = mlp.sectioned_model(weights, cfg2)
    logits = jax.jit(jax.vmap(model.forward, in_axes=(None, 0)))(model.params, test[0])[:, 0]
    assert np.mean(np.argmax(logits, -1) == test[1]) == pytest.approx(result.test_accuracy)


def test_training_rejects_bad_settings(digits):
    with pytest.raises(ConfigError, match="epochs and batch_size must be >= 1"):
        mlp_training.TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="images have 64 pixels but the MLP takes 784"):
        mlp_training.train(mlp.MLPConfig((784, 10)), *digits, mlp_training.TrainConfig(epochs=1))


def script(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.slow
def test_train_script_writes_a_checkpoint_compute_basis_reads(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "mlp.npz"
    trained = script("scripts/train_mlp.py", "--epochs=3", "--hidden=16", f"--out={out}")
    assert trained.returncode == 0, trained.stderr
    cfg, _, meta = mlp.load(out)
    assert cfg.widths == (64, 16, 10) and meta["dataset"] == "digits" and meta["epochs"] == 3
    built = script("scripts/compute_basis.py", "--model=mlp", f"--checkpoint={out}",
                   "--n_samples=200", f"--out_dir={tmp_path / 'graph'}")
    assert built.returncode == 0 and "layers.0->layers.1" in built.stdout, built.stderr
    failed = script("scripts/train_mlp.py", "--dataset=mnist", f"--data_dir={tmp_path / 'none'}")
    assert failed.returncode == 2 and "does not exist" in failed.stderr
