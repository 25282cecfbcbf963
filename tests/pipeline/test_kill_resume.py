"""Interrupted builds: a ``compute_basis.py`` killed with SIGKILL anywhere and rerun gives the
graph of an uninterrupted run, bit for bit; so does one stopped by SIGTERM (exit status 75, its
running stage's progress saved) or killed inside a stage that saves its progress, and the rerun
continues that stage where its last save left it; failed writes and crashes mid-write leave the
finished stages as they were; the same command twice gives the same graph.

The build is the shipped modular-addition model on 120 samples in batches of 40 (Grams in 30
batches of 4) with stochastic sources (so a resumed stage must redraw exactly the same signs):
5-15 s uninterrupted. One SIGKILL point and a SIGTERM inside the Grams run by default; ``-m slow``
adds every kill point of :data:`KILL_POINTS`, a directory killed five times in a row, SIGKILL
and SIGTERM at random batches of long Gram and ``M'`` stages (both precision policies), and a full
disk in the middle of a build.
"""

from __future__ import annotations

import errno
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from libjax.errors import StoreError
from libjax.pipeline import BuildConfig, build
from libjax.runtime import preemption
from libjax.storage import graph, midstage, store
from tests.helpers.script_runs import (
    ROOT,
    assert_identical_graphs,
    run_script,
    script_command,
    snapshot,
)
from tests.helpers.tiny import tiny_transformer

COMMAND = ("--n_samples=120", "--batch_size=40", "--gram_batch_size=4",
           "--n_stochastic_sources_basis_pos=1", "--n_stochastic_sources_edges=1")
# Long M' stages too: 30 batches in each pass but the edges'.
LONG_M_PRIME = ("--n_samples=60", "--batch_size=2", "--edge_batch_size=30",
                "--n_stochastic_sources_basis_pos=1", "--n_stochastic_sources_edges=1")
MIXED = (*COMMAND, "--precision=mixed")
SAVE_EACH_BATCH = ("--save_every_batches=1",)


def compute(out: Path, *extra: str, command=COMMAND, **kwargs):
    return run_script("compute_basis.py", *command, *extra, f"--out_dir={out}", **kwargs)


def _reference(tmp_path_factory, command) -> Path:
    """An uninterrupted build."""
    out = tmp_path_factory.mktemp("reference") / "graph"
    result = compute(out, command=command)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return _reference(tmp_path_factory, COMMAND)


# --- killing a build ------------------------------------------------------------------------------

def committed(out: Path) -> set[str]:
    stages = out / "stages"
    return {p.name for p in stages.iterdir() if (p / store.COMMIT_FILE).exists()} \
        if stages.is_dir() else set()


def writing(out: Path, stage: str) -> bool:
    """orbax is writing ``stage`` (its temporary directory exists)."""
    stages = out / "stages"
    return stages.is_dir() and any(p.name.startswith(stage + store.TMP_SUFFIX)
                                   for p in stages.iterdir())


# Kill points: (name, trigger(out_dir, stderr lines so far), seconds to wait after it fires).
KILL_POINTS = {
    "during the Grams": (lambda out, log: (out / store.BUILD_FILE).exists(), 0.5),
    "writing the stats stage": (lambda out, log: writing(out, "stats"), 0.0),
    "between two bases": (lambda out, log: "basis_unembed" in committed(out), 0.0),
    # M' of ln1.0 takes milliseconds once compiled: kill as soon as it starts
    "during M' of ln1.0": (lambda out, log: any("M' ln1.0:" in x for x in log), 0.0),
    "writing a basis": (lambda out, log: writing(out, "basis_ln1.0"), 0.0),
    # the edges run the last section first (libjax.pipeline.run._edges)
    "during the first edges": (lambda out, log: any("edges unembed->output:" in x for x in log),
                               0.0),
    "between two edge matrices": (lambda out, log: "edges_unembed__output" in committed(out),
                                  0.0),
    "after the last edges": (lambda out, log: "edges_ln1.0__ln2.0" in committed(out), 0.0),
}


def run_and_kill(out: Path, trigger, delay: float, timeout: float = 120) -> bool:
    """Run the build, SIGKILL it ``delay`` s after ``trigger`` fires; True if it was killed
    (rather than finishing first)."""
    return run_and_signal(out, trigger, delay, timeout=timeout)[0] == -signal.SIGKILL


