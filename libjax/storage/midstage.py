"""Mid-stage saves: a running pass's accumulator and position, so a stopped stage continues.

One file per stage, ``<out_dir>/partial/<stage>.npz``: the accumulator's leaves, bit for bit,
and a record of what they belong to: the build (a digest of ``build.json``), the stage, the
pass's layout (batch size, batch count, devices, processes, platform: what fixes the summation
order) and the number of batches done. Each save replaces the file atomically (written beside
it, synced, renamed), so a crash mid-save leaves the previous save. A save is resumed only if
everything in its record matches the resuming pass; the store removes it once the stage is
stored. Only the writer process writes; every process reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import zipfile
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np

from libjax.storage.files import TMP_SUFFIX, write_atomic

log = logging.getLogger("libjax")

DIRECTORY = "partial"
_META = "record"


def record_digest(build_info: dict) -> str:
    """The digest of a build record that ties a save to its build."""
    return hashlib.sha256(json.dumps(build_info, sort_keys=True).encode()).hexdigest()[:16]


class MidstageSave:
    """The mid-stage save of one stage of one build."""

    def __init__(self, out_dir: Path, stage: str, build_digest: str, writer: bool = True):
        self.path = Path(out_dir) / DIRECTORY / f"{stage}.npz"
        self.stage, self.build, self.writer = stage, build_digest, writer

    def _record(self, layout: dict, done: int) -> dict:
        return {"build": self.build, "stage": self.stage, "layout": layout, "done": done}

    def save(self, acc, layout: dict, done: int) -> None:
        """Save ``acc`` (a pytree of arrays on the host) after ``done`` batches (writer only);
        raises ``OSError`` if the file cannot be written, leaving the previous save."""
        if not self.writer:
            return
        leaves = {f"leaf{i}": np.asarray(a) for i, a in enumerate(jax.tree.leaves(acc))}
        record = np.array(json.dumps(self._record(layout, done)))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, lambda f: np.savez(f, **{_META: record}, **leaves))

    def load(self, like, layout: dict) -> Optional[tuple[int, Any]]:
        """``(batches done, accumulator)`` of the save if it belongs to this build, stage and
        layout and its arrays have the shapes of ``like`` (the pass's initial accumulator);
        else None, with a warning saying why the stage starts over."""
        if not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as f:
                record = json.loads(str(f[_META]))
                leaves = [f[f"leaf{i}"] for i in range(len(f.files) - 1)]
        except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
            # EOFError: an empty file; TypeError: a single array; BadZipFile: also a member whose
            # CRC fails
            return self._ignore(f"it cannot be read ({type(err).__name__}: {err or 'empty'})")
        if not isinstance(record, dict):
            return self._ignore(f"its record is not one ({str(record)[:40]!r})")
        wanted = self._record(layout, record.get("done"))
        if record.get("build") != self.build:
            return self._ignore("it belongs to another build")
        before = record.get("layout") if isinstance(record.get("layout"), dict) else {}
        changed = sorted(k for k in set(layout) | set(before) if before.get(k) != layout.get(k))
        if changed or record != wanted:
            saved = ", ".join(f"{k} {before.get(k)} (now {layout.get(k)})" for k in changed)
            return self._ignore(f"it was made with another layout: {saved or record}")
        structure = jax.tree.structure(like)
        shapes = [np.shape(a) for a in jax.tree.leaves(like)]
        if len(leaves) != len(shapes) or any(a.shape != s for a, s in zip(leaves, shapes)):
            return self._ignore("its arrays do not have the shapes of this pass's")
        return record["done"], jax.tree.unflatten(structure, leaves)

    def _ignore(self, why: str) -> None:
        log.warning("ignoring the progress saved for stage %r in %s: %s; the stage starts over",
                    self.stage, self.path, why)
        return None

    def remove(self) -> None:
        """Delete the save (writer only), and its directory once no save is left."""
        if not self.writer:
            return
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:  # absent, or other stages' saves remain
            pass


def remove_all(out_dir: Path) -> None:
    """Delete every mid-stage save in ``out_dir`` (the build is being replaced)."""
    shutil.rmtree(Path(out_dir) / DIRECTORY, ignore_errors=True)


def remove_unfinished(out_dir: Path) -> None:
    """Delete the temporary files of saves that a crash interrupted."""
    for path in (Path(out_dir) / DIRECTORY).glob(f"*{TMP_SUFFIX}"):
        path.unlink(missing_ok=True)
