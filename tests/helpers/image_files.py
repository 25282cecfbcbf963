"""Writers of small MNIST and CIFAR-10 files in exactly the formats of the real downloads.

MNIST idx: big-endian int32 magic (2051 images / 2049 labels), big-endian int32 sizes, then
unsigned bytes. CIFAR-10 python batches: a dict pickled by Python 2 with NumPy 1.x (protocol 2,
byte-string keys ``data``/``labels``/``batch_label``/``filenames``, the array rebuilt through
``numpy.core.multiarray._reconstruct``). The pickle is written opcode by opcode, because Python 3's
pickler would write other opcodes (unicode strings, ``_codecs.encode``, ``numpy._core``).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

MNIST_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_mnist(directory: Path, split: str, images: np.ndarray, labels: np.ndarray,
                gz: bool = False) -> list[Path]:
    """``images`` ``(n, 28, 28)`` uint8 and ``labels`` ``(n,)`` as the split's two idx files."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, array, magic in zip(MNIST_NAMES[split], (images, labels), (2051, 2049)):
        data = idx_bytes(array, magic)
        path = directory / (name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(data) if gz else data)
        paths.append(path)
    return paths


def random_mnist(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-like uint8 images: random strokes in the central 20 x 20, a blank 4-pixel border
    (as in MNIST, whose border pixels are always 0), and labels 0..9."""
    images = np.zeros((n, 28, 28), np.uint8)
    centre = rng.integers(0, 256, (n, 20, 20)) * (rng.random((n, 20, 20)) < 0.3)
    images[:, 4:24, 4:24] = centre
    return images, rng.integers(0, 10, n).astype(np.uint8)


# --- CIFAR-10 pickles, opcode by opcode (protocol 2, as Python 2's cPickle wrote them) ------------

def _str(b: bytes) -> bytes:
    """A Python 2 ``str``: SHORT_BINSTRING below 256 bytes, else BINSTRING."""
    if len(b) < 256:
        return b"U" + bytes([len(b)]) + b
    return b"T" + struct.pack("<i", len(b)) + b


def _int(i: int) -> bytes:
    return b"K" + bytes([i]) if 0 <= i < 256 else b"J" + struct.pack("<i", i)


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _uint8_array(a: np.ndarray) -> bytes:
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), 'b')`` then ``__setstate__``."""
    shape = b"(" + b"".join(_int(d) for d in a.shape) + b"t"
    dtype = (_global("numpy", "dtype") + _str(b"u1") + _int(0) + _int(1) + b"\x87R"
             + b"(" + _int(3) + _str(b"|") + b"NNN" + _int(-1) + _int(-1) + _int(0) + b"tb")
    return (_global("numpy.core.multiarray", "_reconstruct") + _global("numpy", "ndarray")
            + _int(0) + b"\x85" + _str(b"b") + b"\x87R"
            + b"(" + _int(1) + shape + dtype + b"\x89" + _str(a.tobytes()) + b"tb")


def cifar_batch_bytes(data: np.ndarray, labels, batch_label: str = "training batch 1 of 5"
                      ) -> bytes:
    """A CIFAR-10 python batch: ``data`` ``(n, 3072)`` uint8 (R, G, B planes of 32 x 32)."""
    items = [(b"batch_label", _str(batch_label.encode())),
             (b"labels", b"](" + b"".join(_int(int(v)) for v in labels) + b"e"),
             (b"data", _uint8_array(np.ascontiguousarray(data, np.uint8))),
             (b"filenames", b"](" + b"".join(_str(f"img_{i}.png".encode())
                                             for i in range(len(labels))) + b"e")]
    body = b"".join(_str(k) + v for k, v in items)
    return b"\x80\x02}(" + body + b"u."


def write_cifar(directory: Path, n_per_batch: int, rng: np.random.Generator,
                names=tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)) -> dict:
    """Random batches under ``names``; returns ``{name: (data (n, 3072) uint8, labels)}``."""
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in names:
        data = rng.integers(0, 256, (n_per_batch, 3072)).astype(np.uint8)
        labels = rng.integers(0, 10, n_per_batch)
        (directory / name).write_bytes(cifar_batch_bytes(data, labels, name))
        written[name] = (data, labels)
    return written
