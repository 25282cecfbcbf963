"""Readable tables of benchmark records (:mod:`benchmarks.run_build`), beside the numbers of the
authors' PyTorch code measured on the same kind of 2-core machine."""

from __future__ import annotations

from benchmarks.measure import PHASES

REFERENCE = {
    "modadd": {"process_s": "21-24", "bases_s": "8.9-11.7", "edges_s": "8.8", "peak_rss": "2.2 GB"},
    "gpt2": {"bases_s_per_sample": 38.0, "edges_s_per_sample": 55.0, "peak_rss": "5.2 GB",
             "batch_size": 2},
}
LABEL = 24
COL = 10


def _num(v: float, width: int) -> str:
    """About three significant digits, no exponent."""
    return f"{v:>{width}.{3 if abs(v) < 1 else 2 if abs(v) < 100 else 1}f}"


def _row(label: str, values) -> str:
    cells = "".join(f"{v:>{COL}}" if isinstance(v, str) else _num(v, COL) for v in values)
    return f"  {label:<{LABEL}}{cells}"


def _rate(flops: float, seconds: float) -> float:
    return flops / seconds if seconds > 0 else float("nan")


def phase_rows(run: dict, cpu_rate: float | None, per: dict | None = None) -> list[str]:
    """Per phase (and for the whole build unless ``per``, which divides by a sample count per
    phase): wall, compile, compute and CPU time, matmul GFLOP, GFLOP per second of compute and
    per CPU second outside compiling, the latter against the matmul's ``cpu_rate``."""
    p = run["phases"]
    keys = ("wall_s", "compile_s", "compute_s", "cpu_s", "compute_cpu_s", "matmul_flops")
    cols = [p[ph] for ph in PHASES]
    divs = [per[ph] for ph in PHASES] if per else [1] * len(PHASES)
    if not per:
        cols.append({k: sum(c[k] for c in cols) for k in keys})
        divs.append(1)
    unit = " [s/sample]" if per else " [s]"
    per_cpu = [_rate(c["matmul_flops"], c["compute_cpu_s"]) for c in cols]
    rows = [_row("wall" + unit, [c["wall_s"] / d for c, d in zip(cols, divs)]),
            _row("compile [s]" + (" (once)" if per else ""), [c["compile_s"] for c in cols]),
            _row("compute" + unit, [c["compute_s"] / d for c, d in zip(cols, divs)]),
            _row("CPU" + unit, [c["cpu_s"] / d for c, d in zip(cols, divs)]),
            _row("cores busy (CPU/wall)", [c["cpu_s"] / c["wall_s"] for c in cols]),
            _row("matmul GFLOP" + ("/sample" if per else ""),
                 [c["matmul_flops"] / d / 1e9 for c, d in zip(cols, divs)]),
            _row("GFLOP/s of compute", [_rate(c["matmul_flops"], c["compute_s"]) / 1e9
                                        for c in cols]),
            _row("GFLOP/CPU-s of compute", [r / 1e9 for r in per_cpu])]
    if cpu_rate:
        rows.append(_row("  % of f64 matmul's", [f"{100 * r / cpu_rate:.0f}%" for r in per_cpu]))
    return rows


def basis_layer_seconds(run: dict) -> dict[str, float]:
    """Seconds per node layer's basis, from the ``basis of X`` lines of the libjax log: a layer
    runs from its line to the next one, the last to the end of the bases phase."""
    marks = [(t, m.removeprefix("basis of ")) for t, m in run["log"] if m.startswith("basis of ")]
    end = run["build_s"] - run["phases"]["edges"]["wall_s"]
    return {name: nxt - t for (t, name), nxt in zip(marks, [t for t, _ in marks[1:]] + [end])}


def _machine(record: dict) -> str:
    rate = record.get("matmul_flops_per_s")
    matmul = (f"float64 matmul {record['matmul_n']}^3 (best of 5, after the builds): "
              f"{rate / 1e9:.0f} GFLOP/s, {record['matmul_flops_per_cpu_s'] / 1e9:.0f} "
              "GFLOP/CPU-s") if rate else "matmul rate not measured"
    return (f"  load {record['load_start']:.1f} -> {record['load_end']:.1f}; "
            f"{record['devices']} device(s); {matmul}")


