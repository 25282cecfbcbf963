"""Times the dense attention method alone (issue 26, point 2): ``M'`` head sums and squared edges
of the attention section of a GPT-2-small-sized block (random weights) at each ``--contexts``,
on ``--samples`` random inputs with one position source, the chunks the planner gives under the
family's memory budget, compile excluded (each call runs once to compile, then is timed).

    python benchmarks/dense_attention.py --contexts=128,1024 --samples=1

Per context and computation: wall and CPU seconds per sample, counted matmul GFLOP per sample
(:mod:`benchmarks.flops`) and GFLOP per CPU-second, beside the float64 2048^2 matmul's rate per
CPU-second measured in the same process just before. On a loaded machine compare CPU-second
rates, and run before/after checkouts alternately (``PYTHONPATH`` picks the checkout: the
script imports libjax from the repository it sits in).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from benchmarks import flops, measure, run_build
from libjax.forms.attention import plan as plan_lib
from libjax.runtime import cli
from models.lm import gpt2
from models.lm import model as lm

_CONTEXTS = flags.DEFINE_list("contexts", ["128", "1024"], "contexts timed")
_SAMPLES = flags.DEFINE_integer("samples", 1, "samples per call")
_OUT_DIM = flags.DEFINE_integer("out_dim", 768, "width of the next node layer's basis")
_IN_DIM = flags.DEFINE_integer("in_dim", 1535, "width of the input basis (edges)")
_BUDGET = flags.DEFINE_float("budget_gb", 0.25, "memory budget of the planner")
_JSON = flags.DEFINE_string("json", None, "also write the records here")


def section(ctx: int):
    """The attention form and parameters of block 6 of the random GPT-2-small model."""
    cfg = gpt2.config(run_build.GPT2_SMALL)
    model = lm.sectioned_model("gpt2", cfg, run_build.gpt2_weights(cfg, 0),
                         lm.block_node_layers(run_build.GPT2_LAYER, cfg.n_layers), ctx,
                         truncate=True)
    i = model.node_layers.index(f"attn_in.{run_build.GPT2_LAYER}")
    return model.sections[i].form, model.params, model.layers[i].width


def timed(fun, args) -> dict:
    """Compile ``fun``, then one timed call: wall and CPU seconds, counted matmul FLOPs."""
    jitted = jax.jit(fun)
    count = flops.matmul_flops(jax.make_jaxpr(fun)(*args))
    jax.block_until_ready(jitted(*args))
    w0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(jitted(*args))
    return {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0,
            "flops": count.flops}


def run(ctx: int) -> dict:
    form, params, d_in = section(ctx)
    n, r, r_in = _SAMPLES.value, _OUT_DIM.value, _IN_DIM.value
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n, ctx, d_in)))
    rho = jnp.asarray(rng.choice([-1.0, 1.0], (n, 1, ctx)))
    weights = jnp.ones(n)
    c_next = jnp.asarray(rng.standard_normal((d_in // 2, r)) / 30)
    c_in_pinv = jnp.asarray(rng.standard_normal((r_in, d_in)) / 30)
    x_hat = x @ c_in_pinv.T
    alphas, quad = np.ones(1), np.ones(1)
    record = {"context": ctx, "samples": n, "matmul_flops_per_cpu_s":
              measure.matmul_rates(2048)["cpu"]}
    for kind, in_dim, data in (("m_prime", 0, x), ("edges", r_in, x_hat)):
        plan = plan_lib.plan(form, params, ctx, 1, r, in_dim, d_in, 1, n, _BUDGET.value)

        def call(data, rho, c_next, c_in_pinv, kind=kind, plan=plan):
            return form.weighted_sums(kind, plan, params, data, weights, rho, c_in_pinv,
                                      c_next, alphas, quad)

        rec = timed(call, (data, rho, c_next, c_in_pinv))
        rec["plan"] = list(plan)
        rec["gflop_per_cpu_s"] = rec["flops"] / 1e9 / rec["cpu_s"]
        record[kind] = rec
    return record


def main(argv):
    del argv
    records = [run(int(c)) for c in _CONTEXTS.value]
    for r in records:
        print(f"context {r['context']} ({r['samples']} sample(s)), matmul "
              f"{r['matmul_flops_per_cpu_s'] / 1e9:.1f} GFLOP/CPU-s: " + "; ".join(
                  f"{k} {r[k]['wall_s'] / r['samples']:.2f} s ({r[k]['cpu_s'] / r['samples']:.2f}"
                  f" CPU-s)/sample, {r[k]['flops'] / 1e9 / r['samples']:.1f} GFLOP/sample, "
                  f"{r[k]['gflop_per_cpu_s']:.1f} GFLOP/CPU-s, plan {r[k]['plan']}"
                  for k in ("m_prime", "edges")), flush=True)
    if _JSON.value:
        Path(_JSON.value).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    cli.run(main)
