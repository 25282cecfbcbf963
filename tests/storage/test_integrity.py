"""Stored builds are checked before anything is computed from them, and one directory is built by
one process at a time, through the real command lines.

Every refusal ends the script with status 2, one ``error:`` line naming the file or stage and
what to do, no traceback, and nothing written (the work directory's files are unchanged): no
result is computed from corrupt data. A corrupt progress save is ignored with a warning.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from libjax.errors import StoreError
from libjax.storage import graph, store
from tests.helpers.script_runs import (
    ROOT,
    assert_identical_graphs,
    run_script,
    script_command,
    snapshot,
)

EDGES = "edges_ln1.0__ln2.0"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished build of the shipped modular-addition model on 10 samples."""
    out = tmp_path_factory.mktemp("finished") / "graph"
    result = run_script("compute_basis.py", "--n_samples=10", f"--out_dir={out}")
    assert result.returncode == 0, result.stderr
    return out


def _refused(result, *says: str) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: "), result.stderr[-3000:]
    for part in says:
        assert part in lines[-1], (part, lines[-1])
    return lines[-1]


def _overwrite_bytes(path: Path, seed: int = 0, n: int = 8) -> None:
    """A few random bytes written over the middle of ``path`` (a flipped sector)."""
    raw = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    start = len(raw) // 2
    raw[start:start + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(raw))


def _chunk(build: Path, stage: str, array: str) -> Path:
    """The file holding an array of a stage (orbax: one zarr chunk per array here)."""
    return max((build / "stages" / stage / array).glob("0*"), key=lambda p: p.stat().st_size)


READERS = {
    "plot_graph.py": (),
    "cluster.py": (),
    "ablate.py": ("--plot=false",),
    "explore.py": (),
}


def _first_by_default(values):
    """``values`` as parameters, all but the first marked slow (each case is a fresh interpreter
    of a few seconds; the variants run with -m slow)."""
    return [v if i == 0 else pytest.param(*(v if isinstance(v, tuple) else (v,)),
                                          marks=pytest.mark.slow)
            for i, v in enumerate(values)]


def _readers():
    return _first_by_default(list(READERS))


@pytest.mark.parametrize("script", _readers())
def test_a_stage_overwritten_with_random_bytes_is_refused_by_every_reader(script, tmp_path,
                                                                          finished):
    build = tmp_path / "graph"
    shutil.copytree(finished, build)
    _overwrite_bytes(_chunk(build, EDGES, "E"))
    before = snapshot(tmp_path)
    result = run_script(script, f"--graph_dir={build}", *READERS[script])
    message = _refused(result, f"stage '{EDGES}'", "--overwrite", "delete")
    assert "corrupt" in message or "damaged" in message, message
    assert snapshot(tmp_path) == before


def test_every_array_of_every_stage_is_checked(tmp_path, finished):
    """Not only edges: a basis and the statistics too, whichever array is hit."""
    for stage, array in (("basis_ln2.0", "C"), ("basis_unembed", "Lambda"), ("stats", "grams.1")):
        build = tmp_path / stage
        shutil.copytree(finished, build)
        _overwrite_bytes(_chunk(build, stage, array))  # orbax names list entries grams.1
        with pytest.raises(StoreError, match=f"stage '{stage}'.*(corrupt|damaged)"):
            graph.load(build)


