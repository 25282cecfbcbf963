"""The paper's modular-addition ablations for the five seeds, LIB against PCA, as
``paper_modadd.py`` runs them: per seed both graphs (train split, one batch, float64) and the
paper's ablations on the test split in float32 with accuracy (node ablation with the exponential
schedule, cutoff 10, base 1.05; edge ablation by bisection, Delta 0.001, tolerance 1), then a
table of the edges each transition needs and seed 0's agreement with the reference numbers of
docs/method.md Appendix A."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from libjax import ablation, pipeline
from libjax.analysis import comparison, reference
from libjax.errors import CheckpointError
from libjax.storage import files
from models.modadd import model as modadd

BASES = comparison.BASES
PLAN = comparison.Plan(pipeline.BuildConfig(batch_size=99999),
                       ablation.Schedule("exponential", ablate_every_vec_cutoff=10, exp_base=1.05),
                       ablation.Bisect(score_target_difference=0.001, scaling="linear",
                                       tolerance=1))

# docs/method.md Appendix A: the reference's seed-0 results (test accuracy, float32).
REF_NO_ABLATION = reference.MODADD_SEED0_ACCURACY
REF_EDGES = reference.MODADD_SEED0_EDGES_REQUIRED
REF_NODE_LIB = reference.MODADD_SEED0_NODE_ABLATION
REF_FLAT = reference.MODADD_SEED0_FLAT


def compare_seed(seed: int, path: Path, out_dir: Path, rerun: bool = False,
                 overwrite: bool = False) -> dict[str, comparison.Outcome]:
    """LIB and PCA graphs of one seed (train split, float64), ablated on the test split in
    float32, with plots."""
    cfg, weights = modadd.load(path)
    train, _ = modadd.split_data("train")
    tokens, labels = modadd.split_data("test")
    ev = ablation.Evaluator(modadd.sectioned_model(weights, cfg, dtype=np.float32), tokens, labels,
                            "accuracy", batch_size=99999, dtype=np.float32)
    outcomes = comparison.compare(
        modadd.sectioned_model(weights, cfg), train, ev, PLAN, out_dir, prefix=f"seed{seed}_",
        common={"model": "modadd", "checkpoint": str(path), "split": "test"},
        model_id=str(path), rerun=rerun, overwrite=overwrite)
    comparison.plot(outcomes, out_dir, prefix=f"seed{seed}_",
                    title=f"modular addition, seed {seed}")
    return outcomes


def node_agreement(record: dict) -> list[str]:
    """Seed-0 LIB node ablation against the reference's points (docs/method.md Appendix A)."""
    lines, worst = [], 0.0
    for name, points in REF_NODE_LIB.items():
        ours = {int(k): v for k, v in record["results"][name].items()}
        flat = [k for k in ours if k >= REF_FLAT[0]]
        diffs = [abs(ours[k] - REF_FLAT[1]) for k in flat]
        diffs += [abs(ours[k] - v) for k, v in points.items()]
        worst = max(worst, max(diffs))
        shown = ", ".join(f"{k}: {ours[k]:.4f} (ref {v})" for k, v in points.items())
        lines.append(f"- {name}: {shown}; {len(flat)} points with >= {REF_FLAT[0]} remaining "
                     f"within {max(abs(ours[k] - REF_FLAT[1]) for k in flat):.5f} of "
                     f"{REF_FLAT[1]}")
    lines.append(f"- largest difference from the reference: {worst:.4f} (required < 0.01)")
    return lines


def table(edges: dict, times: dict) -> list[str]:
    layers = list(REF_EDGES["lib"])
    seeds = sorted(edges)
    head = " | ".join(f"{b} {name}" for name in layers for b in ("LIB", "PCA"))
    lines = [f"| seed | {head} | LIB < PCA everywhere | node + edge ablation, LIB / PCA: wall "
             "(CPU) s |",
             "|---" * (2 + 2 * len(layers)) + "|---|"]
    for seed in seeds:
        cells = " | ".join(f"{edges[seed]['lib'][n]} | {edges[seed]['pca'][n]}" for n in layers)
        fewer = all(edges[seed]["lib"][n] < edges[seed]["pca"][n] for n in layers)
        t = {b: f"{times[seed][b][0]:.1f} ({times[seed][b][1]:.1f})" for b in BASES}
        lines.append(f"| {seed} | {cells} | {'yes' if fewer else 'no'} | "
                     f"{t['lib']} / {t['pca']} |")
    means = " | ".join(f"{np.mean([edges[s]['lib'][n] for s in seeds]):.1f} | "
                       f"{np.mean([edges[s]['pca'][n] for s in seeds]):.1f}" for n in layers)
    lines.append(f"| mean | {means} | | |")
    if 0 in edges:
        ref = " | ".join(f"{REF_EDGES['lib'][n]} | {REF_EDGES['pca'][n]}" for n in layers)
        lines.append(f"| ref. seed 0 | {ref} | | |")
    return lines


def run(seeds: Sequence[int], weights: str, out_dir, rerun: bool = False,
        overwrite: bool = False, say: Callable[[str], None] = print) -> list[str]:
    """Compare LIB and PCA on every seed's checkpoint (``weights`` with ``{seed}``), store the
    graphs, records, plots, ``table.md`` and ``edges_required.json`` under ``out_dir`` (rerun:
    recompute existing records; overwrite: replace graphs built otherwise), tell ``say`` the
    results, and return the table's lines."""
    edges, times, report = {}, {}, []
    out_dir = Path(out_dir).resolve()  # orbax needs absolute paths
    for seed in seeds:
        path = Path(weights.format(seed=seed))
        if not path.exists():
            raise CheckpointError(f"no checkpoint for seed {seed} at {path}; point --weights at "
                                  "the weights_modadd_seed{seed}.npz files")
        outcomes = compare_seed(seed, path, out_dir, rerun, overwrite)
        for basis, o in outcomes.items():
            say(f"seed {seed} {basis}: no ablation {o.node['no_ablation_result']:.7f}, edges "
                f"needed {o.edge['n_edges_required']} ({o.node['time_taken']} node, "
                f"{o.edge['time_taken']} edge)")
        edges[seed] = {b: o.edge["n_edges_required"] for b, o in outcomes.items()}
        times[seed] = {b: [o.node[key] + o.edge[key] for key in ("time_taken_s", "cpu_time_s")]
                       for b, o in outcomes.items()}
        if seed == 0:
            lib = outcomes["lib"].node
            report += [f"Seed 0 unablated test accuracy: {lib['no_ablation_result']:.7f} "
                       f"(reference {REF_NO_ABLATION})", "", "Seed 0 LIB node ablation against "
                       "docs/method.md Appendix A:"] + node_agreement(lib) + [""]
    lines = ["# Edges needed to stay within 0.001 test accuracy (bisection, tolerance 1)", ""]
    lines += table(edges, times) + [""] + report
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")
    files.write_json_atomic(out_dir / "edges_required.json", {str(s): e for s, e in edges.items()})
    say("\n".join(lines))
    say(f"written to {out_dir}")
    return lines
