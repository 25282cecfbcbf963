"""Weight files as ``.npz``: parameter name -> array, plus a JSON metadata entry.

The names are those of the authors' checkpoints (TransformerLens names for transformers,
``layers.i.W``/``layers.i.b`` for MLPs), so their files and ours load through the same code.
Every problem with a file is a :class:`CheckpointError` that says what is wrong and what to do.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from libjax.errors import CheckpointError
from libjax.storage import files

META_KEY = "__meta__"
# TransformerLens buffers stored beside the weights (causal mask, -inf fill value, rotary tables):
# derived from the architecture, never loaded.
BUFFER_SUFFIXES = (".IGNORE", ".mask", ".rotary_sin", ".rotary_cos")


def load_npz(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read all arrays of an ``.npz`` checkpoint and its metadata (``{}`` if it has none)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass --checkpoint=PATH to a "
                              "'.npz' weight file")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; expected a '.npz' weight file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an archive of named weights")
        with loaded as f:
            arrays = {k: f[k] for k in f.files if not k.endswith(BUFFER_SUFFIXES)}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise CheckpointError(f"checkpoint {path} is truncated or not a valid '.npz' file "
                              f"({err}); re-download or re-train it") from None
    try:
        meta = json.loads(str(arrays.pop(META_KEY))) if META_KEY in arrays else {}
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint {path}: its metadata entry {META_KEY!r} is not valid "
                              f"JSON ({err}); the file is corrupt") from None
    for name, value in arrays.items():
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise CheckpointError(f"checkpoint {path}: weight {name!r} contains NaN or inf; the "
                                  "model is broken (diverged training?) and cannot be analysed")
    return arrays, meta


def shape_of(weights: dict, name: str, path, ndim: int) -> tuple[int, ...]:
    if name not in weights:
        raise CheckpointError(f"checkpoint {path} has no weight {name!r}; found "
                              f"{sorted(weights)[:8]}... Is it a checkpoint of this model?")
    shape = weights[name].shape
    if len(shape) != ndim:
        raise CheckpointError(f"checkpoint {path}: {name!r} has shape {shape}, "
                              f"expected {ndim} dims")
    return shape


def check_shapes(weights: dict, expected: dict[str, tuple[int, ...]], path,
                 optional: tuple[str, ...] = ()) -> None:
    """Every expected weight present with its shape; no unknown floating-point weights."""
    missing = [k for k in expected if k not in weights and k not in optional]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks weights {missing}; it does not fit this "
                              "model")
    wrong = [f"{k}: {weights[k].shape} (expected {expected[k]})" for k in expected
             if k in weights and tuple(weights[k].shape) != tuple(expected[k])]
    if wrong:
        raise CheckpointError(f"checkpoint {path} has weights of the wrong shape: "
                              + "; ".join(wrong))
    unknown = [k for k in weights if k not in expected]
    if unknown:
        raise CheckpointError(f"checkpoint {path} has weights this model does not use: {unknown}")


def check_writable(path: str | os.PathLike) -> None:
    """Fail before any work if a checkpoint cannot be written to ``path`` (a directory there, a
    parent that is a file or read-only), by creating and removing a file beside it."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"cannot write the checkpoint to {path}: it is a directory; give a "
                              "file name ending in .npz")
    existing = next(p for p in path.parents if p.exists())
    if not existing.is_dir():
        raise CheckpointError(f"cannot write the checkpoint to {path}: {existing} is a file, not "
                              "a directory; choose another --out")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise CheckpointError(f"cannot write the checkpoint to {path} ({err.strerror}); choose "
                              "another --out") from None


def save_npz(path: str | os.PathLike, weights: dict, **meta) -> None:
    """Write ``weights`` and ``meta`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(v) for k, v in weights.items()}
    arrays[META_KEY] = np.asarray(json.dumps(meta))
    files.write_atomic(path, lambda f: np.savez(f, **arrays))
