"""Image classification data for the MLPs (docs/method.md 4.1): MNIST, CIFAR-10 and scikit-learn's
digits.

Every loader returns ``(images, labels)``: ``float32`` pixels in ``[0, 1]`` (``uint8 / 255``, no
normalisation, as torchvision's ``ToTensor``) shaped ``(N, 28, 28)`` for MNIST, ``(N, 3, 32, 32)``
(channels first, so flattening gives the reference's CHW order) for CIFAR-10 and ``(N, 8, 8)`` for
digits; labels are ``int32`` classes ``0..9``.

Sources, in order of preference:

* ``data_dir``: the datasets' own distribution formats, read with no third-party code. MNIST: the
  four idx files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``), in
  ``data_dir`` or torchvision's ``data_dir/MNIST/raw``. CIFAR-10: the python pickle batches
  ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` in ``data_dir`` or
  ``data_dir/cifar-10-batches-py``. The pickles are read with an unpickler that can only rebuild
  NumPy arrays, so a tampered file cannot run code.
* no ``data_dir``: Hugging Face ``datasets`` or ``tensorflow-datasets``, whichever is installed
  (neither is a dependency); they download over the network.
* ``digits`` (scikit-learn's 1797 8 x 8 images) ships with the package as
  ``models/assets/digits.npz``, so it works offline with no extra dependency (see
  :func:`load_digits`). It has no official split: a fixed permutation (legacy
  ``RandomState(0)``, whose stream NumPy keeps stable) holds out the last 360 images as the test
  split.

Anything missing, truncated or malformed is a :class:`~libjax.errors.DataError` naming the file
and what was expected.
"""

from __future__ import annotations

import codecs
import gzip
import importlib
import io
import logging
import pickle
import zlib
from pathlib import Path

import numpy as np

from libjax.errors import ConfigError, DataError

log = logging.getLogger("libjax")

DATASETS = ("mnist", "cifar10", "digits")
SPLITS = ("train", "test")
N_CLASSES = 10
IMAGE_SHAPES = {"mnist": (28, 28), "cifar10": (3, 32, 32), "digits": (8, 8)}

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CIFAR_PIXELS = 3 * 32 * 32
DIGITS_TEST_SIZE = 360
DIGITS_FILE = Path(__file__).resolve().parents[1] / "assets" / "digits.npz"

HF_NAMES = {"mnist": ("ylecun/mnist", "image"), "cifar10": ("uoft-cs/cifar10", "img")}


def load(name: str, split: str = "train", data_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of dataset ``name`` (``mnist``, ``cifar10``, ``digits``), split
    ``train`` or ``test``, from ``data_dir`` if given, else downloaded (see the module doc)."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} of {name}; choose one of {', '.join(SPLITS)}")
    if name == "digits":
        if data_dir is not None:
            raise ConfigError("the digits dataset ships with libjax; do not pass a data "
                              "directory for it")
        return load_digits(split)
    if data_dir is not None:
        return load_mnist(data_dir, split) if name == "mnist" else load_cifar10(data_dir, split)
    return download(name, split)


def dataset_for_input_dim(dim: int) -> str | None:
    """The dataset whose flattened images have ``dim`` pixels (None if no dataset has)."""
    matches = [n for n, shape in IMAGE_SHAPES.items() if int(np.prod(shape)) == dim]
    return matches[0] if matches else None


def _pixels(raw: np.ndarray) -> np.ndarray:
    """``uint8`` pixels -> ``float32`` in ``[0, 1]``."""
    return raw.astype(np.float32) / np.float32(255)


def _labels(raw, n_images: int, source: str) -> np.ndarray:
    labels = np.asarray(raw).astype(np.int64).ravel()
    if len(labels) != n_images:
        raise DataError(f"{source}: {len(labels)} labels for {n_images} images; the files do not "
                        "belong together or one is corrupt")
    if len(labels) and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise DataError(f"{source}: labels outside 0..{N_CLASSES - 1} (found {labels.min()}.."
                        f"{labels.max()}); the file is corrupt or of another dataset")
    return labels.astype(np.int32)


