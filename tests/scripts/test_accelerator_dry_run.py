"""The prepared accelerator run (issue 26) in its CPU form, so that it cannot rot before a device
runs it: ``benchmarks/accelerator.sh --dry_run`` with the packages a device may lack made
uninstalled, the graph comparison against the stored CPU summaries, and the time limits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import accelerator

ROOT = Path(__file__).resolve().parents[2]
MISSING_ON_DEVICE = ("igraph", "matplotlib", "torch", "gguf", "datasets")


BLOCKER = """import sys


class _Missing:
    \"\"\"Finds the packages of NAMES absent, as on a device without them. Not sys.modules[name] =
    None: einops probes `name in sys.modules` and would then import a blocked torch.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in NAMES:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: missing on devices)")
        return None


NAMES = %r
sys.meta_path.insert(0, _Missing())
"""


def _env(tmp_path: Path) -> dict:
    """An environment whose every Python process finds ``MISSING_ON_DEVICE`` not installed (a
    ``sitecustomize`` putting a finder first that refuses them)."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(BLOCKER % (MISSING_ON_DEVICE,))
    return {**os.environ, "PYTHONPATH": str(shim), "PYTHON": sys.executable}


def _dry_run(tmp_path: Path, *args: str):
    env, out = _env(tmp_path), tmp_path / "out"
    for name in MISSING_ON_DEVICE:  # the shim works: each import fails in a child process
        probe = subprocess.run([sys.executable, "-c", f"import {name}"], env=env,
                               capture_output=True, text=True)
        assert probe.returncode and "ModuleNotFoundError" in probe.stderr, name
    run = subprocess.run(["bash", "benchmarks/accelerator.sh", "--dry_run", f"--out_dir={out}",
                          *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    logs = "\n".join(f"{p.name}: {p.read_text()[-1500:]}" for p in out.glob("*.log"))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + logs
    result = json.loads((out / "accelerator.json").read_text())
    table = (out / "accelerator.md").read_text()
    assert table.strip() in run.stdout  # the table is printed too
    return {r["part"]: r for r in result["records"]}, table


def _check_precision(parts: dict, precision: str) -> None:
    modadd = parts[f"modadd:{precision}"]
    assert modadd["vs_cpu"]["within"] and modadd["vs_cpu"]["dims_equal"], modadd["vs_cpu"]
    cost = parts[f"gpt2:{precision}"]["per_sample"]
    # three more samples cost counted matmul work in both phases, and the Grams ran
    assert cost["bases_gflop"] > 0 and cost["edges_gflop"] > 0
    assert cost["grams_tokens_per_s"] > 0
    grams = parts[f"grams_all:{precision}"]
    assert grams["blocks"] == 2 and grams["node_layers"] == 2 * 6 + 1  # tiny GPT-2: every block
    assert grams["grams_runs"][1]["tokens_per_s"] > 0
    projection = parts[f"projection:{precision}"]
    assert projection["grams_s"] == pytest.approx(
        accelerator.PAPER["gram_samples"] * accelerator.PAPER["context"]
        / cost["grams_tokens_per_s"])


def test_dry_run_float64_without_the_optional_packages(tmp_path):
    parts, table = _dry_run(tmp_path, "--precisions=float64")
    assert set(parts) == {"platform", "ablation", "modadd:float64", "gpt2:float64",
                          "grams_all:float64", "projection:float64"}
    assert all(r["status"] == "ok" for r in parts.values()), parts
    assert parts["platform"]["platform"]["backend"] == "cpu"
    bisections = parts["ablation"]["transitions"]  # the tiny block's MLP and attention
    assert [t["transition"].split("->")[0] for t in bisections] == ["mlp_in.1", "attn_in.1"]
    assert all(t["products"]["evaluations"] > 2 and t["products"]["in_forwards"] > 0
               for t in bisections)
    assert "attn_in.1->ln2.1" in table and "forwards (compile" in table
    _check_precision(parts, "float64")
    assert "| modadd:float64 | ok |" in table and "within tolerance" in table


@pytest.mark.slow
def test_dry_run_both_precisions(tmp_path):
    parts, _ = _dry_run(tmp_path)
    for precision in ("float64", "mixed"):
        _check_precision(parts, precision)


def test_compare_against_the_cpu_summary():
    reference = json.loads(accelerator.REFERENCE.read_text())["modadd_256"]["float64"]
    same = accelerator.compare(reference, reference, "float64")
    assert same["within"] and same["lambdas_rel"] == 0 and same["edge_sums_rel"] == 0
    off = json.loads(json.dumps(reference))
    name = next(iter(off["lambdas"]))
    off["lambdas"][name][0] *= 1 + 1e-6  # float32-sized: outside float64's, inside mixed's
    assert not accelerator.compare(off, reference, "float64")["within"]
    assert accelerator.compare(off, reference, "mixed")["within"]
    edge = next(iter(off["edge_sums"]))
    off["edge_sums"][edge] *= 1 + 1e-3
    assert not accelerator.compare(off, reference, "mixed")["within"]
    fewer = json.loads(json.dumps(reference))
    fewer["dims"][name] -= 1
    fewer["lambdas"][name] = fewer["lambdas"][name][:2]
    result = accelerator.compare(fewer, reference, "mixed")
    assert not result["dims_equal"] and not result["within"]


def test_a_part_past_its_limit_is_stopped_and_the_rest_runs(tmp_path):
    runner = accelerator.Runner(tmp_path, total_s=60, work=tmp_path)
    slow = runner.run("slow", 1, [sys.executable, "-c", "import time; time.sleep(30)"], None)
    assert slow["status"] == "timeout" and slow["wall_s"] < 10
    out = tmp_path / "quick.json"
    quick = runner.run("quick", 30, [sys.executable, "-c", f"open({str(out)!r}, 'w').write("
                                     "'{\"answer\": 42}')"], out)
    assert quick["status"] == "ok" and quick["answer"] == 42
    late = accelerator.Runner(tmp_path, total_s=5, work=tmp_path)
    skipped = late.run("late", 30, [sys.executable, "-c", "pass"], None)
    assert skipped["status"] == "skipped"