def modadd_table(record: dict) -> list[str]:
    ref = REFERENCE["modadd"]
    rate = record.get("matmul_flops_per_cpu_s")
    head = ["", "stats", "bases", "edges", "build"]
    lines = [f"(a) modular addition, {record['n_samples']} samples (train split), "
             f"batch_size {record['config']['batch_size']}, fast_paths "
             f"{record['config']['fast_paths']}; {record['source']}",
             f"  whole process (launch -> end of build 1): "
             f"{record['launch_to_first_build_end_s']:.1f} s with an empty compilation cache, "
             f"{record.get('warm_cache_launch_to_build_end_s') or float('nan'):.1f} s with the "
             f"cache of that run (reference {ref['process_s']} s); process exit after "
             f"{record['process_wall_s']:.1f} s",
             _row(head[0], head[1:])]
    for i, run in enumerate(record["runs"]):
        lines.append(f"  run {i + 1}{' (same process)' if i else ''}:")
        lines += phase_rows(run, rate)
    lines += [_row("PyTorch reference [s]", ["-", ref["bases_s"], ref["edges_s"], "-"]),
              f"  peak RSS {record['runs'][0]['peak_rss_gb']:.2f} GiB after build 1 "
              f"({record['rss_before_build_gb']:.2f} GiB resident before it); reference "
              f"{ref['peak_rss']}",
              _machine(record)]
    return lines


def gpt2_table(record: dict) -> list[str]:
    ref = REFERENCE["gpt2"]
    cfg = record["config"]
    run = record["runs"][0]
    n, n_gram = record["n_samples"], record["n_gram_samples"]
    lines = [f"(b) GPT-2-small block ({', '.join(record['node_layers'])}), ctx 128, random "
             f"weights: {n} samples (bases, edges), {n_gram} (Grams); batch {cfg['batch_size']}, "
             f"Gram batch {cfg['gram_batch_size']}, fast_paths {cfg['fast_paths']}",
             f"  data: {record['source']}; build {run['build_s']:.1f} s, whole process "
             f"{record['process_wall_s']:.1f} s",
             _row("", ["Grams", "bases", "edges"])]
    lines += phase_rows(run, record.get("matmul_flops_per_cpu_s"),
                        per={"stats": n_gram, "bases": n, "edges": n})
    layers = basis_layer_seconds(run)
    lines += [_row("PyTorch ref. [s/sample]",
                   ["-", ref["bases_s_per_sample"], ref["edges_s_per_sample"]]),
              "  bases per layer [s, all samples]: " +
              ", ".join(f"{name} {t:.1f}" for name, t in layers.items()),
              f"  peak RSS {run['peak_rss_gb']:.2f} GiB ({record['rss_before_build_gb']:.2f} GiB "
              f"resident before the build, peak {record['peak_rss_before_build_gb']:.2f} GiB while "
              f"preparing the model); reference {ref['peak_rss']} at batch {ref['batch_size']}",
              _machine(record)]
    return lines


def scaling_table(records: list[dict]) -> list[str]:
    """One row per process; ``CPU/base`` is the build's CPU time over that of the same model's
    first row (1 device and the base sample count); ``eff`` the build's matmul GFLOP per CPU
    second outside compiling, against the matmul's."""
    head = ["samples", "devices", "process", "stats", "bases", "edges", "build", "compile",
            "CPU", "CPU/base", "eff", "peak GiB", "load"]
    lines = ["(c) scaling: each row its own process and its first build (compile included) [s];",
             "  process = launch -> end of the build",
             "  " + f"{'model':<8}" + "".join(f"{h:>{COL - 1}}" for h in head)]
    base = {}
    for r in records:
        if "error" in r:
            lines.append(f"  {r['name']}: {r['error']}")
            continue
        run = r["runs"][0]
        phases = run["phases"].values()
        base.setdefault(r["model"], run["cpu_s"])
        flops_per_cpu = _rate(sum(p["matmul_flops"] for p in phases),
                              sum(p["compute_cpu_s"] for p in phases))
        eff = f"{100 * flops_per_cpu / r['matmul_flops_per_cpu_s']:.0f}%" \
            if r.get("matmul_flops_per_cpu_s") else "-"
        cells = [r["n_samples"], r["devices"], r["launch_to_first_build_end_s"],
                 *(run["phases"][ph]["wall_s"] for ph in PHASES), run["build_s"],
                 sum(p["compile_s"] for p in phases), run["cpu_s"],
                 run["cpu_s"] / base[r["model"]], eff, run["peak_rss_gb"], run["load"]]
        lines.append("  " + f"{r['model']:<8}" + "".join(
            f"{c:>{COL - 1}}" if isinstance(c, (int, str)) else _num(c, COL - 1) for c in cells))
    return lines


