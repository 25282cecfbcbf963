"""Fidelity of the mixed precision policy: each model built (and ablated) in float64 and in mixed,
compared in a Markdown table.

    python scripts/precision_fidelity.py --out_dir=out/precision      # the five modadd seeds
    python scripts/precision_fidelity.py --checkpoints=../shared/data/weights_modadd_seed0.npz \\
        --ablate=false

Per node layer: directions kept, the number of Lambdas above 1e-4 of the layer's largest, the
largest relative error of the leading Lambdas (above 1e-2 of the largest; target 1e-4), the edge
sums' relative difference, the edges each transition requires (``ablate.py``'s bisection,
``Delta = 0.001``; target: within 5%) and the largest node-ablation accuracy difference over the
paper's points (target 0.01). Every build and ablation is a run of ``compute_basis.py`` /
``ablate.py`` (the mixed ones with JAX's 64-bit types off, as on a TPU); finished ones are reused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from absl import flags

from libjax.runtime import cli
from libjax.storage import graph as graph_lib

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ("float64", "mixed")

_CHECKPOINTS = flags.DEFINE_string(
    "checkpoints", ",".join(str(ROOT.parent / "shared" / "data" / f"weights_modadd_seed{s}.npz")
                            for s in range(5)), "comma-separated modadd checkpoints")
_OUT_DIR = flags.DEFINE_string("out_dir", "out/precision", "where builds, ablations, table go")
_ABLATE = flags.DEFINE_boolean("ablate", True, "also compare the edge and node ablations")
_ARGS = flags.DEFINE_string("build_args", "", "extra compute_basis.py flags, space-separated")


def _run(script: str, *args: str, x64: bool) -> None:
    env = {**os.environ, "JAX_ENABLE_X64": "1" if x64 else "0"}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{script} {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def _built(checkpoint: str, policy: str, out: Path) -> Path:
    directory = out / f"{Path(checkpoint).stem}_{policy}"
    if not (directory / "summary.json").exists():
        _run("compute_basis.py", f"--checkpoint={checkpoint}", f"--precision={policy}",
             f"--out_dir={directory}", *_ARGS.value.split(), x64=policy == "float64")
    if _ABLATE.value and not (directory / "ablations").is_dir():
        _run("ablate.py", f"--graph_dir={directory}", "--plot=false", x64=policy == "float64")
    return directory


def _ablations(directory: Path):
    node = json.loads(next((directory / "ablations").glob("*_lib_ablation_results.json"))
                      .read_text())
    edge = json.loads(next((directory / "ablations").glob("*_edge_ablation_results.json"))
                      .read_text())
    return node["results"], edge["n_edges_required"]


def _rows(name: str, ref_dir: Path, mixed_dir: Path) -> list[str]:
    ref, mixed = graph_lib.load(ref_dir), graph_lib.load(mixed_dir)
    if _ABLATE.value:
        (node_r, edges_r), (node_m, edges_m) = _ablations(ref_dir), _ablations(mixed_dir)
    rows = []
    for layer in ref.node_layers:
        b_r, b_m = ref.bases.get(layer), mixed.bases.get(layer)
        cells = [name, layer]
        if b_r is not None and b_r.Lambda is not None:
            lam_r, lam_m = b_r.Lambda, b_m.Lambda
            lead = lam_r > 1e-2 * lam_r.max()
            err = np.max(np.abs(lam_m[:lead.sum()] - lam_r[lead]) / lam_r[lead])
            above = [int(np.sum(v > 1e-4 * v.max())) for v in (lam_r, lam_m)]
            cells += [f"{b_r.dim} / {b_m.dim}", f"{above[0]} / {above[1]}", f"{err:.1e}"]
        else:
            cells += ["", "", ""]
        pair = next(((a, b) for a, b in ref.edges if a == layer), None)
        if pair is None:
            cells += ["", ""]
        else:
            cells.append(f"{mixed.edges[pair].sum() / ref.edges[pair].sum() - 1:+.1e}")
            if _ABLATE.value:
                e_r, e_m = edges_r[layer], edges_m[layer]
                cells.append(f"{e_r} / {e_m} ({100 * (e_m / e_r - 1):+.1f}%)")
            else:
                cells.append("")
        if _ABLATE.value and layer in node_r:
            points = sorted(set(node_r[layer]) & set(node_m[layer]), key=int)
            node = max(abs(node_r[layer][p] - node_m[layer][p]) for p in points)
            cells.append(f"{node:.4f} ({len(points)} points)")
        else:
            cells.append("")
        rows.append("| " + " | ".join(cells) + " |")
    return rows


HEADER = ("| model | node layer | kept f64 / mixed | Lambdas > 1e-4 max f64 / mixed | "
          "leading Lambda max rel. error | edge sum rel. diff | edges required f64 / mixed | "
          "node ablation max abs. diff |\n|" + "---|" * 8)


def main(argv):
    del argv
    out = Path(_OUT_DIR.value)
    rows = []
    for checkpoint in cli.comma_list(_CHECKPOINTS.value) or ():
        dirs = [_built(checkpoint, p, out) for p in POLICIES]
        rows += _rows(Path(checkpoint).stem, *dirs)
        print("\n".join(rows[-len(graph_lib.load(dirs[0]).node_layers):]), flush=True)
    table = HEADER + "\n" + "\n".join(rows) + "\n"
    (out / "fidelity.md").write_text(table)
    print(table)


if __name__ == "__main__":
    cli.run(main, float64=False)
