"""Times one section's ``M'`` and edges alone, in this process; writes a JSON record.

    python benchmarks/attention_section.py --model=llama --n_samples=1 --fast_paths=false \
        --out=/tmp/llama_attn_general.json

The model (``gpt2``, ``llama``, ``pythia``), data and build settings are
:mod:`benchmarks.run_build`'s (its flags apply; block 6, ``--context``, the paper's LM settings:
one position source for bases and edges). The section is
the one starting at ``--layer`` (default ``attn_in.6``, the attention section); ``C`` of the next
node layer and the input basis are PCA bases from the Gram samples (the shapes of a LIB build's,
for a fraction of its cost). Per computation the record has wall, compile, CPU and compute-CPU
seconds and matmul FLOPs (:mod:`benchmarks.flops`), and the float64 matmul rate measured after.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from benchmarks import flops, measure, run_build
from libjax.pipeline import run as pipeline
from libjax.runtime import cli

_LAYER = flags.DEFINE_string("layer", "attn_in.6", "node layer starting the section timed")


def timed(compute, compiles: measure.CompileLog) -> dict:
    """Wall, compile, CPU and compute-CPU seconds and matmul FLOPs of ``compute()``."""
    with flops.JitCounter() as counter, measure.CpuSampler() as cpu:
        start = time.perf_counter()
        np.asarray(compute())
        end = time.perf_counter()
    compile_cpu = sum(cpu.seconds_in(a, b) for a, b in compiles.merged(start, end))
    return {"wall_s": end - start, "compile_s": compiles.seconds_in(start, end),
            "cpu_s": cpu.seconds_in(start, end),
            "compute_cpu_s": cpu.seconds_in(start, end) - compile_cpu,
            "matmul_flops": sum(c.count.flops for c in counter.calls)}


def main(argv):
    del argv
    compiles = measure.CompileLog()
    families = {"llama": (run_build.llama.FAMILY, run_build.LLAMA_SMALL),
                "pythia": (run_build.pythia.FAMILY, run_build.PYTHIA_160M)}
    if run_build._MODEL.value == "gpt2":
        model, inputs, gram_inputs, config, _ = run_build.gpt2_setup()
    else:
        family, hf_config = families[run_build._MODEL.value]
        model, inputs, gram_inputs, config, _ = run_build.rotary_setup(family, hf_config)
    pca = dataclasses.replace(config, basis="pca", compute_edges=False, fast_paths=True,
                              n_stochastic_sources_basis_pos=None,
                              n_stochastic_sources_basis_hidden=None)
    bases = pipeline.build(model, gram_inputs, pca).bases
    i = model.node_layers.index(_LAYER.value)
    c_next, b_in = bases[model.node_layers[i + 1]].C, bases[_LAYER.value]
    form = model.sections[i].form if config.fast_paths else None
    record = {"model": run_build._MODEL.value, "layer": _LAYER.value,
              "fast_paths": config.fast_paths, "form": type(form).__name__,
              "n_samples": len(inputs), "in_dim": b_in.dim, "out_dim": c_next.shape[1],
              "load_start": measure.load()}
    record["m_prime"] = timed(lambda: pipeline.compute_m_prime(model, i, inputs, config, c_next),
                              compiles)
    record["edges"] = timed(lambda: pipeline.compute_edges(model, i, inputs, config, b_in,
                                                           c_next), compiles)
    rates = measure.matmul_rates(2048)
    record.update(matmul_flops_per_s=rates["wall"], matmul_flops_per_cpu_s=rates["cpu"],
                  peak_rss_gb=measure.peak_rss_gb(), load_end=measure.load())
    Path(run_build._OUT.value).write_text(json.dumps(record, indent=1))
    print(json.dumps(record))


if __name__ == "__main__":
    cli.run(main)
