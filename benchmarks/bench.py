"""Benchmarks of issue 6: per-phase time, compile vs compute, peak memory, matmul FLOP/s.

    python benchmarks/bench.py --out=out/benchmarks.json                 # everything below
    python benchmarks/bench.py --parts=modadd --out=out/modadd.json
    python benchmarks/bench.py --parts=gpt2 --gpt2_samples=4 --gpt2_gram_samples=16
    python benchmarks/bench.py --parts=scaling --scaling=modadd,gpt2 --devices=2,4
    python benchmarks/bench.py --parts=context --contexts=128,256,512,1024

Parts (each configuration in its own process, :mod:`benchmarks.run_build`, so peak RSS and
forced device counts do not mix):

* ``check``: the FLOP counter against hand counts and XLA's cost analysis (:mod:`benchmarks.flops`).
* ``modadd``: (a) the paper's modular-addition build, twice in one process.
* ``gpt2``: (b) one GPT-2-small block (slow: tens of seconds per sample on 2 cores).
* ``scaling``: (c) the models of ``--scaling`` at ``--factors`` times their samples, and with
  ``--devices`` forced CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count``).
* ``context``: (d) the GPT-2-small block at each of ``--contexts``, with the family's default
  settings, built on the two sample counts of ``--context_samples`` so that the difference
  gives the cost per sample of the bases and the edges (and of each step), and on
  ``--context_gram_tokens`` tokens for the Grams; then the projected wall time of the paper's
  build (:func:`benchmarks.report.context_table`). Not in the default ``--parts``: tens of
  minutes on 2 cores.

Prints the tables and writes every number to ``--out`` (JSON). On a shared machine wall times
stretch with the load: the tables also give CPU seconds, and FLOP rates per CPU second against
those of a float64 matmul timed in the same process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from benchmarks import report

HERE = Path(__file__).resolve().parent
PARTS = ("check", "modadd", "gpt2", "scaling", "context")
GPT2_DEFAULTS = ["--batch_size=3", "--gram_batch_size=4"]  # models/lm/gpt2.py's batch sizes

_PARTS = flags.DEFINE_list("parts", list(PARTS[:-1]), f"what to run: {', '.join(PARTS)}")
_OUT = flags.DEFINE_string("out", "out/benchmarks.json", "JSON file with every number")
_MODADD_SAMPLES = flags.DEFINE_integer("modadd_samples", None, "default: the train split (3830)")
_GPT2_SAMPLES = flags.DEFINE_integer("gpt2_samples", 4, "GPT-2 samples for bases and edges")
_GPT2_GRAM = flags.DEFINE_integer("gpt2_gram_samples", 16, "GPT-2 samples for the Grams")
_GPT2_BATCH = flags.DEFINE_integer("gpt2_batch_size", 2, "GPT-2 batch for bases and edges")
_GPT2_GRAM_BATCH = flags.DEFINE_integer("gpt2_gram_batch_size", 4, "GPT-2 batch for the Grams")
_FAST = flags.DEFINE_boolean("fast_paths", True, "BuildConfig.fast_paths")
_PRECISION = flags.DEFINE_enum("precision", "float64", ["float64", "mixed"],
                               "BuildConfig.precision of every build")
_SCALING = flags.DEFINE_list("scaling", ["modadd"], "models to scale: modadd, gpt2")
_FACTORS = flags.DEFINE_list("factors", ["0.25", "4"], "sample-count factors to scale by")
_DEVICES = flags.DEFINE_list("devices", ["2", "4"], "forced CPU device counts to scale to")
_CONTEXTS = flags.DEFINE_list("contexts", ["128", "256", "512", "1024"], "contexts of part (d)")
_CONTEXT_SAMPLES = flags.DEFINE_list("context_samples", ["3", "6"],
                                     "part (d): the two sample counts differenced")
_CONTEXT_GRAM_TOKENS = flags.DEFINE_integer("context_gram_tokens", 8192,
                                            "part (d): tokens for the Grams at every context")
_MATMUL_N = flags.DEFINE_integer("matmul_n", 2048, "size of the float64 matmul timed (0: skip)")
_TIMEOUT = flags.DEFINE_integer("timeout_s", 7200, "limit per process")


def worker(name: str, args: list[str], devices: int, tmp: Path, cache: str | None = None) -> dict:
    """Run one configuration in a fresh process (stderr passes through) and return its record,
    with the whole process's wall time added. XLA's persistent compilation cache is the directory
    ``cache`` under ``tmp`` (default: the run's own, so it starts cold)."""
    out = tmp / f"{name}.json"
    args = [*args, f"--compilation_cache_dir={tmp / 'xla' / (cache or name)}"]
    env = dict(os.environ)
    if devices > 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                            f" --xla_force_host_platform_device_count={devices}").strip()
    launch = time.time()
    cmd = [sys.executable, str(HERE / "run_build.py"), *args, f"--out={out}",
           f"--launch_time={launch}", f"--matmul_n={_MATMUL_N.value}",
           f"--fast_paths={_FAST.value}", f"--precision={_PRECISION.value}"]
    print(f"== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    try:
        run = subprocess.run(cmd, env=env, timeout=_TIMEOUT.value)
        error = f"exit status {run.returncode}" if run.returncode else None
    except subprocess.TimeoutExpired:
        error = f"killed after {_TIMEOUT.value} s"
    if error:
        return {"name": name, "error": error, "command": cmd}
    record = json.loads(out.read_text())
    record.update(name=name, process_wall_s=time.time() - launch, xla_flags=env.get("XLA_FLAGS"))
    return record


def model_args(model: str, factor: float = 1.0) -> list[str]:
    """Worker flags of ``model``'s benchmark configuration with ``factor`` times the samples."""
    if model == "modadd":
        n = round((_MODADD_SAMPLES.value or 3830) * factor)
        return ["--model=modadd", f"--n_samples={n}"]
    return ["--model=gpt2", f"--n_samples={max(1, round(_GPT2_SAMPLES.value * factor))}",
            f"--n_gram_samples={max(1, round(_GPT2_GRAM.value * factor))}",
            f"--batch_size={_GPT2_BATCH.value}", f"--gram_batch_size={_GPT2_GRAM_BATCH.value}"]


def code_version() -> dict:
    """The checkout's commit and its uncommitted changes under libjax/ and models/ (read-only
    git), since timings belong to the code that made them."""
    def git(*args):
        run = subprocess.run(["git", *args], cwd=HERE.parent, capture_output=True, text=True)
        return run.stdout.rstrip() if run.returncode == 0 else None
    status = git("status", "--porcelain", "--", "libjax", "models")
    return {"commit": git("rev-parse", "HEAD"), "changed": status.splitlines() if status else []}


def table(make, record: dict) -> list[str]:
    """``make(record)`` and a blank line, or the failure of the record's process."""
    failed = [f"{record['name']}: {record['error']}"] if "error" in record else None
    return (failed or make(record)) + [""]


def flop_check() -> list[str]:
    run = subprocess.run([sys.executable, str(HERE / "flops.py")], capture_output=True,
                         text=True, timeout=_TIMEOUT.value)
    if run.returncode:
        raise SystemExit(f"the FLOP counter check failed:\n{run.stderr[-3000:]}")
    return run.stdout.splitlines()


def scaling(tmp: Path, results: dict) -> list[dict]:
    """Base runs (reused from parts (a) and (b) when they ran), then the sample factors and the
    device counts, per model of ``--scaling``."""
    records = []
    for model in _SCALING.value:
        base = results.get(model)
        records.append(base if base and "error" not in base else
                       worker(f"{model}_base", model_args(model), 1, tmp))
        for f in map(float, _FACTORS.value):
            records.append(worker(f"{model}_x{f:g}", model_args(model, f), 1, tmp))
        for d in map(int, _DEVICES.value):
            records.append(worker(f"{model}_{d}dev", model_args(model), d, tmp))
    return records


def contexts(tmp: Path) -> list[dict]:
    """Part (d): one process per context and sample count."""
    records = []
    for ctx in map(int, _CONTEXTS.value):
        gram = max(1, _CONTEXT_GRAM_TOKENS.value // ctx)
        for n in map(int, _CONTEXT_SAMPLES.value):
            records.append(worker(f"gpt2_ctx{ctx}_n{n}", [
                "--model=gpt2", f"--context={ctx}", f"--n_samples={n}",
                f"--n_gram_samples={gram}", *GPT2_DEFAULTS], 1, tmp))
    return records


def main(argv):
    del argv
    unknown = set(_PARTS.value) - set(PARTS)
    if unknown:
        raise app.UsageError(f"unknown --parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    results = {"code": code_version(), "cores": os.cpu_count(),
               "reference_pytorch": report.REFERENCE,
               "flop_counting":
               "matmul FLOPs (dot_general) of every jitted call of the build, counted on its "
               "jaxpr with scan bodies multiplied by their trip counts and dead code dropped "
               "(benchmarks/flops.py); host NumPy linear algebra is not counted. Per phase: "
               "GFLOP/s of compute = FLOPs / (wall - compile time); GFLOP/CPU-s = FLOPs / (CPU "
               "time outside compiling), compared with a float64 matmul's GFLOP/CPU-s measured "
               "in the same process (less sensitive to the machine's load than wall rates)"}
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "check" in _PARTS.value:
            results["flop_check"] = flop_check()
            lines += ["FLOP counter check (benchmarks/flops.py):"] + \
                     ["  " + line for line in results["flop_check"]] + [""]
        if "modadd" in _PARTS.value:
            results["modadd"] = worker("modadd", model_args("modadd") + ["--repeats=2"], 1, tmp)
            warm = worker("modadd_warm", model_args("modadd"), 1, tmp, cache="modadd")
            results["modadd"]["warm_cache_launch_to_build_end_s"] = \
                warm.get("launch_to_first_build_end_s")
            lines += table(report.modadd_table, results["modadd"])
        if "gpt2" in _PARTS.value:
            results["gpt2"] = worker("gpt2", model_args("gpt2"), 1, tmp)
            lines += table(report.gpt2_table, results["gpt2"])
        if "scaling" in _PARTS.value:
            results["scaling"] = scaling(tmp, results)
            lines += report.scaling_table(results["scaling"])
        if "context" in _PARTS.value:
            results["context"] = contexts(tmp)
            lines += report.context_table(results["context"])
    Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
    Path(_OUT.value).write_text(json.dumps(results, indent=1))
    print("\n".join(lines + ["", f"all numbers: {_OUT.value}"]))


if __name__ == "__main__":
    app.run(main)
