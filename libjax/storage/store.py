"""A build's output directory: one orbax checkpoint per finished stage, written atomically.

Layout of ``out_dir``::

    build.json          what is being built (config, model, data fingerprint); written first
    stages/<stage>/     orbax checkpoint of one finished stage (stats, a basis, an edge matrix)
    checksums/<stage>.json  the SHA-256 of each of the stage's arrays, written before the stage
                        and checked whenever it is read back (:func:`read_stage`)
    .lock               locked (``fcntl.flock``) by the process writing the build, which records
                        its PID there: a second process is refused (:class:`DirectoryLock`)
    partial/<stage>.npz the progress of the stage being computed (:mod:`libjax.storage.midstage`),
                        removed when the stage is stored
    summary.json        written last, only when every stage is done: marks the build complete

A rerun on the same directory with the same ``build.json`` resumes: finished stages are read back
instead of recomputed. A different ``build.json`` is refused unless ``overwrite`` is set.

A stage is finished when its directory holds orbax's ``commit_success.txt``; orbax writes into
``<stage>.orbax-checkpoint-tmp`` and renames it when done, so a crash leaves either the finished
stage or a partial temporary directory, which the next open removes. Failed writes (a full disk,
a file-size limit, a read-only directory) end in a :class:`StoreError`, never a partial stage. A
stage whose arrays no longer match their checksums, or a damaged record, is a :class:`StoreError`
that names the file and what to do, never numbers; stages stored before checksums existed are read
unverified (a warning says so).
Storing a stage is a stage boundary: a stop requested there (:mod:`libjax.runtime.preemption`)
ends the build with :class:`~libjax.runtime.preemption.Preempted`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from libjax.errors import StoreError
from libjax.runtime import preemption
from libjax.storage import midstage
from libjax.storage.files import read_json, write_json_atomic

log = logging.getLogger("libjax")

_ORBAX = "orbax.checkpoint"  # imported on first use (_import_orbax_meanwhile)
BUILD_FILE = "build.json"
SUMMARY_FILE = "summary.json"
COMMIT_FILE = "commit_success.txt"  # orbax's marker of a finished checkpoint
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's temporary directory of a checkpoint being written
RESERVATION = ".reserve-"  # prefix of the temporary file that checks free space before a write
CHECKSUMS = "checksums"  # <stage>.json: the SHA-256 of each array of a stage
LOCK_FILE = ".lock"  # held by the process that writes the build
_DAMAGED = ("rerun the same compute_basis.py command with --overwrite to rebuild it, or delete {} "
            "and rerun the same command without --overwrite to recompute just that")


def _read_record(path: Path) -> dict:
    """``build.json`` or ``summary.json``; an unreadable one, or one that is not a JSON object,
    is a :class:`StoreError`."""
    try:
        record = read_json(path)
    except (OSError, ValueError) as err:
        raise StoreError(f"{path} is unreadable ({err}); the directory is damaged: rerun with "
                         "--overwrite to rebuild it, or use another --out_dir") from None
    if not isinstance(record, dict):
        raise StoreError(f"{path} is damaged (it holds {str(record)[:40]!r}, not a record); rerun "
                         "with --overwrite to rebuild it, or use another --out_dir")
    return record


def _summary_problem(summ: dict) -> str | None:
    """What is wrong with the shape of a ``summary.json`` record, or None."""
    stages, edges, layers = summ.get("stages"), summ.get("edges", {}), summ.get("layers", {})
    if not (isinstance(stages, list) and all(isinstance(s, str) for s in stages)):
        return "it lists no stages"
    if not (isinstance(edges, dict) and all(isinstance(e, dict) for e in edges.values())
            and isinstance(layers, dict) and all(isinstance(e, dict) for e in layers.values())):
        return "its edges or layers are not records"
    if not isinstance(summ.get("timings_s", {}), dict):
        return "its timings are not a record"
    return None


def _read_summary(out_dir: Path) -> dict:
    """``summary.json`` of ``out_dir``; a damaged one is a :class:`StoreError` saying how to
    rewrite it (finished stages are read back, not recomputed)."""
    path = out_dir / SUMMARY_FILE
    fix = ("rerun the same compute_basis.py command with this --out_dir to rewrite it (finished "
           "stages are read back, not recomputed)")
    try:
        summ = read_json(path)
    except (OSError, ValueError) as err:
        raise StoreError(f"the build's summary {path} is unreadable ({err}); {fix}") from None
    problem = "it is not a record" if not isinstance(summ, dict) else _summary_problem(summ)
    if problem:
        raise StoreError(f"the build's summary {path} is damaged ({problem}); {fix}")
    return summ


_BUILD_KEYS = {"node_layers": list, "orig_dims": list, "stat_layers": list, "config": dict}


def _read_build_record(out_dir: Path) -> dict:
    """``build.json`` of a build to read back, with the fields reading it needs."""
    info = _read_record(out_dir / BUILD_FILE)
    bad = [k for k, kind in _BUILD_KEYS.items() if not isinstance(info.get(k), kind)]
    if bad:
        raise StoreError(f"{out_dir / BUILD_FILE} is damaged (no valid {', '.join(bad)}); rerun "
                         "the compute_basis.py command with --overwrite to rebuild it")
    return info


_LOCK_TRIES = 5  # 0.2 s in all


def _refuse(directory: Path, holder: bytes):
    pid = holder.decode(errors="replace").strip()
    who = f"process {pid}" if pid.isdigit() else "another process"
    raise StoreError(f"directory {directory} is in use by {who} (a build is writing it); wait for "
                     "it to finish, or choose another --out_dir") from None


def refuse_if_in_use(out_dir: str | os.PathLike) -> None:
    """Refuse at once, before a model or data is loaded, an ``out_dir`` that another process is
    building in, or one of the ``layer_<L>`` builds inside it (writes nothing)."""
    root = Path(out_dir).resolve()
    if root.is_dir():
        for directory in [root, *sorted(root.glob("layer_*"))]:
            DirectoryLock.refuse_if_held(directory)


class DirectoryLock:
    """An exclusive ``fcntl.flock`` on ``<out_dir>/.lock``, held by the process that writes a
    build, with its PID in the file. The kernel releases it when the process ends, however it
    ends (a crash or ``kill -9`` leaves no lock that blocks); a process that finds it held is
    refused at once with the holder's PID. Re-entrant within a process (several stores of one
    directory share the lock); on release the PID is cleared."""

    _held: dict[Path, list] = {}  # directory -> [file descriptor, holders in this process]

    @classmethod
    def acquire(cls, directory: Path) -> None:
        if directory in cls._held:
            cls._held[directory][1] += 1
            return
        path = directory / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StoreError(f"cannot create the lock file {path}: {err.strerror}; check the "
                             "permissions of the output directory, or choose another --out_dir") \
                from None
        for attempt in range(_LOCK_TRIES):  # a probe (:meth:`refuse_if_held`) holds it briefly
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise StoreError(f"cannot lock {path}: {err.strerror}; choose an --out_dir "
                                     "on a local filesystem") from None
                if attempt == _LOCK_TRIES - 1:
                    holder = os.pread(fd, 32, 0)
                    os.close(fd)
                    _refuse(directory, holder)
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        cls._held[directory] = [fd, 1]

    @classmethod
    def refuse_if_held(cls, directory: Path) -> None:
        """Refuse now if another process holds ``directory``'s lock; writes nothing (a probe
        with a shared lock, released at once)."""
        if directory in cls._held:
            return
        try:
            fd = os.open(directory / LOCK_FILE, os.O_RDONLY)
        except OSError:  # no lock file (nobody has built here) or unreadable: the build says so
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            _refuse(directory, os.pread(fd, 32, 0))
        finally:
            os.close(fd)  # releases the probe's lock

    @classmethod
    def release(cls, directory: Path) -> None:
        held = cls._held.get(directory)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del cls._held[directory]
            try:
                os.ftruncate(held[0], 0)
            except OSError:  # the directory went away meanwhile: the lock ends all the same
                pass
            os.close(held[0])  # closing the last descriptor releases the flock


def _is_partial(stage_dir: Path) -> bool:
    """A stage directory that a crash left behind: orbax's temporary directory, or one without
    orbax's commit marker."""
    return TMP_SUFFIX in stage_dir.name or not (stage_dir / COMMIT_FILE).exists()


