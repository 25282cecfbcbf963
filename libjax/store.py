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
from jax.experimental import multihost_utils

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


def _checkpointer() -> ocp.Checkpointer:
    """An orbax checkpointer private to this process (no cross-process barriers): stages are
    written by one process and read by any."""
    here = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                              active_processes={jax.process_index()})
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=here),
                            multiprocessing_options=here)


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


class Store:
    """Stage checkpoints of one build in ``out_dir`` (or in memory when ``out_dir`` is None).

    Only the ``writer`` process (process 0 of a multi-host run) touches the directory; every
    process resumes from the stages that were complete when the store was opened.
    """

    def __init__(self, out_dir: str | os.PathLike | None, build_info: dict,
                 overwrite: bool = False, writer: bool = True):
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.writer = writer
        self._memory: dict[str, Any] = {}
        self._done: set[str] = set()
        if self.out_dir is not None:
            if writer:
                self._open(build_info, overwrite)
            _barrier("libjax: output directory ready")
            stages = self.out_dir / "stages"
            self._done = {p.name for p in stages.iterdir() if (p / "commit_success.txt").exists()}

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
        wanted = json.loads(json.dumps(build_info))
        if build_file.exists():
            previous = read_json(build_file)
            if previous != wanted:
                if not overwrite:
                    changed = sorted(k for k in set(previous) | set(wanted)
                                     if previous.get(k) != wanted.get(k))
                    raise StoreError(
                        f"{self.out_dir} holds a different build (differs in: {', '.join(changed)}); "
                        "use another --out_dir, or --overwrite to replace it")
                log.info("overwriting the previous build in %s", self.out_dir)
                for name in (BUILD_FILE, SUMMARY_FILE):
                    (self.out_dir / name).unlink(missing_ok=True)
                shutil.rmtree(self.out_dir / "stages", ignore_errors=True)
            else:
                log.info("resuming the build in %s", self.out_dir)
        stages = self.out_dir / "stages"
        stages.mkdir(exist_ok=True)
        for partial in stages.iterdir():  # left by a crash in the middle of a write
            if not (partial / "commit_success.txt").exists():
                shutil.rmtree(partial, ignore_errors=True)
        write_json_atomic(build_file, build_info)

    def _path(self, stage: str) -> Path:
        return self.out_dir / "stages" / stage

    def has(self, stage: str) -> bool:
        return stage in (self._memory if self.out_dir is None else self._done)

    def get(self, stage: str):
        if self.out_dir is None:
            return self._memory[stage]
        return _checkpointer().restore(self._path(stage))

    def put(self, stage: str, tree) -> None:
        """Save a finished stage (a pytree of arrays); atomic: a crash leaves no partial stage."""
        tree = _to_numpy(tree)
        if self.out_dir is None:
            self._memory[stage] = tree
            return
        if not self.writer:
            return
        path = self._path(stage)
        try:
            _checkpointer().save(path, tree, force=True)
        except OSError as err:
            raise StoreError(f"could not write stage {stage!r} to {path}: {err}; check free disk "
                             "space and permissions, then rerun the same command to resume") from None

    def finish(self, summary: dict) -> None:
        if self.out_dir is not None and self.writer:
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
    return _checkpointer().restore(path / "stages" / stage)
