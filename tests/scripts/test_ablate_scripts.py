"""The command-line tools: errors a user can fix end cleanly; slow: build, ablate and plot the
shipped model end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_missing_graph_dir_is_a_clean_error(tmp_path):
    for script in ("ablate.py", "plot_graph.py"):
        result = _run(script, f"--graph_dir={tmp_path / 'nothing'}")
        assert result.returncode == 2
        assert "error:" in result.stderr and "compute_basis" in result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_build_ablate_and_plot_the_shipped_model(tmp_path):
    graph_dir = tmp_path / "modadd_lib"
    built = _run("compute_basis.py", f"--out_dir={graph_dir}")
    assert built.returncode == 0, built.stderr
    ablated = _run("ablate.py", f"--graph_dir={graph_dir}", "--n_samples=500")
    assert ablated.returncode == 0, ablated.stderr
    out = graph_dir / "ablations"
    edge = json.loads((out / "modadd_lib_edge_ablation_results.json").read_text())
    node = json.loads((out / "modadd_lib_lib_ablation_results.json").read_text())
    assert set(edge["n_edges_required"]) == {"ln1.0", "ln2.0", "unembed"}
    assert set(node["results"]) == {"ln1.0", "ln2.0", "unembed"}
    for stem in ("modadd_lib_lib_ablation", "modadd_lib_edge_ablation"):
        assert (out / f"{stem}.png").stat().st_size > 0 and (out / f"{stem}.svg").exists()
    bad = _run("ablate.py", f"--graph_dir={graph_dir}", "--ablations=node", "--node_layers=output")
    assert bad.returncode == 2 and "cannot be node-ablated" in bad.stderr
    drawn = _run("plot_graph.py", f"--graph_dir={graph_dir}",
                 f"--edge_results={out / 'modadd_lib_edge_ablation_results.json'}")
    assert drawn.returncode == 0, drawn.stderr
    assert (graph_dir / "graph.png").stat().st_size > 0
