"""The cost of a language model's ablations against one forward pass of the evaluation set
(issue 22, point 7): one node-ablation point and one whole edge bisection of a transition.

    python benchmarks/ablation_speed.py --graph_dir=out/smollm2_l15 --pair=ln2_out.15 \\
        --n_samples=20

Times are wall and CPU seconds after compilation (each program runs once before it is timed,
except the bisection, whose compile is reported apart). Prints one JSON line with the matmul rate
measured in the same process, so figures from machines of different speed compare.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import measure
from libjax import ablation
from libjax.runtime import precision
from models.opened import open_build

_GRAPH_DIR = flags.DEFINE_string("graph_dir", None, "a finished language-model build",
                                 required=True)
_PAIR = flags.DEFINE_string("pair", None, "input node layer of the transition to bisect "
                            "(default: the MLP's, ln2_out.<block>)")
_N_SAMPLES = flags.DEFINE_integer("n_samples", 20, "evaluation chunks")
_BATCH = flags.DEFINE_integer("batch_size", None, "evaluation batch (default: the model's)")
_DELTA = flags.DEFINE_float("score_target_difference", None, "bisection Delta (default: model's)")


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main(argv):
    del argv
    precision.enable_for("float64")
    built = open_build(_GRAPH_DIR.value, dtype="float32")
    family, graph = built.family, built.graph
    defaults = family.ablation_defaults(built.opts)
    opts = dataclasses.replace(built.opts, n_samples=_N_SAMPLES.value)
    data = family.evaluation_data(opts, built.info, None)
    batch = _BATCH.value or defaults["batch_size"]
    ev = ablation.Evaluator(family.load(opts, graph.node_layers), data.inputs, data.labels,
                            defaults["metric"], batch, np.float32)
    a = _PAIR.value or next(x for x, _ in graph.edge_pairs if x.startswith("ln2_out"))
    b = dict(graph.edge_pairs)[a]
    index = graph.node_layers.index(a)

    def forward():
        ev._base = None
        return ev.base()
    forward()
    _, fwd_s, fwd_cpu = _timed(forward)
    basis = graph.basis(a)
    rot = ablation.rotation_matrix(basis.C, basis.C_pinv, basis.C.shape[1] // 2)
    ev.node_score(index, rot)
    _, node_s, node_cpu = _timed(lambda: ev.node_score(index, rot))
    delta = _DELTA.value if _DELTA.value is not None else defaults["score_target_difference"]
    cfg = ablation.Bisect(delta)
    compile_log = measure.CompileLog()
    t0 = time.perf_counter()
    result, edge_s, edge_cpu = _timed(lambda: ablation.edge_ablation(ev, graph, [(a, b)], cfg))
    compile_s = compile_log.seconds_in(t0, time.perf_counter())
    rates = measure.matmul_rates()
    print(json.dumps({
        "graph_dir": str(built.directory), "transition": f"{a}->{b}",
        "eval_tokens": int(data.inputs.size), "batch_size": batch,
        "forward_s": round(fwd_s, 3), "forward_cpu_s": round(fwd_cpu, 3),
        "node_point_s": round(node_s, 3), "node_point_cpu_s": round(node_cpu, 3),
        "bisection_s": round(edge_s, 2), "bisection_cpu_s": round(edge_cpu, 2),
        "bisection_compile_s": round(compile_s, 2),
        "bisection_evaluations": len(result[a].scores),
        "edges_required": result[a].n_edges_required,
        "bisection_in_forwards": round((edge_s - compile_s) / fwd_s, 1),
        "peak_rss_gb": round(measure.peak_rss_gb(), 2), "devices": str(jax.devices()),
        **{f"matmul_gflops_{k}": round(v / 1e9, 1) for k, v in rates.items()}}))


if __name__ == "__main__":
    app.run(main)
