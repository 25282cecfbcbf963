"""Running the command-line scripts as a user does, and comparing what they leave on disk.

Helpers for the bad-input table and the kill-and-resume tests: :func:`run_script` runs one of
``scripts/`` in a fresh interpreter, :func:`snapshot` fingerprints every file under a directory
(to show that a failing command changed nothing), and :func:`assert_identical_graphs` compares
two built graphs bit for bit.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BASIS_FIELDS = ("C", "C_pinv", "W", "W_pinv", "Lambda", "gram_eigenvalues", "V")


def script_command(name: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / name), *args]


# Sets RLIMIT_FSIZE, then becomes the command (argv[2:]). Python ignores SIGXFSZ, so a write past
# the limit fails with EFBIG, much as a full disk fails with ENOSPC. (A preexec_fn would do the
# same, but runs Python between fork and exec in a multithreaded parent, which may deadlock.)
_LIMIT_FILE_SIZE = ("import os, resource, sys; n = int(sys.argv[1]); "
                    "resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); "
                    "os.execv(sys.argv[2], sys.argv[2:])")


def run_script(name: str, *args: str, timeout: float = 300, max_file_bytes: int | None = None):
    """``scripts/<name> args`` to completion, optionally unable to write files larger than
    ``max_file_bytes``; a ``CompletedProcess`` with text output."""
    command = script_command(name, *args)
    if max_file_bytes is not None:
        command = [sys.executable, "-c", _LIMIT_FILE_SIZE, str(max_file_bytes), *command]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def snapshot(directory: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``directory`` (directories as ``"dir"``)."""
    out = {}
    for path in sorted(Path(directory).rglob("*")):
        key = str(path.relative_to(directory))
        out[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def assert_identical_graphs(a, b) -> None:
    """Same node layers, bases, edges, means and Gram matrices, bit for bit."""
    assert a.node_layers == b.node_layers
    assert a.bases.keys() == b.bases.keys() and a.edges.keys() == b.edges.keys()
    for name in a.bases:
        for field in BASIS_FIELDS:
            x, y = getattr(a.bases[name], field), getattr(b.bases[name], field)
            assert (x is None) == (y is None), (name, field)
            assert x is None or np.array_equal(x, y), (name, field)
    for pair in a.edges:
        assert np.array_equal(a.edges[pair], b.edges[pair]), pair
    assert a.grams.keys() == b.grams.keys()
    for name in a.grams:
        assert np.array_equal(a.means[name], b.means[name]), name
        assert np.array_equal(a.grams[name], b.grams[name]), name