def _reserve(directory: Path, nbytes: int) -> None:
    """Raise ``OSError`` now if ``nbytes`` cannot be written in ``directory`` (full disk, quota,
    file-size limit). orbax reports a failed write from its background threads, with
    tracebacks, after the fact; reserving the space first turns the common case into one clean
    error. Where there is no ``posix_fallocate`` (macOS) or the filesystem refuses it, nothing
    is checked."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=RESERVATION)
    try:
        os.posix_fallocate(fd, 0, max(nbytes, 1))
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    finally:
        os.close(fd)
        os.unlink(tmp)


def _import_orbax_meanwhile() -> None:
    """Import orbax in a thread while the build starts: its import time then overlaps
    the first step's compile (which releases the GIL) instead of preceding it. The first store
    or read waits for the import (Python's module lock)."""
    if _ORBAX not in sys.modules:
        threading.Thread(target=importlib.import_module, args=(_ORBAX,), daemon=True,
                         name="libjax-import-orbax").start()


def _checkpointer():
    """An orbax checkpointer private to this process (no cross-process barriers): stages are
    written by one process and read by any. One file set per array rather than an OCDBT database:
    a stage holds a few arrays, and merging the database cost more than writing them (BUILD_NOTES
    "Cold start"); it reads stages written either way."""
    ocp = importlib.import_module(_ORBAX)
    here = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                              active_processes={jax.process_index()})
    handler = ocp.PyTreeCheckpointHandler(multiprocessing_options=here, use_ocdbt=False)
    return ocp.Checkpointer(handler, multiprocessing_options=here)


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
        # orbax needs absolute paths
        self.out_dir = None if out_dir is None else Path(out_dir).resolve()
        self.writer = writer
        self._record = midstage.record_digest(build_info)
        self._memory: dict[str, Any] = {}
        self._done: set[str] = set()
        self._computed = False  # whether this run stored a stage (then summary.json is rewritten)
        self._locked = False
        if self.out_dir is not None:
            _import_orbax_meanwhile()
            if writer:
                try:
                    self._open(build_info, overwrite)
                except BaseException:
                    self.close()
                    raise
            _barrier("libjax: output directory ready")
            self._done = {p.name for p in self._stages.iterdir() if not _is_partial(p)}

    def close(self) -> None:
        """Release the directory's lock (the build is over); idempotent."""
        if self._locked:
            self._locked = False
            DirectoryLock.release(self.out_dir)

    @property
    def _stages(self) -> Path:
        return self.out_dir / "stages"

    def _open(self, build_info: dict, overwrite: bool) -> None:
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise StoreError(f"output directory {self.out_dir} is a file; choose another "
                             "--out_dir")
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create output directory {self.out_dir}: {err.strerror}; "
                             "choose another --out_dir") from None
        if not os.access(self.out_dir, os.W_OK):
            raise StoreError(f"output directory {self.out_dir} is not writable; choose another "
                             "--out_dir")
        build_file = self.out_dir / BUILD_FILE
        # A lock file marks libjax's directory even before build.json exists (a build another
        # process has just begun: the lock below then says it is in use, not foreign).
        if (not build_file.exists() and not (self.out_dir / LOCK_FILE).exists()
                and any(self.out_dir.iterdir())):
            raise StoreError(f"output directory {self.out_dir} is not empty and holds no libjax "
                             "build; libjax writes only into a new or empty directory or its own "
                             "build: choose another --out_dir")
        DirectoryLock.acquire(self.out_dir)  # no other process writes here until close()
        self._locked = True
        wanted = json.loads(json.dumps(build_info))
        exists, previous = build_file.exists(), None
        if exists:
            try:
                previous = _read_record(build_file)
            except StoreError:
                if not overwrite:
                    raise
        resume = exists and previous == wanted
        if resume:
            log.info("resuming the build in %s", self.out_dir)
        elif exists and not overwrite:
            changed = sorted(k for k in set(previous) | set(wanted)
                             if previous.get(k) != wanted.get(k))
            raise StoreError(
                f"{self.out_dir} holds a different build (differs in: {', '.join(changed)}); "
                "use another --out_dir, or --overwrite to replace it")
        try:
            if exists and not resume:
                log.info("overwriting the previous build in %s", self.out_dir)
                for name in (BUILD_FILE, SUMMARY_FILE):
                    (self.out_dir / name).unlink(missing_ok=True)
                shutil.rmtree(self._stages, ignore_errors=True)
                shutil.rmtree(self.out_dir / CHECKSUMS, ignore_errors=True)
                midstage.remove_all(self.out_dir)
            if not resume:  # the record first: stages are only ever resumed under their record
                write_json_atomic(build_file, build_info)
            self._stages.mkdir(exist_ok=True)
            (self.out_dir / CHECKSUMS).mkdir(exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot write the build record in {self.out_dir}: {err}; check "
                             "free disk space and permissions, or choose another --out_dir") \
                from None
        self._remove_partials()

    def _remove_partials(self) -> None:
        """Delete what a crash or a failed write left behind: partial stage directories, space
        reservations and unfinished mid-stage saves."""
        for stage_dir in self._stages.iterdir():
            if _is_partial(stage_dir):
                shutil.rmtree(stage_dir, ignore_errors=True)
        for reservation in self.out_dir.glob(RESERVATION + "*"):
            reservation.unlink(missing_ok=True)
        midstage.remove_unfinished(self.out_dir)

    def midstage_save(self, stage: str) -> midstage.MidstageSave | None:
        """Where the pass computing ``stage`` saves its progress (None in memory)."""
        if self.out_dir is None:
            return None
        return midstage.MidstageSave(self.out_dir, stage, self._record, self.writer)

    def has(self, stage: str) -> bool:
        return stage in (self._memory if self.out_dir is None else self._done)

    def get(self, stage: str):
        if self.out_dir is None:
            return self._memory[stage]
        return read_stage(self.out_dir, stage)

    def put(self, stage: str, tree) -> None:
        """Save a finished stage (a pytree of arrays); atomic: a crash leaves no partial stage.
        Then drop its mid-stage save and stop if a stop was requested."""
        self._put(stage, _to_numpy(tree))
        preemption.stop_if_requested(f"stage {stage!r} is stored")

    def _put(self, stage: str, tree) -> None:
        if self.out_dir is None:
            self._memory[stage] = tree
            return
        if not self.writer:
            return
        path = self._stages / stage
        try:
            _reserve(self.out_dir, sum(leaf.nbytes for leaf in jax.tree.leaves(tree)))
            # the checksums first: a stage is never on disk without them
            write_json_atomic(_checksum_file(self.out_dir, stage),
                              {"stage": stage, "sha256": stage_digests(tree)})
            _checkpointer().save(path, tree, force=True)
        except (OSError, ValueError) as err:  # tensorstore reports I/O errors as ValueError
            self._remove_partials()
            raise StoreError(f"could not write stage {stage!r} to {path}: {err}; check free disk "
                             "space and permissions, then rerun the same command to resume") \
                from None
        self._done.add(stage)
        self._computed = True
        self.midstage_save(stage).remove()

    def finish(self, summary: dict) -> None:
        """Mark the build complete with ``summary`` and the list of its stages. A rerun that
        only read finished stages back keeps the summary (and timings) of the run that built
        them."""
        if self.out_dir is None or not self.writer:
            return
        summary_file = self.out_dir / SUMMARY_FILE
        if summary_file.exists() and not self._computed and _summary_readable(self.out_dir):
            return
        try:
            write_json_atomic(summary_file, {**summary, "stages": sorted(self._done)})
        except OSError as err:
            raise StoreError(f"could not write {summary_file}: {err}; check free disk space, "
                             "then rerun the same command to finish the build") from None


