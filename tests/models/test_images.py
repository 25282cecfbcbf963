"""Image data (models/images.py): MNIST idx files, CIFAR-10 python batches, scikit-learn digits,
on small files written in exactly the formats of the real downloads (tests/image_files.py)."""

from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import pytest

from libjax.errors import ConfigError, DataError
from models.common import images
from tests.helpers.image_files import (
    cifar_batch_bytes,
    idx_bytes,
    random_mnist,
    write_cifar,
    write_mnist,
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --- MNIST ----------------------------------------------------------------------------------------

def test_idx_layout_is_the_published_one(rng):
    """Magic 0x00000803 / 0x00000801, then big-endian sizes (as in yann.lecun.com's files)."""
    imgs, labels = random_mnist(3, rng)
    assert idx_bytes(imgs, 2051)[:16] == bytes.fromhex("00000803 00000003 0000001c 0000001c")
    assert idx_bytes(labels, 2049)[:8] == bytes.fromhex("00000801 00000003")


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_both_splits(tmp_path, rng, gz):
    data = {split: random_mnist(n, rng) for split, n in (("train", 7), ("test", 4))}
    for split, (x, y) in data.items():
        write_mnist(tmp_path, split, x, y, gz=gz)
    for split, (x, y) in data.items():
        got_x, got_y = images.load("mnist", split, tmp_path)
        assert got_x.dtype == np.float32 and got_x.shape == (len(x), 28, 28)
        np.testing.assert_array_equal(got_x, x.astype(np.float32) / 255)
        assert got_y.dtype == np.int32
        np.testing.assert_array_equal(got_y, y)
        assert got_x.min() >= 0 and got_x.max() <= 1


def test_mnist_in_torchvision_layout(tmp_path, rng):
    x, y = random_mnist(3, rng)
    write_mnist(tmp_path / "MNIST" / "raw", "test", x, y)
    np.testing.assert_array_equal(images.load("mnist", "test", tmp_path)[1], y)


def _corrupt(paths, kind):
    img, lab = paths
    data = img.read_bytes()
    if kind == "truncated":
        img.write_bytes(data[:-10])
    elif kind == "too long":
        img.write_bytes(data + b"\0")
    elif kind == "header cut":
        img.write_bytes(data[:9])
    elif kind == "swapped":
        img.write_bytes(lab.read_bytes())
    elif kind == "garbage":
        img.write_bytes(b"\x89PNG" + data[4:])
    elif kind == "count mismatch":
        lab.write_bytes(idx_bytes(np.zeros(2, np.uint8), 2049))
    elif kind == "bad label":
        lab.write_bytes(idx_bytes(np.full(5, 12, np.uint8), 2049))


@pytest.mark.parametrize("kind, message", [
    ("truncated", "is truncated"), ("too long", "longer than its header"),
    ("header cut", "truncated inside its header"), ("swapped", "magic number 2049"),
    ("garbage", "not an idx file"), ("count mismatch", "2 labels for 5 images"),
    ("bad label", "outside 0..9")])
def test_mnist_corrupt_files(tmp_path, rng, kind, message):
    paths = write_mnist(tmp_path, "train", *random_mnist(5, rng))
    _corrupt(paths, kind)
    with pytest.raises(DataError, match=message):
        images.load("mnist", "train", tmp_path)


def test_mnist_truncated_gzip(tmp_path, rng):
    img, _ = write_mnist(tmp_path, "train", *random_mnist(5, rng), gz=True)
    img.write_bytes(img.read_bytes()[:40])
    with pytest.raises(DataError, match="truncated or not a gzip"):
        images.load("mnist", "train", tmp_path)


def test_mnist_missing_files(tmp_path, rng):
    with pytest.raises(DataError, match="does not exist"):
        images.load("mnist", "train", tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=r"no MNIST files .*found: notes.txt.*t10k-images-idx3"):
        images.load("mnist", "train", tmp_path)
    write_mnist(tmp_path, "test", *random_mnist(2, rng))
    with pytest.raises(DataError, match="no train-images-idx3-ubyte"):
        images.load("mnist", "train", tmp_path)


# --- CIFAR-10 -------------------------------------------------------------------------------------

def test_cifar_reads_python2_batches_in_chw_order(tmp_path, rng):
    written = write_cifar(tmp_path / "cifar-10-batches-py", 2, rng)
    x, y = images.load("cifar10", "train", tmp_path)
    assert x.dtype == np.float32 and x.shape == (10, 3, 32, 32)
    raw = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(y, np.concatenate([written[f"data_batch_{i}"][1]
                                                     for i in range(1, 6)]))
    # channel c, row r, column k is byte c*1024 + r*32 + k of the row; flattening gives the row
    assert x[3, 2, 5, 7] == np.float32(raw[3, 2 * 1024 + 5 * 32 + 7]) / 255
    np.testing.assert_array_equal(x.reshape(10, -1), raw.astype(np.float32) / 255)
    x_test, y_test = images.load("cifar10", "test", tmp_path)
    np.testing.assert_array_equal(y_test, written["test_batch"][1])


def test_cifar_reads_python3_pickles(tmp_path, rng):
    """Batches re-pickled by Python 3 / NumPy 2 (``numpy._core``, ``_codecs.encode``) load too."""
    data = rng.integers(0, 256, (3, 3072)).astype(np.uint8)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": [0, 4, 9]}, f, protocol=2)
    x, y = images.load("cifar10", "test", tmp_path)
    np.testing.assert_array_equal(x.reshape(3, -1), data / np.float32(255))
    np.testing.assert_array_equal(y, [0, 4, 9])


def test_cifar_refuses_code_in_pickles(tmp_path):
    (tmp_path / "test_batch").write_bytes(b"\x80\x02cbuiltins\nprint\nU\x05pwned\x85R.")
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        images.load("cifar10", "test", tmp_path)


@pytest.mark.parametrize("content, message", [
    (lambda rng: cifar_batch_bytes(rng.integers(0, 256, (2, 3072)).astype(np.uint8), [1, 2])[:-40],
     "truncated or not a CIFAR-10"),
    (lambda rng: pickle.dumps({b"images": np.zeros((1, 3072), np.uint8)}), "not the CIFAR-10 keys"),
    (lambda rng: pickle.dumps({b"data": np.zeros((1, 100), np.uint8), b"labels": [1]}),
     r"expected uint8 \(n, 3072\)"),
    (lambda rng: pickle.dumps([1, 2]), "not a CIFAR-10 batch dict"),
    (lambda rng: cifar_batch_bytes(np.zeros((2, 3072), np.uint8), [1]), "1 labels for 2 images"),
])
def test_cifar_corrupt_batches(tmp_path, rng, content, message):
    (tmp_path / "test_batch").write_bytes(content(rng))
    with pytest.raises(DataError, match=message):
        images.load("cifar10", "test", tmp_path)


def test_cifar_missing_files(tmp_path, rng):
    with pytest.raises(DataError, match="no CIFAR-10 python batches"):
        images.load("cifar10", "train", tmp_path)
    write_cifar(tmp_path, 1, rng, names=("data_batch_1", "data_batch_2", "test_batch"))
    with pytest.raises(DataError, match="lacks data_batch_3, data_batch_4, data_batch_5"):
        images.load("cifar10", "train", tmp_path)


# --- digits and dispatch --------------------------------------------------------------------------

def test_digits_split(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # the shipped file needs no scikit-learn
    x_train, y_train = images.load("digits", "train")
    x_test, y_test = images.load("digits", "test")
    assert x_train.shape == (1437, 8, 8) and x_test.shape == (360, 8, 8)
    assert x_train.dtype == np.float32 and x_train.min() == 0 and x_train.max() == 1
    assert set(np.unique(y_test)) == set(range(10))
    idx = np.concatenate([images.digits_split_indices(s) for s in ("train", "test")])
    assert sorted(idx) == list(range(1797))
    np.testing.assert_array_equal(images.load("digits", "test")[0], x_test)  # deterministic


def test_shipped_digits_are_scikit_learns():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    bunch = sklearn_datasets.load_digits()
    for split in ("train", "test"):
        idx = images.digits_split_indices(split)
        x, y = images.load("digits", split)
        np.testing.assert_array_equal(x, (bunch.images[idx] / 16.0).astype(np.float32))
        np.testing.assert_array_equal(y, bunch.target[idx])


def test_load_rejects_bad_requests(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown dataset 'svhn'"):
        images.load("svhn")
    with pytest.raises(ConfigError, match="unknown split 'val'"):
        images.load("mnist", "val", tmp_path)
    with pytest.raises(ConfigError, match="ships with libjax"):
        images.load("digits", "train", tmp_path)
    # no data_dir and no hub package: say how to get the data (and never touch the network)
    monkeypatch.setitem(sys.modules, "datasets", None)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(DataError, match="pass --data_dir=DIR .*pip install datasets"):
        images.load("cifar10", "train")


def test_dataset_for_input_dim():
    assert images.dataset_for_input_dim(784) == "mnist"
    assert images.dataset_for_input_dim(3072) == "cifar10"
    assert images.dataset_for_input_dim(64) == "digits"
    assert images.dataset_for_input_dim(100) is None


def test_download_glue_with_stand_in_hubs(monkeypatch, rng):
    """The hub adapters' layout handling, with stand-in modules (tests never use the network):
    channels-last uint8 images become channels-first [0, 1] floats."""
    hwc = rng.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    calls = []

    def load_dataset(repo, split):
        calls.append((repo, split))
        return {"img": [hwc[0], hwc[1]], "label": [3, 7]}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    x, y = images.load("cifar10", "test")
    assert calls == [("uoft-cs/cifar10", "test")]
    np.testing.assert_array_equal(x, hwc.transpose(0, 3, 1, 2) / np.float32(255))
    np.testing.assert_array_equal(y, [3, 7])

    gray = rng.integers(0, 256, (3, 28, 28, 1)).astype(np.uint8)
    tfds = types.SimpleNamespace(load=lambda name, **kw: (name, kw),
                                 as_numpy=lambda loaded: (gray, np.array([1, 2, 3])))
    monkeypatch.setitem(sys.modules, "datasets", None)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", tfds)
    x, y = images.load("mnist", "train")
    np.testing.assert_array_equal(x, gray[..., 0] / np.float32(255))
    np.testing.assert_array_equal(y, [1, 2, 3])
