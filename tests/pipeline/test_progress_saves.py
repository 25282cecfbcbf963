"""Mid-stage saves in-process: a pass that crashes or is stopped after some batches, then
resumed, sums exactly as one uninterrupted pass (float64 device sums and mixed host sums, the
statistics' Chan merge and a stochastic ``M'``); a save is resumed only by its own build, stage
and layout; the schedule counts batches and minutes."""

from __future__ import annotations

import json
import logging
import re
import shutil

import jax
import numpy as np
import pytest

from libjax.errors import ConfigError
from libjax.forms import M_PRIME
from libjax.method import stats
from libjax.pipeline import BuildConfig, build, steps
from libjax.pipeline.computations import choose_path, section_task
from libjax.pipeline.progress_saves import PassProgress, Saves, SaveSchedule
from libjax.runtime import precision, preemption
from libjax.runtime.sharding import Placement
from libjax.storage import midstage, store
from libjax.storage.graph import STATS_STAGE, basis_stage
from tests.helpers.script_runs import assert_identical_graphs
from tests.helpers.tiny import tiny_transformer

LAYERS = ("ln1.0", "ln2.0", "unembed", "output")
BATCH = 4  # 64 samples: 16 batches per pass
EVERY_3 = SaveSchedule(every_batches=3, every_minutes=0)
POLICIES = ["float64", "mixed"]


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def tiny():
    return tiny_transformer(LAYERS)


@pytest.fixture(autouse=True)
def no_stop_left():
    yield
    preemption.clear()


def interrupt(monkeypatch, after: int, how: str) -> None:
    """The next pass stops (``how="stop"``, as on SIGTERM) or crashes after ``after`` batches."""
    real = steps.padded_batches

    def batches(*args, **kwargs):
        for n, item in enumerate(real(*args, **kwargs)):
            if how == "crash" and n == after:
                raise Crash
            if how == "stop" and n == after - 1:
                preemption.request()
            yield item
    monkeypatch.setattr(steps, "padded_batches", batches)


def saved_at(out) -> dict[str, int]:
    """Stage -> batches done, of each mid-stage save in build directory ``out``."""
    found = {}
    for path in (out / midstage.DIRECTORY).glob("*.npz"):
        with np.load(path) as f:
            found[path.stem] = json.loads(str(f["record"]))["done"]
    return found


def assert_same_sums(a, b) -> None:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    assert all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b))


class Pass:
    """One pass of a build, its step made (and compiled) once: ``run(saves)`` folds it over the
    tokens and returns the sums. ``kind``: the statistics (Chan merges) or ``M'`` of the
    attention section with stochastic position sources (per-batch keys)."""

    def __init__(self, model, tokens, kind: str, policy: str, batch_size: int = BATCH):
        self.tokens, self.policy, self.batch_size = tokens, policy, batch_size
        placement = Placement()
        if kind == "stats":
            layers = [0, 1, 2]
            self.step = steps.stats_step(model, layers, policy)
            self.init = ([stats.Moments.zeros(model.layers[i].width) for i in layers],
                         np.ones(len(layers), bool))
            self.stage, self.args = STATS_STAGE, (model.params,)
        else:
            cfg = BuildConfig(precision=policy, n_stochastic_sources_basis_pos=1)
            task = section_task(model, 0, M_PRIME, cfg, len(tokens), model.layers[1].width, 0,
                                batch_size)
            path = choose_path(model.sections[0], task, True)
            plan = path.plan(task, model.params)
            self.step = steps.accumulation_step(model, 0, path, task, plan, policy)
            self.init = path.zero(task, model.params)
            self.stage, self.args = basis_stage("ln1.0"), (model.params, None, None, None)
        self.placement = placement

    def run(self, saves=None):
        with precision.scope(self.policy):
            return steps.accumulate(self.step, self.init, self.tokens, self.batch_size, "pass", 0,
                                    self.stage, self.placement, *self.args, saves=saves)


@pytest.fixture(scope="module")
def stats64(tiny):
    return Pass(*tiny, "stats", "float64")


@pytest.fixture(scope="module", params=[(k, p) for k in ("stats", "m_prime") for p in POLICIES],
                ids=lambda kp: f"{'Grams' if kp[0] == 'stats' else 'M prime'}-{kp[1]}")
def a_pass(request, tiny):
    """``(pass, its uninterrupted sums)``."""
    p = Pass(*tiny, *request.param)
    return p, p.run()


def test_a_crashed_then_stopped_pass_resumes_to_the_uninterrupted_sums(tmp_path, monkeypatch,
                                                                       caplog, a_pass):
    run, whole = a_pass
    saves = Saves(store.Store(tmp_path, {"build": 1}), EVERY_3)

    interrupt(monkeypatch, 7, "crash")
    with pytest.raises(Crash):
        run.run(saves)
    assert saved_at(tmp_path) == {run.stage: 6}

    monkeypatch.undo()
    interrupt(monkeypatch, 4, "stop")  # from batch 6: stops after batch 10, saved there
    with caplog.at_level(logging.INFO, logger="libjax"):
        with pytest.raises(preemption.Preempted, match="after batch 10/16; its progress is "
                                                       "saved at batch 10/16"):
            run.run(saves)
    assert "pass: resuming after 6/16 batches" in caplog.text
    assert saved_at(tmp_path) == {run.stage: 10}
    preemption.clear()

    monkeypatch.undo()
    assert_same_sums(run.run(saves), whole)