def _find_dir(data_dir, subdir: str) -> list[Path]:
    """``data_dir`` and its conventional sub-folder ``subdir`` (those that exist)."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist or is not a directory; pass "
                        "--data_dir=DIR with the dataset's files")
    return [d for d in (root, root / subdir) if d.is_dir()]


def _listing(dirs: list[Path]) -> str:
    names = sorted(p.name for d in dirs for p in d.iterdir())
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return shown or "nothing"


# --- MNIST: idx files -----------------------------------------------------------------------------

def read_idx(path, magic: int) -> np.ndarray:
    """An idx file of unsigned bytes (``.gz`` or not) as a ``uint8`` array.

    Layout: big-endian ``int32`` magic ``0x0000 08 nd`` (type 8 = unsigned byte, ``nd``
    dimensions), ``nd`` big-endian ``int32`` sizes, then the bytes in row-major order.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} cannot be read ({err}); it is truncated or not a gzip file. "
                        "Download it again.") from None
    kinds = {IDX_IMAGES_MAGIC: "idx image file", IDX_LABELS_MAGIC: "idx label file"}
    if len(data) < 4:
        raise DataError(f"{path} is truncated ({len(data)} bytes, not even an idx header)")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        what = kinds.get(found, "not an idx file of unsigned bytes")
        raise DataError(f"{path} has magic number {found} ({what}); expected {magic} "
                        f"({kinds[magic]}). Are the files swapped or corrupt?")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated inside its header ({len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    payload = len(data) - header
    if payload != expected:
        state = "truncated" if payload < expected else "corrupt (longer than its header says)"
        raise DataError(f"{path} is {state}: header shape {shape} needs {expected} bytes of data, "
                        f"found {payload}. Download it again.")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _mnist_file(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def load_mnist(data_dir, split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST ``split`` from the idx files in ``data_dir`` (or ``data_dir/MNIST/raw``)."""
    dirs = _find_dir(data_dir, "MNIST/raw")
    all_stems = [s for pair in MNIST_FILES.values() for s in pair]
    if not any(_mnist_file(dirs, s) for s in all_stems):
        raise DataError(f"no MNIST files in {data_dir} (found: {_listing(dirs)}); expected "
                        f"{', '.join(s + '[.gz]' for s in all_stems)}")
    paths = []
    for stem in MNIST_FILES[split]:
        path = _mnist_file(dirs, stem)
        if path is None:
            raise DataError(f"{data_dir} has no {stem}[.gz], needed for the MNIST {split} split")
        paths.append(path)
    images = read_idx(paths[0], IDX_IMAGES_MAGIC)
    labels = _labels(read_idx(paths[1], IDX_LABELS_MAGIC), len(images), str(paths[1]))
    return _pixels(images), labels


# --- CIFAR-10: python pickle batches --------------------------------------------------------------

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and NumPy arrays, and nothing else: a CIFAR batch
    needs no other class, and refusing the rest means a tampered file cannot run code."""

    _RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's array-rebuilding function
    ALLOWED = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
               ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
               ("_codecs", "encode"): codecs.encode}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (a CIFAR batch "
                                         "holds only arrays, lists and strings)")
        return self.ALLOWED[(module, name)]


def read_cifar_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: ``uint8`` images ``(n, 3, 32, 32)`` and labels ``(n,)``.

    The file is a pickled dict with ``b"data"`` (``n x 3072`` uint8: 1024 red, 1024 green, then
    1024 blue pixels, each 32 x 32 row-major) and ``b"labels"`` (a list of ints), written by
    Python 2, hence ``encoding="bytes"``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError) as err:
        raise DataError(f"{path} is truncated or not a CIFAR-10 python batch ({err}). Download "
                        "it again.") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} holds a {type(batch).__name__}, not a CIFAR-10 batch dict")
    get = lambda key: batch.get(key.encode(), batch.get(key))  # noqa: E731  (bytes or str keys)
    data, labels = get("data"), get("labels")
    if data is None or labels is None:
        raise DataError(f"{path} has keys {sorted(map(str, batch))}, not the CIFAR-10 keys "
                        "b'data' and b'labels'")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR_PIXELS:
        raise DataError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 "
                        f"(n, {CIFAR_PIXELS})")
    return data.reshape(-1, 3, 32, 32), _labels(labels, len(data), str(path))


