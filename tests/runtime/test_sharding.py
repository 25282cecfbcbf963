"""Data-parallel builds over forced CPU devices and over two processes equal one device's."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from libjax.runtime import preemption
from libjax.storage import graph
from tests.helpers.script_runs import assert_identical_graphs

WORKER = Path(__file__).resolve().parents[1] / "helpers" / "distributed_worker.py"


def run(out_dir, devices=1, extra=(), wait=True, case="tiny", env=None):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", **(env or {}))
    proc = subprocess.Popen([sys.executable, str(WORKER), case, str(out_dir), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
    return proc


def assert_close_graphs(a, b, rtol=1e-10):
    for name in a.grams:
        np.testing.assert_allclose(a.grams[name], b.grams[name], rtol=rtol,
                                   atol=rtol * np.abs(b.grams[name]).max())
    for name, basis in a.bases.items():
        other = b.bases[name]
        assert basis.dim == other.dim, name
        if basis.Lambda is not None:
            np.testing.assert_allclose(basis.Lambda, other.Lambda, rtol=rtol, err_msg=name)
        # Directions up to sign: compare |C^+| (all directions here are non-degenerate).
        np.testing.assert_allclose(np.abs(basis.C_pinv), np.abs(other.C_pinv), rtol=1e-7,
                                   atol=rtol * np.abs(other.C_pinv).max(), err_msg=name)
    for pair, e in a.edges.items():
        np.testing.assert_allclose(e, b.edges[pair], rtol=1e-7, atol=rtol * b.edges[pair].max(),
                                   err_msg=str(pair))
        assert abs(e.sum() / b.edges[pair].sum() - 1) < rtol


@pytest.mark.slow  # the default run splits modadd's closed forms over four devices (below)
def test_four_devices_equal_one(tmp_path):
    run(tmp_path / "one", devices=1)
    run(tmp_path / "four", devices=4)
    assert_close_graphs(graph.load(tmp_path / "four"), graph.load(tmp_path / "one"))


def test_closed_forms_on_four_devices_equal_one(tmp_path):
    """The low-rank attention and MLP closed forms chunk the batch inside the jitted step; split
    over devices they give the same graph."""
    run(tmp_path / "one", devices=1, case="modadd")
    run(tmp_path / "four", devices=4, case="modadd")
    assert_close_graphs(graph.load(tmp_path / "four"), graph.load(tmp_path / "one"))


def run_two(out_dir, envs=({}, {})) -> list[tuple[int, str]]:
    """The worker in two processes (one device each); their exit statuses and outputs."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    coordinator = f"localhost:{port}"
    procs = [run(out_dir, devices=1, extra=(coordinator, "2", str(i)), wait=False, env=env)
             for i, env in enumerate(envs)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    return [(p.returncode, out) for p, out in zip(procs, outputs)]


def test_two_processes_equal_one(tmp_path):
    for status, out in run_two(tmp_path / "two"):
        assert status == 0, out
    run(tmp_path / "one", devices=1)
    assert_close_graphs(graph.load(tmp_path / "two"), graph.load(tmp_path / "one"))


@pytest.mark.slow
def test_two_processes_stop_after_the_same_batch_and_resume_bit_for_bit(tmp_path):
    """Only process 1 is asked to stop (SIGTERM reaches hosts at different times): both stop
    after the same batch, process 0 saves, and both resume to the uninterrupted graph."""
    for status, out in run_two(tmp_path / "whole"):
        assert status == 0, out
    stopped = run_two(tmp_path / "g", ({"LIBJAX_TEST_STOP_AFTER": "0"},
                                       {"LIBJAX_TEST_STOP_AFTER": "1"}))
    for status, out in stopped:
        assert status == preemption.EXIT_STATUS, out
        assert "means and Grams stopped after batch 1/3" in out, out
    assert "its progress is saved at batch 1/3" in stopped[0][1]
    assert (tmp_path / "g" / "partial" / "stats.npz").exists()
    for status, out in run_two(tmp_path / "g"):
        assert status == 0 and "means and Grams: resuming after 1/3 batches" in out, out
    assert_identical_graphs(graph.load(tmp_path / "g"), graph.load(tmp_path / "whole"))
