"""Small atomic file writes shared by the store, the mid-stage saves and the analyses."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

TMP_SUFFIX = ".tmp"  # the temporary file of :func:`write_atomic`, beside its target


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(file)`` atomically: into a temporary file beside it, synced,
    then renamed over it, so a crash leaves the old file or the new one, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, content: dict) -> None:
    write_atomic(path, lambda f: f.write(json.dumps(content, indent=1).encode()))


def read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)