def load_cifar10(data_dir, split: str) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``split`` from the python batches in ``data_dir`` (or its
    ``cifar-10-batches-py``)."""
    dirs = _find_dir(data_dir, "cifar-10-batches-py")
    locate = lambda name: next((d / name for d in dirs if (d / name).is_file()), None)  # noqa
    all_names = [n for names in CIFAR_FILES.values() for n in names]
    if not any(locate(n) for n in all_names):
        raise DataError(f"no CIFAR-10 python batches in {data_dir} (found: {_listing(dirs)}); "
                        f"expected {', '.join(all_names)} (from cifar-10-python.tar.gz)")
    missing = [n for n in CIFAR_FILES[split] if locate(n) is None]
    if missing:
        raise DataError(f"{data_dir} lacks {', '.join(missing)}, needed for the CIFAR-10 "
                        f"{split} split")
    parts = [read_cifar_batch(locate(n)) for n in CIFAR_FILES[split]]
    images = np.concatenate([p[0] for p in parts])
    return _pixels(images), np.concatenate([p[1] for p in parts])


# --- digits (shipped) -----------------------------------------------------------------------------

def digits_split_indices(split: str, n: int = 1797) -> np.ndarray:
    """Indices of the fixed digits split: a ``RandomState(0)`` permutation, last 360 = test."""
    order = np.random.RandomState(0).permutation(n)
    return order[:n - DIGITS_TEST_SIZE] if split == "train" else order[n - DIGITS_TEST_SIZE:]


def load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8 x 8 digits (pixel values 0..16, scaled to [0, 1]), read from
    ``models/assets/digits.npz``: ``images`` ``(1797, 8, 8)`` and ``labels`` ``(1797,)`` as
    uint8, written once with ``np.savez_compressed(path, images=d.images.astype(np.uint8),
    labels=d.target.astype(np.uint8))`` for ``d = sklearn.datasets.load_digits()`` (scikit-learn
    1.9.1; its pixels are whole numbers, so the file holds them exactly)."""
    with np.load(DIGITS_FILE, allow_pickle=False) as f:
        all_images, all_labels = f["images"], f["labels"]
    idx = digits_split_indices(split, len(all_images))
    images = (all_images[idx] / 16.0).astype(np.float32)
    return images, _labels(all_labels[idx], len(idx), str(DIGITS_FILE))


# --- download (optional packages, network) --------------------------------------------------------

def _optional(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _to_layout(raw: np.ndarray, name: str) -> np.ndarray:
    """Channels-last ``uint8`` images from a hub -> this module's layout, scaled to [0, 1]."""
    raw = np.asarray(raw, np.uint8)
    if name == "mnist":
        return _pixels(raw.reshape(len(raw), 28, 28))
    return _pixels(raw.reshape(len(raw), 32, 32, 3).transpose(0, 3, 1, 2))


def download(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``name``/``split`` through Hugging Face ``datasets`` or ``tensorflow-datasets`` (network)."""
    hf, tfds = _optional("datasets"), _optional("tensorflow_datasets")
    if hf is not None:
        repo, column = HF_NAMES[name]
        log.info("loading %s %s through Hugging Face datasets (%s)", name, split, repo)
        ds = hf.load_dataset(repo, split=split)
        images = np.stack([np.asarray(im) for im in ds[column]])  # PIL images, channels last
        return _to_layout(images, name), _labels(list(ds["label"]), len(images), repo)
    if tfds is not None:
        log.info("loading %s %s through tensorflow-datasets", name, split)
        images, labels = tfds.as_numpy(tfds.load(name, split=split, batch_size=-1,
                                                 as_supervised=True))
        return _to_layout(images, name), _labels(labels, len(images), f"tfds {name}")
    files = (", ".join(s + "[.gz]" for pair in MNIST_FILES.values() for s in pair)
             if name == "mnist" else "the python batches of cifar-10-python.tar.gz")
    raise DataError(f"{name} needs a local copy or a downloader: pass --data_dir=DIR holding "
                    f"{files}, or pip install datasets (or tensorflow-datasets) to download it")
