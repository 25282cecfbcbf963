"""Fidelity of the mixed precision policy: each model built (and ablated) in float64 and in mixed,
compared in a Markdown table.

    python scripts/precision_fidelity.py --out_dir=out/precision      # the five modadd seeds
    python scripts/precision_fidelity.py --model=mlp --out_dir=out/precision   # the digits MLP
    python scripts/precision_fidelity.py --model=gpt2_block --out_dir=out/precision
    python scripts/precision_fidelity.py --checkpoints=../shared/data/weights_modadd_seed0.npz \\
        --ablate=false

Per node layer: directions kept, the number of Lambdas above 1e-4 of the layer's largest, the
largest relative error of the leading Lambdas (above 1e-2 of the largest; target 1e-4), the edge
sums' relative difference, the edges each transition requires (``ablate.py``'s bisection,
``Delta = 0.001``; target: within 5%) and the largest node-ablation accuracy difference over the
paper's points (target 0.01). The Lambda and edge-sum errors are given twice: against the float64
build, and against a float64 build truncated at the mixed policy's relative threshold, which
separates what float32 arithmetic loses from what the different truncation changes.

``modadd`` and ``mlp`` builds and ablations are runs of ``compute_basis.py`` / ``ablate.py`` (the
mixed ones with JAX's 64-bit types off, as on a TPU); ``gpt2_block`` is block 6 of a
GPT-2-small-sized model with random weights at context 128 with the paper's settings (one position
source), built by ``benchmarks/run_build.py`` (no ablation: the weights are random). Finished
builds are reused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from absl import flags

from libjax.pipeline.config import RELATIVE_TRUNCATION
from libjax.runtime import cli
from libjax.storage import graph as graph_lib

ROOT = Path(__file__).resolve().parents[1]
# float64, float64 truncated as mixed is, mixed
VARIANTS = ("float64", "float64_rel", "mixed")
MODADD_SEEDS = ",".join(str(ROOT.parent / "shared" / "data" / f"weights_modadd_seed{s}.npz")
                        for s in range(5))

_MODEL = flags.DEFINE_enum("model", "modadd", ["modadd", "mlp", "gpt2_block"], "what to build")
_CHECKPOINTS = flags.DEFINE_string(
    "checkpoints", None, "comma-separated checkpoints (default: the five modadd seeds for modadd, "
    "the shipped digits MLP for mlp)")
_OUT_DIR = flags.DEFINE_string("out_dir", "out/precision", "where builds, ablations, table go")
_ABLATE = flags.DEFINE_boolean("ablate", True, "also compare the edge and node ablations")
_ARGS = flags.DEFINE_string("build_args", "", "extra build flags, space-separated")
_BLOCK_SAMPLES = flags.DEFINE_integer("block_samples", 4, "gpt2_block: samples for bases, edges")
_BLOCK_GRAM = flags.DEFINE_integer("block_gram_samples", 16, "gpt2_block: samples for the Grams")


def _run(script: str, *args: str, x64: bool) -> None:
    env = {**os.environ, "JAX_ENABLE_X64": "1" if x64 else "0"}
    done = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{script} {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def _policy_args(variant: str) -> list[str]:
    policy = "mixed" if variant == "mixed" else "float64"
    rel = ([f"--relative_truncation_threshold={RELATIVE_TRUNCATION['mixed']}"]
           if variant == "float64_rel" else [])
    return [f"--precision={policy}", *rel]


def _built(checkpoint: str, variant: str, out: Path) -> Path:
    """The build (and, for float64 and mixed, the ablations) of one checkpoint in one variant."""
    directory = out / f"{Path(checkpoint).stem or _MODEL.value}_{variant}"
    x64 = variant != "mixed"
    if not (directory / "summary.json").exists():
        if _MODEL.value == "gpt2_block":
            directory.mkdir(parents=True, exist_ok=True)
            _run("benchmarks/run_build.py", "--model=gpt2", f"--graph_dir={directory}",
                 f"--out={directory}.json", f"--n_samples={_BLOCK_SAMPLES.value}",
                 f"--n_gram_samples={_BLOCK_GRAM.value}", "--matmul_n=0",
                 *_policy_args(variant), *_ARGS.value.split(), x64=x64)
        else:
            checkpoint_args = [f"--checkpoint={checkpoint}"] if checkpoint else []
            _run("scripts/compute_basis.py", f"--model={_MODEL.value}", *checkpoint_args,
                 *_policy_args(variant), f"--out_dir={directory}", *_ARGS.value.split(),
                 x64=x64)
    if _ablating() and variant != "float64_rel" and not (directory / "ablations").is_dir():
        _run("scripts/ablate.py", f"--graph_dir={directory}", "--plot=false", x64=x64)
    return directory


def _ablating() -> bool:
    return _ABLATE.value and _MODEL.value != "gpt2_block"


def _ablations(directory: Path):
    node = json.loads(next((directory / "ablations").glob("*_lib_ablation_results.json"))
                      .read_text())
    edge = json.loads(next((directory / "ablations").glob("*_edge_ablation_results.json"))
                      .read_text())
    return node["results"], edge["n_edges_required"]


def _leading_error(reference: np.ndarray, other: np.ndarray) -> float:
    """Largest relative error of ``other``'s leading Lambdas: the ``n`` largest of each, ``n``
    those of ``reference`` above 1e-2 of its largest (sorted: the constant and an isolated
    variance keep their places in a basis, not their rank)."""
    reference, other = np.sort(reference)[::-1], np.sort(other)[::-1]
    n = int(np.sum(reference > 1e-2 * reference[0]))
    return float(np.max(np.abs(other[:n] - reference[:n]) / reference[:n]))


def _rows(name: str, dirs: dict[str, Path]) -> list[str]:
    graphs = {v: graph_lib.load(d) for v, d in dirs.items()}
    ref, rel, mixed = (graphs[v] for v in VARIANTS)
    if _ablating():
        (node_r, edges_r), (node_m, edges_m) = _ablations(dirs["float64"]), _ablations(dirs["mixed"])
    rows = []
    for layer in ref.node_layers:
        bases = [g.bases.get(layer) for g in (ref, rel, mixed)]
        cells = [name, layer]
        if bases[0] is not None and bases[0].Lambda is not None:
            lam_r, lam_rel, lam_m = (b.Lambda for b in bases)
            above = [int(np.sum(v > 1e-4 * v.max())) for v in (lam_r, lam_m)]
            cells += [" / ".join(str(b.dim) for b in bases), f"{above[0]} / {above[1]}",
                      f"{_leading_error(lam_r, lam_m):.1e} / {_leading_error(lam_rel, lam_m):.1e}"]
        else:
            cells += ["", "", ""]
        pair = next(((a, b) for a, b in ref.edges if a == layer), None)
        if pair is None:
            cells += ["", ""]
        else:
            total = mixed.edges[pair].sum()
            cells.append(f"{total / ref.edges[pair].sum() - 1:+.1e} / "
                         f"{total / rel.edges[pair].sum() - 1:+.1e}")
            if _ablating():
                e_r, e_m = edges_r[layer], edges_m[layer]
                cells.append(f"{e_r} / {e_m} ({100 * (e_m / e_r - 1):+.1f}%)")
            else:
                cells.append("")
        if _ablating() and layer in node_r:
            points = sorted(set(node_r[layer]) & set(node_m[layer]), key=int)
            node = max(abs(node_r[layer][p] - node_m[layer][p]) for p in points)
            cells.append(f"{node:.4f} ({len(points)} points)")
        else:
            cells.append("")
        rows.append("| " + " | ".join(cells) + " |")
    return rows


HEADER = ("| model | node layer | kept f64 / f64 at mixed's truncation / mixed | "
          "Lambdas > 1e-4 max f64 / mixed | leading Lambda max rel. error vs f64 / vs f64 at "
          "mixed's truncation | edge sum rel. diff vs f64 / vs f64 at mixed's truncation | "
          "edges required f64 / mixed | node ablation max abs. diff |\n|" + "---|" * 8)


def _checkpoints() -> list[str]:
    if _MODEL.value == "gpt2_block":
        return ["gpt2_block6_random"]
    given = _CHECKPOINTS.value
    if given is None:
        return MODADD_SEEDS.split(",") if _MODEL.value == "modadd" else [""]
    return cli.comma_list(given) or []


def main(argv):
    del argv
    out = Path(_OUT_DIR.value)
    rows = []
    for checkpoint in _checkpoints():
        dirs = {v: _built(checkpoint, v, out) for v in VARIANTS}
        new = _rows(Path(checkpoint).stem or _MODEL.value, dirs)
        print("\n".join(new), flush=True)
        rows += new
    table = HEADER + "\n" + "\n".join(rows) + "\n"
    (out / f"fidelity_{_MODEL.value}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    cli.run(main, float64=False)