def run_and_signal(out: Path, trigger, delay: float, sig=signal.SIGKILL, extra=(),
                   command=COMMAND, timeout: float = 120) -> tuple[int, str]:
    """Run the build, send it ``sig`` ``delay`` s after ``trigger`` fires; its exit status and
    its log."""
    proc = subprocess.Popen(script_command("compute_basis.py", *command, *extra,
                                           f"--out_dir={out}"),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not trigger(out, lines):
        assert time.monotonic() < deadline, "the trigger never fired"
        time.sleep(0.001)
    time.sleep(delay)
    proc.send_signal(sig)
    proc.wait()
    reader.join()
    assert "Traceback" not in "".join(lines), "".join(lines)
    return proc.returncode, "".join(lines)


def resume_and_compare(out: Path, reference: Path, command=COMMAND) -> str:
    """An interrupted directory is refused as a graph; rerunning finishes it identically, with
    no mid-stage save left. Returns the rerun's log."""
    if not (out / store.SUMMARY_FILE).exists():
        with pytest.raises(StoreError, match="incomplete"):
            graph.load(out)
    result = compute(out, command=command)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr
    assert_identical_graphs(graph.load(out), graph.load(reference))
    assert not [p for p in (out / "stages").iterdir() if store.TMP_SUFFIX in p.name]
    assert not (out / midstage.DIRECTORY).exists()
    return result.stderr


def test_killed_during_m_prime_resumes_to_the_same_graph(tmp_path, reference):
    trigger, delay = KILL_POINTS["during M' of ln1.0"]
    assert run_and_kill(tmp_path / "g", trigger, delay)
    assert "basis_ln1.0" not in committed(tmp_path / "g")
    resume_and_compare(tmp_path / "g", reference)


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_anywhere_resumes_to_the_same_graph(tmp_path, reference, point):
    trigger, delay = KILL_POINTS[point]
    killed = run_and_kill(tmp_path / "g", trigger, delay)
    partial = [p.name for p in (tmp_path / "g" / "stages").iterdir()
               if store.TMP_SUFFIX in p.name]
    print(f"{point}: {'killed' if killed else 'finished first'}, committed stages "
          f"{sorted(committed(tmp_path / 'g'))}, partial writes {partial}")
    assert killed or point == "after the last edges"
    resume_and_compare(tmp_path / "g", reference)


@pytest.mark.slow
def test_killed_again_and_again_resumes_to_the_same_graph(tmp_path, reference):
    """One directory, killed at each point in turn (every rerun resumes, then dies again)."""
    out, kills = tmp_path / "g", 0
    for point in ("during the Grams", "during M' of ln1.0", "writing a basis",
                  "during the first edges", "between two edge matrices"):
        trigger, delay = KILL_POINTS[point]
        before = committed(out)
        kills += run_and_kill(out, trigger, delay)
        assert committed(out) >= before  # a kill never loses a finished stage
    assert kills == 5
    resume_and_compare(out, reference)


# --- stopping or killing a build inside a stage that saves its progress ---------------------------

def saved(what: str, log: str) -> list[int]:
    """The batches at which the pass ``what`` logged a progress save, in order."""
    return [int(n) for n in re.findall(rf"{re.escape(what)}: progress saved at batch (\d+)/", log)]


def at_save(what: str, batch: int):
    """A trigger: the pass ``what`` logged its save after batch ``batch``."""
    return lambda out, log: f"{what}: progress saved at batch {batch}/" in "".join(log)


def stop_inside(out: Path, reference: Path, what: str, batches: int, sig,
                command=COMMAND) -> None:
    """Run the build saving after every batch, send ``sig`` at a random moment inside the pass
    ``what`` of ``batches`` batches, and rerun it (saving as often as by default): the same
    graph as ``reference``, resumed where the last save left off."""
    for attempt in range(3):  # a fast pass may end before the signal lands: try again earlier
        batch, delay = random.randint(2, batches // 2), random.uniform(0, 0.03) / (1 + attempt)
        print(f"{sig.name} during {what} after its save at batch {batch} + {delay:.3f}s")
        status, log = run_and_signal(out, at_save(what, batch), delay, sig, SAVE_EACH_BATCH,
                                     command)
        if f"{what}: {batches}/{batches} batches" not in log:
            break
        shutil.rmtree(out)
    else:
        pytest.fail(f"{what} always finished before {sig.name} arrived")
    reported = saved(what, log)[-1]
    if sig == signal.SIGTERM:
        assert status == preemption.EXIT_STATUS, log
        stopped = re.search(rf"{re.escape(what)} stopped after batch (\d+)/{batches}; its "
                            rf"progress is saved at batch (\d+)/{batches}", log)
        assert stopped and stopped[1] == stopped[2] == str(reported), log  # nothing lost
        assert "Rerun the same command to resume." in log
    else:
        assert status == -signal.SIGKILL
    assert (out / midstage.DIRECTORY).is_dir()
    rerun = resume_and_compare(out, reference, command)
    resumed = int(re.search(rf"{re.escape(what)}: resuming after (\d+)/{batches} batches",
                            rerun)[1])
    # At most the save interval (one batch) is lost: the rerun starts at the last save logged,
    # or at one that finished just before the kill and did not get to log.
    assert reported <= resumed <= reported + 1, (reported, resumed)


def test_sigterm_inside_the_grams_saves_there_exits_75_and_the_rerun_continues(tmp_path,
                                                                               reference):
    stop_inside(tmp_path / "g", reference, "means and Grams", 30, signal.SIGTERM)


@pytest.mark.slow
def test_sigkill_inside_the_grams_loses_at_most_one_save_interval(tmp_path, reference):
    stop_inside(tmp_path / "g", reference, "means and Grams", 30, signal.SIGKILL)


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory) -> Path:
    return _reference(tmp_path_factory, LONG_M_PRIME)


@pytest.fixture(scope="module")
def mixed_reference(tmp_path_factory) -> Path:
    return _reference(tmp_path_factory, MIXED)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("what", ["M' ln1.0", "M' ln2.0", "means and Grams"])
def test_stopped_inside_a_long_m_prime_or_gram_stage_resumes_there(tmp_path, long_reference,
                                                                   what, sig):
    stop_inside(tmp_path / "g", long_reference, what, 30, sig, LONG_M_PRIME)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_mixed_precision_build_resumes_inside_the_grams_bit_for_bit(tmp_path, mixed_reference,
                                                                      sig):
    stop_inside(tmp_path / "g", mixed_reference, "means and Grams", 30, sig, MIXED)


@pytest.mark.slow
def test_stopped_again_and_again_inside_one_stage_resumes_to_the_same_graph(tmp_path,
                                                                            long_reference):
    """SIGTERM, SIGKILL, SIGTERM inside the same ``M'`` pass: each rerun continues from the
    previous run's last save."""
    out, last = tmp_path / "g", 0
    for sig, batch in ((signal.SIGTERM, 5), (signal.SIGKILL, 12), (signal.SIGTERM, 20)):
        status, log = run_and_signal(out, at_save("M' ln1.0", batch), 0.0, sig, SAVE_EACH_BATCH,
                                     LONG_M_PRIME)
        assert status == (preemption.EXIT_STATUS if sig == signal.SIGTERM else -signal.SIGKILL)
        if last:
            resumed = int(re.search(r"M' ln1.0: resuming after (\d+)/30", log)[1])
            assert last <= resumed <= last + 1
        last = saved("M' ln1.0", log)[-1]
    resume_and_compare(out, long_reference, LONG_M_PRIME)


@pytest.mark.slow
def test_sigterm_between_stages_exits_75_and_the_rerun_finishes(tmp_path, reference):
    status, log = run_and_signal(tmp_path / "g", lambda out, log: "basis_unembed" in
                                 committed(out), 0.0, signal.SIGTERM)
    assert status == preemption.EXIT_STATUS, log
    assert "stopped on request (SIGTERM)" in log and "Rerun the same command" in log
    assert "basis_unembed" in committed(tmp_path / "g")
    resume_and_compare(tmp_path / "g", reference)


@pytest.mark.slow  # in-process determinism: tests/storage/test_store.py
def test_the_same_command_twice_gives_the_same_graph(tmp_path, reference):
    result = compute(tmp_path / "again")
    assert result.returncode == 0, result.stderr
    assert_identical_graphs(graph.load(tmp_path / "again"), graph.load(reference))


# --- failed writes --------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_full_disk_keeps_the_finished_stages_and_the_rerun_finishes(tmp_path, reference):
    out = tmp_path / "g"
    shutil.copytree(reference, out)
    (out / store.SUMMARY_FILE).unlink()
    for stage in ("edges_ln1.0__ln2.0", "edges_ln2.0__unembed", "edges_unembed__output"):
        shutil.rmtree(out / "stages" / stage)
    before = snapshot(out)
    result = compute(out, max_file_bytes=32 * 1024)  # an edge matrix is ~100 kB
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "could not write stage 'edges_unembed__output'" in result.stderr  # the first edges
    assert "File too large" in result.stderr and "rerun the same command" in result.stderr
    assert snapshot(out) == before  # nothing half-written left behind, nothing lost
    resume_and_compare(out, reference)


# --- in-process: failed writes and partial stages on a small model --------------------------------

TINY_LAYERS = ("ln1.0", "ln2.0", "unembed", "output")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(model, tokens, graph, directory)`` of a finished build of a small random transformer."""
    model, tokens = tiny_transformer(TINY_LAYERS)
    out = tmp_path_factory.mktemp("tiny") / "graph"
    return model, tokens, build(model, tokens, BuildConfig(), out_dir=out), out


def interrupted_copy(src: Path, dst: Path, drop: tuple[str, ...]) -> Path:
    """A copy of a finished build without its summary and the stages ``drop``."""
    shutil.copytree(src, dst)
    (dst / store.SUMMARY_FILE).unlink()
    for stage in drop:
        shutil.rmtree(dst / "stages" / stage)
    return dst


class _FailingCheckpointer:
    """orbax's checkpointer whose writes start (a temporary directory), then fail with ``err``."""

    def __init__(self, err: Exception, real):
        self.err = err
        self.restore = real.restore

    def save(self, path, tree, force=False):
        (Path(f"{path}{store.TMP_SUFFIX}") / "d").mkdir(parents=True)
        raise self.err


@pytest.mark.parametrize("err", [OSError(errno.ENOSPC, "No space left on device"),
                                 ValueError("OUT_OF_RANGE: Error writing ... [os_error_code=28]")])
def test_a_failed_stage_write_is_a_store_error_and_changes_nothing(tmp_path, monkeypatch, tiny,
                                                                   err):
    model, tokens, full, done = tiny
    part = interrupted_copy(done, tmp_path / "part", ("edges_unembed__output",))
    before = {d: snapshot(d) for d in (done, part)}
    real = store._checkpointer()
    monkeypatch.setattr(store, "_checkpointer", lambda: _FailingCheckpointer(err, real))

    with pytest.raises(StoreError, match="could not write stage 'edges_unembed__output'.*disk"):
        build(model, tokens, BuildConfig(), out_dir=part)
    # A finished build is only read: its rerun needs no write at all.
    assert_identical_graphs(build(model, tokens, BuildConfig(), out_dir=done), full)
    assert {d: snapshot(d) for d in (done, part)} == before


def test_partial_stages_left_by_a_crash_are_removed_and_recomputed(tmp_path, tiny):
    """A crash mid-write leaves orbax's temporary directory (with or without its commit marker,
    which orbax writes just before the rename) or, on filesystems without atomic renames, a stage
    without its marker; reopening removes them and recomputes those stages."""
    model, tokens, full, done = tiny
    out = interrupted_copy(done, tmp_path / "crashed", ())
    stages = out / "stages"
    for stage in ("edges_ln2.0__unembed", "edges_unembed__output"):
        (stages / stage).rename(stages / f"{stage}{store.TMP_SUFFIX}")
    (stages / f"edges_unembed__output{store.TMP_SUFFIX}" / store.COMMIT_FILE).unlink()
    (stages / "basis_ln1.0" / store.COMMIT_FILE).unlink()
    (out / f"{store.RESERVATION}x").write_bytes(b"")
    with pytest.raises(StoreError, match="incomplete"):
        graph.load(out)
    assert_identical_graphs(build(model, tokens, BuildConfig(), out_dir=out), full)
    assert sorted(p.name for p in stages.iterdir()) == sorted(
        p.name for p in (done / "stages").iterdir())
    assert not list(out.glob(f"{store.RESERVATION}*"))
    assert_identical_graphs(graph.load(out), full)


def test_a_build_with_a_missing_stage_is_refused(tmp_path, tiny):
    out = shutil.copytree(tiny[3], tmp_path / "g")
    shutil.rmtree(out / "stages" / "basis_ln2.0")
    with pytest.raises(StoreError, match="damaged: its stage.s. basis_ln2.0 are missing"):
        graph.load(out)


def test_an_unreadable_build_record_is_refused_unless_overwritten(tmp_path, tiny):
    model, tokens, full, done = tiny
    out = shutil.copytree(done, tmp_path / "g")
    (out / store.BUILD_FILE).write_text('{"model": ')
    with pytest.raises(StoreError, match="build.json is unreadable"):
        graph.load(out)
    with pytest.raises(StoreError, match="build.json is unreadable.*--overwrite"):
        build(model, tokens, BuildConfig(), out_dir=out)
    assert_identical_graphs(build(model, tokens, BuildConfig(), out_dir=out, overwrite=True), full)
    assert_identical_graphs(graph.load(out), full)
