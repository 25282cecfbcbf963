"""The command-line entry points, run as a user runs them."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from libjax.storage import graph

ROOT = Path(__file__).resolve().parents[2]


def run_script(name, *args, timeout=600, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def test_compute_basis_builds_and_summarises(tmp_path):
    out = tmp_path / "graph"
    result = run_script("compute_basis.py", "--n_samples=150", f"--out_dir={out}")
    assert result.returncode == 0, result.stderr
    for text in ("ln1.0", "unembed->output", "edges with 99%", "time: stats"):
        assert text in result.stdout
    g = graph.load(out)
    assert g.node_layers == ("ln1.0", "ln2.0", "unembed", "output")
    assert g.bases["ln1.0"].kind == "lib" and np.all(g.edges[("ln1.0", "ln2.0")] >= 0)
    # The same command again resumes: nothing is recomputed, the graph is unchanged.
    again = run_script("compute_basis.py", "--n_samples=150", f"--out_dir={out}")
    assert again.returncode == 0 and "resuming" in again.stderr
    assert np.array_equal(graph.load(out).edges[("ln2.0", "unembed")],
                          g.edges[("ln2.0", "unembed")])


def test_default_output_directory_is_relative_to_the_working_directory(tmp_path):
    result = run_script("compute_basis.py", "--n_samples=40", "--noedges", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert graph.load(tmp_path / "out" / "modadd_lib").bases["ln1.0"].kind == "lib"


@pytest.mark.parametrize("args,message", [
    (["--model=resnet"], "unknown model 'resnet'"),
    (["--node_layers=ln1.0,nope,output"], "unknown node layer 'nope'"),
    (["--checkpoint=/nonexistent.npz"], "does not exist"),
    (["--basis=neuron"], "cannot be centred"),
    (["--integration=gradient", "--n_intervals=3"], "takes no intervals"),
    (["--save_every_minutes=-1"], "--save_every_minutes must be a finite number >= 0"),
])
def test_bad_input_ends_with_a_message_not_a_traceback(tmp_path, args, message):
    result = run_script("compute_basis.py", *args, f"--out_dir={tmp_path / 'o'}", "--n_samples=10")
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_sigterm_outside_a_build_ends_a_script_as_usual():
    """Only a running build defers SIGTERM (to save its progress); any other script dies at once,
    as without libjax's handler."""
    main = ("import sys, time; from libjax.runtime import cli; "
            "cli.run(lambda argv: (print('ready', flush=True), time.sleep(60)))")
    proc = subprocess.Popen([sys.executable, "-c", main], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM


QUICK_CODEGEN_PROBE = """
import os, jax
from libjax.runtime import cli
if os.environ.get("PROBE_BACKEND_FIRST"):
    jax.devices()
cli.use_quick_cpu_codegen()
print(os.environ.get("XLA_FLAGS", ""))
"""


@pytest.mark.parametrize("given, first, expected", [
    ("", "", "--xla_cpu_use_fusion_emitters=false"),
    ("--xla_force_host_platform_device_count=2", "",
     "--xla_force_host_platform_device_count=2 --xla_cpu_use_fusion_emitters=false"),
    ("--xla_cpu_use_fusion_emitters=true", "", "--xla_cpu_use_fusion_emitters=true"),
    ("", "1", ""),  # too late: the backend has read its flags already
])
def test_quick_cpu_codegen_keeps_the_users_flags(given, first, expected):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(XLA_FLAGS=given, PROBE_BACKEND_FIRST=first)
    result = subprocess.run([sys.executable, "-c", QUICK_CODEGEN_PROBE], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected
