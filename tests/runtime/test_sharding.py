"""Data-parallel builds over forced CPU devices and over two processes equal one device's."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from libjax.storage import graph

WORKER = Path(__file__).resolve().parents[1] / "helpers" / "distributed_worker.py"


def run(out_dir, devices=1, extra=(), wait=True, case="tiny"):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
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


def test_two_processes_equal_one(tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    coordinator = f"localhost:{port}"
    procs = [run(tmp_path / "two", devices=1, extra=(coordinator, "2", str(i)), wait=False)
             for i in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out
    run(tmp_path / "one", devices=1)
    assert_close_graphs(graph.load(tmp_path / "two"), graph.load(tmp_path / "one"))
