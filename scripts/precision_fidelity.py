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

import os
import subprocess
import sys
from pathlib import Path

from absl import flags

from libjax.analysis import precision_fidelity as fidelity
from libjax.pipeline.config import RELATIVE_TRUNCATION
from libjax.runtime import cli
from models import script_flags

ROOT = Path(__file__).resolve().parents[1]
MODADD_SEEDS = ",".join(str(ROOT.parent / "shared" / "data" / f"weights_modadd_seed{s}.npz")
                        for s in range(5))

_MODEL = flags.DEFINE_enum("model", "modadd", ["modadd", "mlp", "gpt2_block"], "what to build")
_CHECKPOINTS = flags.DEFINE_string(
    "checkpoints", None, "comma-separated checkpoints (default: the five modadd seeds for modadd, "
    "the shipped digits MLP for mlp)")
_OUT_DIR = script_flags.define("out_dir", "out/precision", "where builds, ablations, table go")
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
        dirs = {v: _built(checkpoint, v, out) for v in fidelity.VARIANTS}
        new = fidelity.rows(Path(checkpoint).stem or _MODEL.value, dirs, _ablating())
        print("\n".join(new), flush=True)
        rows += new
    table = fidelity.HEADER + "\n" + "\n".join(rows) + "\n"
    (out / f"fidelity_{_MODEL.value}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    cli.run(main, float64=False)