PAPER_GPT2 = {"context": 1024, "samples": 500, "gram_samples": 50_000}


def per_sample(runs: dict, get) -> float:
    """``(get(n2) - get(n1)) / (n2 - n1)`` over the two runs ``{n: run}`` of one context."""
    (n1, r1), (n2, r2) = sorted(runs.items())
    return (get(r2) - get(r1)) / (n2 - n1)


def context_table(records: list[dict]) -> list[str]:
    """Part (d): per context, the cost per sample of the bases and the edges (compute wall and
    CPU seconds, matmul GFLOP), the Gram throughput, the peak RSS, the steps that cost most per
    sample; then the projection of the paper's block build at its context."""
    by_ctx: dict[int, dict[int, dict]] = {}
    lines = ["(d) context scaling: GPT-2-small block 6, random weights, the family's defaults "
             "(one position source, batch 3, Gram batch 4); per sample = difference of two "
             "builds, compile excluded"]
    for r in records:
        if "error" in r:
            lines.append(f"  {r['name']}: {r['error']}")
            continue
        ctx = r["context"]
        by_ctx.setdefault(ctx, {})[r["n_samples"]] = r
    head = ["bases wall", "bases CPU", "bases GF", "edges wall", "edges CPU", "edges GF",
            "Gram tok/s", "peak GiB", "dims same"]
    lines.append("  " + f"{'context':<8}" + "".join(f"{h:>{COL + 1}}" for h in head))
    projections = {}
    for ctx, recs in sorted(by_ctx.items()):
        if len(recs) != 2:
            continue
        runs = {n: rec["runs"][0] for n, rec in recs.items()}
        phase = lambda ph, key: per_sample(runs, lambda r: r["phases"][ph][key])  # noqa: E731
        big = recs[max(recs)]
        stats = big["runs"][0]["phases"]["stats"]
        tokens_per_s = big["n_gram_samples"] * ctx / stats["compute_s"]
        dims = len({tuple(sorted(run["dims"].items())) for run in runs.values()}) == 1
        cells = [phase("bases", "compute_s"), phase("bases", "compute_cpu_s"),
                 phase("bases", "matmul_flops") / 1e9, phase("edges", "compute_s"),
                 phase("edges", "compute_cpu_s"), phase("edges", "matmul_flops") / 1e9,
                 tokens_per_s, max(run["peak_rss_gb"] for run in runs.values()),
                 "yes" if dims else "NO"]
        lines.append("  " + f"{ctx:<8}" + "".join(
            f"{c:>{COL + 1}}" if isinstance(c, str) else _num(c, COL + 1) for c in cells))
        n1, small = min(runs), runs[min(runs)]
        fixed = sum(small["phases"][ph]["compute_s"] for ph in ("bases", "edges")) - n1 * (
            phase("bases", "compute_s") + phase("edges", "compute_s"))
        projections[ctx] = (fixed, phase("bases", "compute_s") + phase("edges", "compute_s"),
                            tokens_per_s)
        steps = {key: per_sample(runs, lambda r, k=key: r["steps"][k]["compute_cpu_s"])
                 for key in small.get("steps", {})}
        total = sum(steps.values()) or 1.0
        top = sorted(steps.items(), key=lambda kv: -kv[1])[:4]
        lines.append("      per sample, CPU-s: " + ", ".join(
            f"{k} {v:.2f} ({100 * v / total:.0f}%)" for k, v in top))
    paper = PAPER_GPT2
    if paper["context"] in projections:
        fixed, per, tokens_per_s = projections[paper["context"]]
        grams = paper["gram_samples"] * paper["context"] / tokens_per_s
        total = fixed + paper["samples"] * per + grams
        lines.append(f"  projected paper build of one block at context {paper['context']} on this "
                     f"machine: Grams {grams / 3600:.1f} h ({paper['gram_samples']} samples) + "
                     f"bases and edges {paper['samples'] * per / 3600:.1f} h ({paper['samples']} "
                     f"samples) + {fixed:.0f} s fixed = {total / 3600:.1f} h of compute")
    lines.append(_machine(records[-1]) if records and "error" not in records[-1] else "")
    return lines
