"""A build's output directory: one orbax checkpoint per finished stage, written atomically.

Layout of ``out_dir``::

    build.json          what is being built (config, model, data fingerprint); written first
    stages/<stage>/     orbax checkpoint of one finished stage (stats, a basis, an edge matrix)
    summary.json        written last, only when every stage is done: marks the build complete

A rerun on the same directory with the same ``build.json`` resumes: finished stages are read back
instead of recomputed. A different ``build.json`` is refused unless ``overwrite`` is set.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from libjax.errors import StoreError

log = logging.getLogger("libjax")

BUILD_FILE = "build.json"
SUMMARY_FILE = "summary.json"


def write_json_atomic(path: Path, content: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(content, f, indent=1, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


class Store:
    """Stage checkpoints of one build in ``out_dir`` (or in memory when ``out_dir`` is None)."""

    def __init__(self, out_dir: str | os.PathLike | None, build_info: dict,
                 overwrite: bool = False):
        self.out_dir = None if out_dir is None else Path(out_dir)
        self._memory: dict[str, Any] = {}
        if self.out_dir is not None:
            self._open(build_info, overwrite)

    def _open(self, build_info: dict, overwrite: bool) -> None:
        build_file = self.out_dir / BUILD_FILE
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create output directory {self.out_dir}: {err.strerror}; "
                             "choose another --out_dir") from None
        if not os.access(self.out_dir, os.W_OK):
            raise StoreError(f"output directory {self.out_dir} is not writable; choose another "
                             "--out_dir")
        if build_file.exists():
            previous = read_json(build_file)
            if previous != json.loads(json.dumps(build_info)):
                if not overwrite:
                    changed = sorted(k for k in set(previous) | set(build_info)
                                     if previous.get(k) != json.loads(json.dumps(build_info.get(k))))
                    raise StoreError(
                        f"{self.out_dir} holds a different build (differs in: {', '.join(changed)}); "
                        "use another --out_dir, or --overwrite to replace it")
                log.info("overwriting the previous build in %s", self.out_dir)
                for name in (BUILD_FILE, SUMMARY_FILE):
                    (self.out_dir / name).unlink(missing_ok=True)
                shutil.rmtree(self.out_dir / "stages", ignore_errors=True)
            else:
                log.info("resuming the build in %s", self.out_dir)
        (self.out_dir / "stages").mkdir(exist_ok=True)
        write_json_atomic(build_file, build_info)

    def _path(self, stage: str) -> Path:
        return self.out_dir / "stages" / stage

    def has(self, stage: str) -> bool:
        if self.out_dir is None:
            return stage in self._memory
        return (self._path(stage) / "commit_success.txt").exists()

    def get(self, stage: str):
        if self.out_dir is None:
            return self._memory[stage]
        return ocp.PyTreeCheckpointer().restore(self._path(stage))

    def put(self, stage: str, tree) -> None:
        """Save a finished stage (a pytree of arrays); atomic: a crash leaves no partial stage."""
        tree = _to_numpy(tree)
        if self.out_dir is None:
            self._memory[stage] = tree
            return
        path = self._path(stage)
        shutil.rmtree(path, ignore_errors=True)  # a partial write from an earlier crash
        try:
            ocp.PyTreeCheckpointer().save(path, tree)
        except OSError as err:
            raise StoreError(f"could not write stage {stage!r} to {path}: {err}; check free disk "
                             "space and permissions, then rerun the same command to resume") from None

    def finish(self, summary: dict) -> None:
        if self.out_dir is not None:
            write_json_atomic(self.out_dir / SUMMARY_FILE, summary)


def _to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


def open_complete(out_dir: str | os.PathLike) -> tuple[Path, dict, dict]:
    """``(path, build_info, summary)`` of a finished build; refuses incomplete ones."""
    path = Path(out_dir)
    if not (path / BUILD_FILE).exists():
        raise StoreError(f"{path} holds no libjax build (no {BUILD_FILE}); point at the --out_dir "
                         "of compute_basis.py")
    if not (path / SUMMARY_FILE).exists():
        raise StoreError(f"the build in {path} is incomplete (interrupted?); rerun the same "
                         "compute_basis.py command with this --out_dir to finish it")
    return path, read_json(path / BUILD_FILE), read_json(path / SUMMARY_FILE)


def read_stage(path: Path, stage: str):
    return ocp.PyTreeCheckpointer().restore(path / "stages" / stage)
