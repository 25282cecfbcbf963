"""The mixed policy from the command line in a process with JAX's 64-bit types off, as on a TPU:
build (the choice printed and recorded), ablate and plot the shipped model; the build then
resumes only as mixed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script, *args, x64="0"):
    env = {**os.environ, "JAX_ENABLE_X64": x64}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env=env)


@pytest.mark.slow
def test_build_ablate_and_plot_the_shipped_model_with_x64_off(tmp_path):
    graph_dir = tmp_path / "mixed"
    built = _run("compute_basis.py", "--precision=mixed", f"--out_dir={graph_dir}")
    assert built.returncode == 0, built.stderr
    assert "precision: mixed" in built.stdout
    assert json.loads((graph_dir / "build.json").read_text())["config"]["precision"] == "mixed"
    assert "float64" not in built.stderr  # no float64 was asked for (JAX warns when it is)
    ablated = _run("ablate.py", f"--graph_dir={graph_dir}", "--n_samples=500")
    assert ablated.returncode == 0, ablated.stderr
    assert "float64" not in ablated.stderr
    edge = json.loads((graph_dir / "ablations" / "mixed_edge_ablation_results.json").read_text())
    assert set(edge["n_edges_required"]) == {"ln1.0", "ln2.0", "unembed"}
    drawn = _run("plot_graph.py", f"--graph_dir={graph_dir}")
    assert drawn.returncode == 0, drawn.stderr
    assert (graph_dir / "graph.png").stat().st_size > 0
    again = _run("compute_basis.py", f"--out_dir={graph_dir}", x64="1")  # float64 by default
    assert again.returncode == 2 and "differs in: config" in again.stderr