def test_a_rerun_of_the_build_refuses_a_corrupt_stage_too(tmp_path, finished):
    """A resumed build reads its finished stages back: one that no longer matches its checksums
    ends the build with the same advice, and deleting it recomputes it bit for bit."""
    build = tmp_path / "graph"
    shutil.copytree(finished, build)
    (build / "summary.json").unlink()
    _overwrite_bytes(_chunk(build, "basis_ln1.0", "C_pinv"))
    result = run_script("compute_basis.py", "--n_samples=10", f"--out_dir={build}")
    _refused(result, "stage 'basis_ln1.0'", "corrupt", "--overwrite")
    shutil.rmtree(build / "stages" / "basis_ln1.0")
    result = run_script("compute_basis.py", "--n_samples=10", f"--out_dir={build}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_identical_graphs(graph.load(build), graph.load(finished))


@pytest.mark.parametrize("content", _first_by_default([b"null", b"", b'{"stages": 5}',
                                                      b"\x00\xff garbage"]))
def test_a_damaged_summary_is_named_and_a_rerun_rewrites_it(content, tmp_path, finished):
    build = tmp_path / "graph"
    shutil.copytree(finished, build)
    (build / "summary.json").write_bytes(content)
    before = snapshot(tmp_path)
    message = _refused(run_script("plot_graph.py", f"--graph_dir={build}"),
                       "summary.json", "rerun the same compute_basis.py command")
    assert "unreadable" in message or "damaged" in message
    assert snapshot(tmp_path) == before
    if content == b"null":  # the advice works (once: each rerun costs a few seconds)
        result = run_script("compute_basis.py", "--n_samples=10", f"--out_dir={build}")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "rewriting the damaged" in result.stderr
        assert json.loads((build / "summary.json").read_text())["complete"] is True


def test_a_damaged_build_record_is_named(tmp_path, finished):
    build = tmp_path / "graph"
    shutil.copytree(finished, build)
    (build / "build.json").write_text('{"node_layers": null}')
    before = snapshot(tmp_path)
    _refused(run_script("cluster.py", f"--graph_dir={build}"), "build.json", "damaged",
             "--overwrite")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("content", _first_by_default([b"", b"PK\x03\x04 truncated zip",
                                                      b"\x93NUMPY garbage"]))
def test_a_corrupt_progress_save_is_ignored_with_a_warning(content, tmp_path, finished):
    """An empty or corrupt ``partial/<stage>.npz`` (a crash mid-copy, a full disk) never stops
    the rerun: the stage starts over, and the graph is the one an uninterrupted build makes."""
    build = tmp_path / "graph"
    shutil.copytree(finished, build)
    (build / "summary.json").unlink()
    shutil.rmtree(build / "stages" / EDGES)
    (build / "partial").mkdir()
    (build / "partial" / f"{EDGES}.npz").write_bytes(content)
    result = run_script("compute_basis.py", "--n_samples=10", f"--out_dir={build}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"ignoring the progress saved for stage '{EDGES}'" in result.stderr
    assert not (build / "partial").exists()
    assert_identical_graphs(graph.load(build), graph.load(finished))


def test_a_build_stored_before_checksums_still_loads_and_is_checked_against_its_summary(
        tmp_path, finished, caplog):
    build = tmp_path / "graph"
    shutil.copytree(finished, build)
    shutil.rmtree(build / "checksums")
    with caplog.at_level("WARNING", logger="libjax"):
        assert_identical_graphs(graph.load(build), graph.load(finished))
    assert "without checksums" in caplog.text and "unverified" in caplog.text
    # without checksums, the sums summary.json records still catch a damaged edge matrix
    _overwrite_bytes(_chunk(build, EDGES, "E"), n=64)
    with pytest.raises(StoreError, match=f"'{EDGES}'.*(summary|cannot be read)"):
        graph.load(build)


@pytest.mark.parametrize("script", _readers())
def test_a_directory_of_per_block_builds_names_its_layer_directories(script, tmp_path, finished):
    """``--layer=all`` writes ``<out_dir>/layer_<L>``; pointing a reader at ``<out_dir>`` names
    them instead of saying that there is no build."""
    root = tmp_path / "all"
    for block in (0, 1, 10):
        shutil.copytree(finished, root / f"layer_{block}")
    before = snapshot(tmp_path)
    _refused(run_script(script, f"--graph_dir={root}", *READERS[script]),
             "one build per block", "layer_0, layer_1, layer_10", str(root / "layer_0"))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("args, says", _first_by_default([
    (("--norm=log",), "--norm=log needs its zero point"),
    (("--gamma=0",), "--gamma must be > 0"),
    (("--eps=1", "--edge_results={dir}/x.json"), "--eps or --edge_results, not both"),
    (("--eps=-1",), "--eps must be a finite number > 0"),
    (("--edge_results={dir}/nowhere.json",), "cannot read edge masks"),
]))
def test_cluster_flags_are_checked_before_the_build_is_read(args, says, tmp_path):
    """Pointed at a directory with no build, the flag's own error comes first: nothing is
    loaded before every flag has been checked."""
    args = [a.format(dir=tmp_path) for a in args]
    _refused(run_script("cluster.py", f"--graph_dir={tmp_path / 'nowhere'}", *args), says)


def test_plot_flags_are_checked_before_the_build_is_read(tmp_path):
    (tmp_path / "masks.json").write_text("not json")
    _refused(run_script("plot_graph.py", f"--graph_dir={tmp_path / 'nowhere'}",
                        f"--edge_results={tmp_path / 'masks.json'}"), "cannot read edge masks")


# --- one process per directory ----------------------------------------------------------------

def _start_build(out: Path) -> subprocess.Popen:
    """The full default modular-addition build (about ten seconds: long enough to overlap)."""
    return subprocess.Popen(script_command("compute_basis.py", f"--out_dir={out}"), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_builds_on_one_directory_one_runs_the_other_is_refused_and_a_kill_leaves_no_lock(
        tmp_path):
    out = tmp_path / "graph"
    first, second = _start_build(out), _start_build(out)
    pids = {first.pid: first, second.pid: second}
    # the refused one ends at once, while the other still builds
    deadline = time.monotonic() + 240
    while all(p.poll() is None for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    refused = next(p for p in pids.values() if p.poll() is not None)
    running = next(p for p in pids.values() if p is not refused)
    _, err = refused.communicate()
    assert refused.returncode == 2, err[-3000:]
    assert "Traceback" not in err
    assert f"directory {out} is in use by process {running.pid}" in err, err[-3000:]
    assert running.poll() is None, "the build ended before the other was refused"
    assert (out / store.LOCK_FILE).read_text().strip() == str(running.pid)
    # the running build is killed (no handler runs): its lock must not block the rerun
    os.kill(running.pid, signal.SIGKILL)
    running.communicate()
    assert running.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    result = run_script("compute_basis.py", f"--out_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "in use" not in result.stderr
    assert graph.load(out).edges  # finished
    assert (out / store.LOCK_FILE).read_text() == ""  # released: no PID left behind


def test_a_library_build_refuses_a_directory_another_process_holds(tmp_path):
    """The lock is the store's, not the script's: a build called from Python is refused too,
    and the process that holds a directory may open it again (re-entrant)."""
    from libjax.pipeline import BuildConfig, build
    from tests.helpers.tiny import tiny_transformer

    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | "
         "os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); "
         "print('held', flush=True); time.sleep(60)", str(tmp_path / store.LOCK_FILE)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        model, tokens = tiny_transformer(("ln1.0", "ln2.0", "unembed", "output"))
        with pytest.raises(StoreError, match=f"in use by process {holder.pid}"):
            build(model, tokens, BuildConfig(compute_edges=False), out_dir=tmp_path)
        assert not (tmp_path / "build.json").exists()
    finally:
        holder.kill()
        holder.wait()
    store.DirectoryLock.acquire(tmp_path.resolve())
    try:
        build(model, tokens, BuildConfig(compute_edges=False), out_dir=tmp_path)
    finally:
        store.DirectoryLock.release(tmp_path.resolve())