def _to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


def _summary_readable(out_dir: Path) -> bool:
    try:
        _read_summary(out_dir)
    except StoreError:
        log.warning("rewriting the damaged %s", out_dir / SUMMARY_FILE)
        return False
    return True


def open_complete(out_dir: str | os.PathLike) -> tuple[Path, dict, dict]:
    """``(path, build_info, summary)`` of a finished build; refuses incomplete or damaged ones,
    and names the ``layer_<L>`` builds inside a directory of several (``--layer=all``)."""
    path = Path(out_dir).resolve()  # orbax needs absolute paths
    if not (path / BUILD_FILE).exists():
        blocks = sorted((p.name for p in path.glob("layer_*") if (p / BUILD_FILE).exists()),
                        key=lambda n: (len(n), n))
        if blocks:
            raise StoreError(f"{path} holds one build per block (a --layer list or --layer=all "
                             f"build), not one graph: {', '.join(blocks)}; point at one of them, "
                             f"e.g. {path / blocks[0]}")
        raise StoreError(f"{path} holds no libjax build (no {BUILD_FILE}); point at the --out_dir "
                         "of compute_basis.py")
    if not (path / SUMMARY_FILE).exists():
        raise StoreError(f"the build in {path} is incomplete (interrupted?); rerun the same "
                         "compute_basis.py command with this --out_dir to finish it")
    info, summ = _read_build_record(path), _read_summary(path)
    missing = [s for s in summ["stages"] if _is_partial(path / "stages" / s)]
    if missing:
        raise StoreError(f"the build in {path} is damaged: its stage(s) {', '.join(missing)} are "
                         f"missing; delete {path / SUMMARY_FILE} and rerun the same "
                         "compute_basis.py command to recompute them")
    return path, info, summ


