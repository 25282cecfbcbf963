"""The cost of a language model's ablations against one forward pass of the evaluation set
(issue 22, point 7): one node-ablation point and a whole edge bisection of each transition, with
the default edge forward (masked products, MLP and attention rows from their own input nodes where a
section has them) and, with ``--general``, the general path (one section evaluation per row
pattern) that they replaced, whose results must be the same.

    python benchmarks/ablation_speed.py --graph_dir=out/smollm2_l15 --pairs=all --general=all \
        --n_samples=4
    python benchmarks/ablation_speed.py --random_gpt2 --context=1024 --n_samples=1 \
        --pairs=ln2_out.6,mlp_in.6 --general=ln2_out.6

``--graph_dir``: a stored language-model build (its held-out chunks). ``--random_gpt2``: block 6
of a GPT-2-small-sized model with seeded random weights, built here on a few random-token samples
(``--build_samples``, Grams on ``--gram_samples``) and evaluated on ``--n_samples`` other ones.

Times are wall and CPU seconds after compilation (each program runs once before it is timed,
except the bisections, whose compile is reported apart). Prints one JSON line per transition and
one summary line, with the peak memory and the matmul rate measured in the same process, so
figures from machines of different speed compare; ``--out`` writes them as one JSON file too
(the accelerator run's ``ablation`` part, :mod:`benchmarks.accelerator`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import measure
from libjax import ablation, pipeline
from libjax.ablation import experiments
from libjax.runtime import precision

_GRAPH_DIR = flags.DEFINE_string("graph_dir", None, "a finished language-model build")
_RANDOM_GPT2 = flags.DEFINE_bool("random_gpt2", False, "block 6 of a random GPT-2-small-sized "
                                 "model, built here, instead of --graph_dir")
_RANDOM_SIZE = flags.DEFINE_enum("random_size", "small", ["small", "tiny"], "--random_gpt2: "
                                 "GPT-2 small, or a tiny stand-in (block 1 of 2; dry runs)")
_CONTEXT = flags.DEFINE_integer("context", 1024, "--random_gpt2: tokens per sample")
_BUILD_SAMPLES = flags.DEFINE_integer("build_samples", 2, "--random_gpt2: samples for bases and "
                                      "edges")
_GRAM_SAMPLES = flags.DEFINE_integer("gram_samples", 4, "--random_gpt2: samples for the Grams")
_PAIRS = flags.DEFINE_list("pairs", None, "input node layers of the transitions to bisect, or "
                           "'all' (default: the MLP's, ln2_out.<block>)")
_GENERAL = flags.DEFINE_list("general", [], "input node layers (or 'all') whose transitions "
                             "are also bisected with the general path (the cost before the "
                             "shortcuts), results compared")
_N_SAMPLES = flags.DEFINE_integer("n_samples", 20, "evaluation chunks")
_BATCH = flags.DEFINE_integer("batch_size", None, "evaluation batch (default: the model's)")
_DELTA = flags.DEFINE_float("score_target_difference", None, "bisection Delta (default: model's)")
_OUT = flags.DEFINE_string("out", None, "also write every printed record to this JSON file")

RANDOM_SIZES = {  # GPT-2 configurations of --random_gpt2
    "small": {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12,
              "vocab_size": 50257, "n_positions": 1024, "activation_function": "gelu_new"},
    "tiny": {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 512,
             "n_positions": 128, "activation_function": "gelu_new"}}


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def _stored():
    """``(evaluator, graph, Delta, description)`` of ``--graph_dir``."""
    from models.opened import open_build
    built = open_build(_GRAPH_DIR.value, dtype="float32")
    family, graph = built.family, built.graph
    defaults = family.ablation_defaults(built.opts)
    opts = dataclasses.replace(built.opts, n_samples=_N_SAMPLES.value)
    data = family.evaluation_data(opts, built.info, None)
    ev = ablation.Evaluator(family.load(opts, graph.node_layers), data.inputs, data.labels,
                            defaults["metric"], _BATCH.value or defaults["batch_size"],
                            np.float32)
    return ev, graph, defaults["score_target_difference"], str(built.directory)


def _random_gpt2():
    """The same for block 6 (or the last) of a random GPT-2 model of ``--random_size`` at
    ``--context``, next-token labels on uniform random tokens (the build's samples first, then
    the evaluation's)."""
    from models.lm import gpt2
    from models.lm import model as lm
    cfg = gpt2.config(RANDOM_SIZES[_RANDOM_SIZE.value])
    block = min(6, cfg.n_layers - 1)
    rng = np.random.default_rng(0)
    weights = {name: (1.0 if name.endswith(".w") else 0.0)
               + 0.02 * rng.standard_normal(shape, np.float32)
               for name, shape in lm.expected_shapes(cfg).items()}
    ctx = _CONTEXT.value
    model = lm.sectioned_model("gpt2", cfg, weights, lm.block_node_layers(block, cfg.n_layers),
                               ctx)
    n_build = max(_BUILD_SAMPLES.value, _GRAM_SAMPLES.value)
    tokens = rng.integers(0, cfg.d_vocab, (n_build + _N_SAMPLES.value, ctx + 1)).astype(np.int32)
    config = pipeline.BuildConfig(**{**gpt2.FAMILY.build_defaults(None), "batch_size": 2,
                                     "edge_batch_size": 2, "gram_batch_size": 2})
    graph = pipeline.build(model, tokens[:_BUILD_SAMPLES.value, :ctx], config,
                           gram_inputs=tokens[:_GRAM_SAMPLES.value, :ctx])
    evaluation = tokens[n_build:]
    ev = ablation.Evaluator(model, evaluation[:, :ctx], evaluation[:, 1:], "ce_loss",
                            _BATCH.value or 1, np.float32)
    return ev, graph, 0.05, f"random GPT-2 {_RANDOM_SIZE.value}, block {block}, context {ctx}"


def _bisect(ev, graph, pair, cfg, general: bool):
    """One whole bisection (the default path, or the general one) and its compile time."""
    forward = (functools.partial(ablation.EdgeForward, try_affine=False, try_products=False)
               if general else ablation.EdgeForward)
    compile_log = measure.CompileLog()
    t0 = time.perf_counter()
    original, experiments.EdgeForward = experiments.EdgeForward, forward
    try:
        result, wall, cpu = _timed(lambda: ablation.edge_ablation(ev, graph, [pair], cfg))
    finally:
        experiments.EdgeForward = original
    return result[pair[0]], wall, cpu, compile_log.seconds_in(t0, time.perf_counter())


def main(argv):
    del argv
    precision.enable_for("float64")
    if _RANDOM_GPT2.value == bool(_GRAPH_DIR.value):
        raise app.UsageError("give one of --graph_dir and --random_gpt2")
    ev, graph, delta, source = _random_gpt2() if _RANDOM_GPT2.value else _stored()
    if _DELTA.value is not None:
        delta = _DELTA.value
    pairs = list(graph.edge_pairs)
    if _PAIRS.value == ["all"]:
        chosen = pairs
    else:
        names = _PAIRS.value or [next(a for a, _ in pairs if a.startswith("ln2_out"))]
        chosen = [(a, dict(pairs)[a]) for a in names]

    def forward():
        ev._base = None
        return ev.base()
    forward()
    _, fwd_s, fwd_cpu = _timed(forward)
    a = chosen[0][0]
    index, basis = graph.node_layers.index(a), graph.basis(a)
    rot = ablation.rotation_matrix(basis.C, basis.C_pinv, basis.C.shape[1] // 2)
    ev.node_score(index, rot)
    _, node_s, node_cpu = _timed(lambda: ev.node_score(index, rot))
    cfg = ablation.Bisect(delta)
    head = {"source": source, "eval_tokens": int(sum(np.asarray(w).sum() for _, _, w in
                                                     ev.batches) * ev.batches[0][0].shape[1]),
            "forward_s": round(fwd_s, 3), "forward_cpu_s": round(fwd_cpu, 3),
            "node_point_s": round(node_s, 3), "node_point_cpu_s": round(node_cpu, 3)}
    record = {"head": head, "transitions": []}
    _emit(record, head)
    for pair in chosen:
        line = {"transition": f"{pair[0]}->{pair[1]}"}
        general = _GENERAL.value == ["all"] or pair[0] in _GENERAL.value
        for name in (("products", "general") if general else ("products",)):
            r, wall, cpu, compile_s = _bisect(ev, graph, pair, cfg, name == "general")
            line[name] = {"s": round(wall, 2), "cpu_s": round(cpu, 2),
                          "compile_s": round(compile_s, 2), "evaluations": len(r.scores),
                          "edges_required": r.n_edges_required,
                          "in_forwards": round((wall - compile_s) / fwd_s, 1)}
            line.setdefault("results", []).append(r)
        results = line.pop("results")
        if len(results) == 2:
            line["same_edges_required"] = results[0].n_edges_required == results[1].n_edges_required
            line["same_probes"] = list(results[0].scores) == list(results[1].scores)
            line["max_rel_loss_diff"] = float(max(
                abs(s - results[1].scores[k]) / abs(results[1].scores[k])
                for k, s in results[0].scores.items() if k in results[1].scores))
        record["transitions"].append(line)
        _emit(record, line)
    rates = measure.matmul_rates()
    record["machine"] = {"peak_rss_gb": round(measure.peak_rss_gb(), 2),
                         "peak_device_gb": measure.peak_device_gb(),
                         "devices": str(jax.devices()),
                         **{f"matmul_gflops_{k}": round(v / 1e9, 1) for k, v in rates.items()}}
    _emit(record, record["machine"])


def _emit(record: dict, line: dict) -> None:
    """Print ``line``; with ``--out``, write everything so far (a stopped run keeps it)."""
    print(json.dumps(line), flush=True)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    app.run(main)
