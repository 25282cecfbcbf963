"""Edge steps compiled ahead in a worker thread (:mod:`libjax.pipeline.ahead`): each is traced once,
its first batch runs the program compiled ahead, and the graph is bit for bit the one built
without compiling ahead."""

from __future__ import annotations

import threading
import time

import jax
import numpy as np

from libjax import pipeline
from libjax.pipeline import ahead, steps
from models.lm import model as lm
from tests.helpers.script_runs import assert_identical_graphs
from tests.helpers.tiny import tiny_ln_weights

LIB = pipeline.BuildConfig(batch_size=4, n_stochastic_sources_basis_pos=2,
                        n_stochastic_sources_edges=2, rotate_final_node_layer=True)


def block_0(seed: int):
    cfg, weights, rng = tiny_ln_weights(seed=seed, n_layers=1)
    model = lm.sectioned_model("tiny_ln", cfg, weights, lm.block_node_layers(0, 1), 5)
    return model, rng.integers(0, cfg.d_vocab, size=(10, cfg.n_ctx)).astype(np.int32)


def test_edge_steps_compiled_ahead_are_traced_once_and_change_nothing(monkeypatch):
    model, tokens = block_0(seed=3)  # weights of their own: no step is cached from other tests
    compiles = []  # (time, thread) of every XLA compile
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **kw: compiles.append(
            (time.perf_counter(), threading.current_thread().name))
        if event == "/jax/core/compile/backend_compile_duration" else None)
    before = steps.TRACES.copy()
    first = pipeline.build(model, tokens, LIB)
    edges_start = time.perf_counter() - first.timings["edges"]
    edge_traces = {k: v for k, v in (steps.TRACES - before).items() if k.startswith("edges")}
    assert len(edge_traces) == len(model.sections) and set(edge_traces.values()) == {1}
    assert sum(name.startswith("libjax-compile") for _, name in compiles) == len(model.sections)
    # the edges ran the programs compiled ahead: the main thread compiled nothing meanwhile
    assert not [t for t, name in compiles if name == "MainThread" and t > edges_start]

    steps._steps.clear()  # compile every step again, this time in the main thread
    monkeypatch.setattr(ahead.Ahead, "submit", lambda self, key, compile_fn: None)
    assert_identical_graphs(first, pipeline.build(model, tokens, LIB))