def stage_digests(tree) -> dict[str, str]:
    """Array path in the stage (``['grams'][0]``) -> SHA-256 of its dtype, shape and bytes."""
    digests = {}
    for key, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = np.ascontiguousarray(leaf)
        h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
        digests[jax.tree_util.keystr(key)] = h.hexdigest()
    return digests


def _checksum_file(path: Path, stage: str) -> Path:
    return Path(path) / CHECKSUMS / f"{stage}.json"


_unverified: set[Path] = set()  # builds already warned about


def _verify(path: Path, stage: str, tree) -> None:
    """Check the arrays read back against the checksums stored with them."""
    where = _checksum_file(path, stage)
    if not where.exists():
        if path not in _unverified:  # stored before libjax kept checksums: read as it is
            _unverified.add(path)
            log.warning("the stages of the build in %s were stored without checksums (by an "
                        "older libjax): read unverified", path)
        return
    stage_dir = Path(path) / "stages" / stage
    try:
        recorded = read_json(where)["sha256"]
        if not isinstance(recorded, dict):
            raise ValueError("no checksums in it")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise StoreError(f"the checksums of stage {stage!r} ({where}) are unreadable ({err}), so "
                         "the stage cannot be verified; "
                         + _DAMAGED.format(f"{stage_dir} and {where}")) from None
    found = stage_digests(tree)
    bad = sorted(k for k in set(found) | set(recorded) if found.get(k) != recorded.get(k))
    if bad:
        raise StoreError(f"stage {stage!r} of the build in {path} is corrupt: its array(s) "
                         f"{', '.join(bad)} do not match the checksums stored when it was "
                         f"written; nothing was computed from it. "
                         + _DAMAGED.format(f"the stage ({stage_dir})"))


def read_stage(path: Path, stage: str):
    """The arrays of a finished stage of the build in ``path``, checked against their
    checksums."""
    stage_dir = Path(path) / "stages" / stage
    try:
        tree = _checkpointer().restore(stage_dir)
    except Exception as err:
        raise StoreError(f"stage {stage!r} of the build in {path} cannot be read "
                         f"({type(err).__name__}: {str(err)[:200]}); the stage is damaged: "
                         + _DAMAGED.format(f"the stage ({stage_dir})")) from None
    _verify(Path(path), stage, tree)
    return tree