@pytest.mark.parametrize("other,why", [
    ({"build": 2}, "it belongs to another build"),
    ({"batch_size": 8}, "another layout: batch_size 4 .now 8., batches 16 .now 8."),
], ids=["another build", "another batch size"])
def test_a_save_of_another_build_or_layout_is_not_resumed(tmp_path, monkeypatch, caplog,
                                                          stats64, other, why):
    run = stats64
    saves = Saves(store.Store(tmp_path / "saved", {"build": 1}), EVERY_3)
    interrupt(monkeypatch, 7, "crash")
    with pytest.raises(Crash):
        run.run(saves)
    monkeypatch.undo()

    elsewhere = store.Store(tmp_path / "other", {"build": other.get("build", 1)})
    (tmp_path / "other" / midstage.DIRECTORY).mkdir()
    shutil.copy(tmp_path / "saved" / midstage.DIRECTORY / "stats.npz",
                tmp_path / "other" / midstage.DIRECTORY)
    run.batch_size = other.get("batch_size", BATCH)
    try:
        whole = run.run()
        with caplog.at_level(logging.INFO, logger="libjax"):
            resumed = run.run(Saves(elsewhere, EVERY_3))
    finally:
        run.batch_size = BATCH
    assert "resuming" not in caplog.text
    assert "ignoring the progress saved for stage 'stats'" in caplog.text
    assert re.search(why, caplog.text), caplog.text
    assert_same_sums(resumed, whole)


@pytest.mark.slow
@pytest.mark.parametrize("policy", POLICIES)
def test_a_stopped_build_resumes_to_the_same_graph_and_leaves_no_save(tmp_path, monkeypatch,
                                                                      tiny, policy):
    model, tokens = tiny
    cfg = BuildConfig(batch_size=BATCH, precision=policy, n_stochastic_sources_basis_pos=1,
                      n_stochastic_sources_edges=1)
    whole = build(model, tokens, cfg)
    interrupt(monkeypatch, 5, "stop")
    with pytest.raises(preemption.Preempted, match="means and Grams stopped after batch 5/16"):
        build(model, tokens, cfg, out_dir=tmp_path, save_schedule=EVERY_3)
    assert saved_at(tmp_path) == {"stats": 5}
    preemption.clear()
    monkeypatch.undo()
    assert_identical_graphs(build(model, tokens, cfg, out_dir=tmp_path), whole)
    assert not (tmp_path / midstage.DIRECTORY).exists()


def test_storing_a_stage_drops_its_save_and_is_where_a_stop_between_passes_ends(tmp_path):
    st = store.Store(tmp_path, {"build": 1})
    for stage in ("a", "b"):
        st.midstage_save(stage).save([np.zeros(3)], {}, 1)
    st.put("a", {"x": np.ones(2)})
    assert saved_at(tmp_path) == {"b": 1}
    preemption.request()
    with pytest.raises(preemption.Preempted, match="stage 'b' is stored"):
        st.put("b", {"x": np.ones(2)})
    assert st.has("b") and not (tmp_path / midstage.DIRECTORY).exists()


def test_a_crash_mid_save_leaves_the_previous_save(tmp_path, monkeypatch):
    save = midstage.MidstageSave(tmp_path, "s", "b")
    save.save([np.arange(3.0)], {"batches": 4}, 1)

    def crash(*args, **kwargs):
        raise Crash
    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(Crash):
        save.save([np.arange(3.0) + 1], {"batches": 4}, 2)
    done, (acc,) = save.load([np.zeros(3)], {"batches": 4})
    assert done == 1 and np.array_equal(acc, np.arange(3.0))
    assert [p.name for p in (tmp_path / midstage.DIRECTORY).iterdir()] == ["s.npz"]


def test_the_schedule_counts_batches_and_minutes(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("libjax.pipeline.progress_saves.time.monotonic", lambda: clock[0])
    save = midstage.MidstageSave(tmp_path, "s", "b")
    for schedule, minutes_per_batch, expected in [
            (SaveSchedule(every_batches=4, every_minutes=10), 1, [4, 8]),
            (SaveSchedule(every_batches=0, every_minutes=10), 4, [3, 6, 9]),
            (SaveSchedule(every_batches=4, every_minutes=5), 2, [3, 6, 9]),
            (SaveSchedule(every_batches=0, every_minutes=0), 100, [])]:
        progress, done = PassProgress(save, schedule, "pass", {"batches": 10}), []
        for i in range(1, 11):
            clock[0] += 60 * minutes_per_batch
            before = progress.saved_at
            progress.boundary(i, lambda: [np.zeros(2)])
            done += [i] if progress.saved_at != before else []
        assert done == expected, schedule  # never after the last batch: the stage is stored next


@pytest.mark.parametrize("schedule,message", [
    (SaveSchedule(every_batches=-1), "save_every_batches must be an integer >= 0"),
    (SaveSchedule(every_minutes=float("nan")), "save_every_minutes must be a finite number"),
])
def test_a_bad_schedule_is_refused(tiny, schedule, message):
    with pytest.raises(ConfigError, match=message):
        build(*tiny, BuildConfig(), save_schedule=schedule)
