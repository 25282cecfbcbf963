"""Times the ``M'`` steps of a GPT-2-small-sized block one by one, as the build runs them, and
splits each into the forward run to the section's input and the section's closed form.

    python benchmarks/section_steps.py --model=gpt2 --context=1024 --n_samples=3 --batch_size=3 \
        --sections=ln1.6,ln1_out.6,ln2.6,ln2_out.6,mlp_in.6 --gram_panels=512,0 --out=/dev/null

The model, samples and settings are :mod:`benchmarks.run_build`'s (its flags apply; its
required ``--out`` is not written). Each step gets one batch of ``--batch_size`` samples from the
first node layer (as the build does), the next layer's ``C`` a random orthonormal matrix of full
width. Per step: CPU seconds per sample of the whole step, of the forward run alone and of the
form's ``batch_sums`` alone (each compiled first, then the best of ``--timed_repeats`` calls),
counted matmul GFLOP per sample (:mod:`benchmarks.flops`) and GFLOP per CPU-second, and the host
``finish`` once per build; beside the float64 2048^2 matmul's rate per CPU-second measured in the
same process. ``--gram_panels`` times each step with each panel width of the MLP form's Gram in
turn (0: the whole product, as before panels), ``--rounds`` times over, so that both see the
same load. ``--hlo_dir`` writes each step's optimised HLO there.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from benchmarks import flops, measure, run_build
from libjax.forms import M_PRIME, mlp
from libjax.model import chain_acts
from libjax.pipeline import held_layers, run, steps
from libjax.runtime import cli, precision
from libjax.runtime.sharding import Placement

_SECTIONS = flags.DEFINE_list("sections", ["ln1.6", "ln1_out.6", "ln2.6", "ln2_out.6",
                                           "mlp_in.6"], "node layers whose M' steps to time")
_REPEATS = flags.DEFINE_integer("timed_repeats", 2, "timed calls per function (best kept)")
_HLO = flags.DEFINE_string("hlo_dir", None, "write each step's optimised HLO here")
_JSON = flags.DEFINE_string("json", None, "also write the records here")
_PANELS = flags.DEFINE_list("gram_panels", ["512"], "the MLP form's Gram panel widths to time, "
                            "in turn (libjax.forms.mlp.GRAM_PANEL; 0: the whole product)")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "times through sections x panels (alternating)")


def timed(fn, args, n: int) -> dict:
    """Compile ``fn`` (jitted) on ``args()``, then the best of ``n`` timed calls (``args()`` makes
    fresh arguments each call: steps donate their accumulator)."""
    count = flops.matmul_flops(jax.make_jaxpr(fn)(*args()))
    jax.block_until_ready(fn(*args()))
    best = None
    for _ in range(n):
        a = args()
        w0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*a))
        t = (time.perf_counter() - w0, time.process_time() - c0)
        best = t if best is None or t[1] < best[1] else best
    return {"wall_s": best[0], "cpu_s": best[1], "flops": count.flops}


def profile(started, acts, cfg, index: int) -> dict:
    """One ``M'`` step (``index``) timed whole and in its two parts."""
    placement, n = Placement(), len(acts)
    width = started.layers[index + 1].width
    c_next = np.linalg.qr(np.random.default_rng(index).standard_normal((width, width)))[0]
    size, task, path, plan = run._section_job(started, index, M_PRIME, n, cfg, None, c_next,
                                              placement)
    step = steps.accumulation_step(started, index, path, task, plan, cfg.precision)
    params = jax.device_put(started.params)
    batch, weights = jax.device_put(acts[:size]), jax.device_put(np.ones(size))
    key = steps.batch_key_data(cfg.seed, "profile", 0)
    functions = steps._functions(started, index)
    forward = jax.jit(lambda p, x: jax.vmap(
        lambda s: chain_acts(functions[0], functions[1:], p, s)[-1])(x))
    xs = forward(params, batch)

    def sums(p, x, w, c):
        return path.batch_sums(task, plan, p, x, w, None, None, c)

    record = {"layer": started.node_layers[index], "form": type(path).__name__, "samples": size,
              "step": timed(step.fn, lambda: (path.zero(task, started.params), key, params,
                                              None, None, c_next, batch, weights), _REPEATS.value),
              "forward": timed(forward, lambda: (params, batch), _REPEATS.value),
              "form_sums": timed(jax.jit(sums), lambda: (params, xs, weights, c_next),
                                 _REPEATS.value)}
    acc = step.fn(path.zero(task, started.params), key, params, None, None, c_next, batch,
                  weights)
    host = jax.device_get(acc)
    c0 = time.process_time()
    path.finish(task, started.params, host, c_next)
    record["finish_cpu_s"] = time.process_time() - c0
    if _HLO.value:
        Path(_HLO.value).mkdir(parents=True, exist_ok=True)
        text = step.fn.lower(path.zero(task, started.params), key, params, None, None, c_next,
                             batch, weights).compile().as_text()
        (Path(_HLO.value) / f"{record['layer']}.hlo.txt").write_text(text)
    for part in ("step", "forward", "form_sums"):
        rec = record[part]
        rec["gflop_per_cpu_s"] = rec["flops"] / 1e9 / rec["cpu_s"]
    return record


def main(argv):
    del argv
    model, inputs, _, cfg, _ = run_build.gpt2_setup()
    with precision.scope(cfg.precision):
        acts = held_layers.layer_acts(model, inputs, cfg.batch_size, cfg.precision, Placement())
        started = held_layers.started_at(model, 0)
        rate = measure.matmul_rates(2048)["cpu"]
        print(f"context {run_build._CONTEXT.value}, float64 matmul {rate / 1e9:.1f} "
              "GFLOP/CPU-s; per sample: CPU-s (GFLOP, GFLOP/CPU-s)", flush=True)
        records = []
        for _, name, panel in ((k, s, int(p)) for k in range(_ROUNDS.value)
                               for s in _SECTIONS.value for p in _PANELS.value):
            mlp.GRAM_PANEL = panel or sys.maxsize
            steps._steps.clear()  # the steps' cache keys do not hold the panel width
            r = profile(started, acts, cfg, started.node_layers.index(name))
            r["gram_panel"] = panel
            records.append(r)
            n = r["samples"]
            print(f"  M' {r['layer']:<10} panel {panel:<5} " + "; ".join(
                f"{part} {r[part]['cpu_s'] / n:.3f} ({r[part]['flops'] / 1e9 / n:.2f}, "
                f"{r[part]['gflop_per_cpu_s']:.1f})" for part in ("step", "forward", "form_sums"))
                + f"; finish {r['finish_cpu_s']:.2f} CPU-s once", flush=True)
    if _JSON.value:
        Path(_JSON.value).write_text(json.dumps({"matmul_flops_per_cpu_s": rate,
                                                 "records": records}, indent=1))


if __name__ == "__main__":
    cli.run(main)
