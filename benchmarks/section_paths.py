"""One section's ``M'`` and edges through its closed form and through the general VJP path, timed
in this process; writes a JSON record.

    python benchmarks/section_paths.py --model=llama --sections=mlp_in.6 --n_samples=1 \
        --dims_from=/tmp/llama.json --out=/tmp/llama_sections.json

The model, samples and settings are :mod:`benchmarks.run_build`'s (its flags apply: ``--model``,
``--n_samples``, ``--batch_size``). Each section runs with the paper's LM settings on both paths
(``--paths``), into random orthonormal bases of the widths a real build kept (``--dims_from``: a
``run_build.py`` record; without it, every layer's full width), so the work is the build's
without computing the bases in between. Per section and path: wall, CPU and compile seconds of
``M'`` and of the edges (first call, compile included), and the float64 2048^2 matmul rate
measured at the end in the same process.
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

from benchmarks import measure, run_build
from libjax import basis as basis_lib
from libjax.pipeline.run import compute_edges, compute_m_prime
from libjax.runtime import cli
from models.lm import llama, pythia

_SECTIONS = flags.DEFINE_list("sections", None, "node layers whose sections to time",
                              required=True)
_PATHS = flags.DEFINE_list("paths", ["form", "general"], "form (fast paths) and/or general")
_DIMS_FROM = flags.DEFINE_string("dims_from", None, "run_build.py record with the bases' dims")


def random_basis(width: int, dim: int, seed: int) -> basis_lib.Basis:
    """An orthonormal ``(width, dim)`` basis: as costly as a LIB basis of that size."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((width, dim)))
    return basis_lib.Basis(C=q, C_pinv=q.T, W=q, W_pinv=q.T)


def timed(fn, compiles: measure.CompileLog) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    end = time.perf_counter()
    return {"wall_s": end - wall, "cpu_s": time.process_time() - cpu,
            "compile_s": compiles.seconds_in(wall, end)}


def main(argv):
    del argv
    compiles = measure.CompileLog()
    setups = {"llama": (llama.FAMILY, run_build.LLAMA_SMALL),
              "pythia": (pythia.FAMILY, run_build.PYTHIA_160M)}
    if run_build._MODEL.value not in setups:
        raise SystemExit(f"--model must be one of {', '.join(setups)}")
    model, inputs, _, config, _ = run_build.rotary_setup(*setups[run_build._MODEL.value])
    dims = {}
    if _DIMS_FROM.value:
        dims = json.loads(Path(_DIMS_FROM.value).read_text())["runs"][0]["dims"]
    record = {"model": run_build._MODEL.value, "n_samples": len(inputs),
              "config": config.to_json(), "load_start": measure.load(), "sections": {}}
    for layer in _SECTIONS.value:
        i = model.node_layers.index(layer)
        widths = [model.layers[j].width for j in (i, i + 1)]
        names = (layer, model.node_layers[i + 1])
        b_in, b_next = (random_basis(w, dims.get(n, w), seed)
                        for seed, (w, n) in enumerate(zip(widths, names)))
        for path in _PATHS.value:
            cfg = dataclasses.replace(config, fast_paths=path == "form")
            record["sections"][f"{layer} {path}"] = {
                "m_prime": timed(lambda: compute_m_prime(model, i, inputs, cfg, b_next.C),
                                 compiles),
                "edges": timed(lambda: compute_edges(model, i, inputs, cfg, b_in, b_next.C),
                               compiles),
                "dims": [b_in.dim, b_next.dim]}
            print(layer, path, json.dumps(record["sections"][f"{layer} {path}"]), flush=True)
    rates = measure.matmul_rates(2048)
    record.update(matmul_flops_per_s=rates["wall"], matmul_flops_per_cpu_s=rates["cpu"],
                  load_end=measure.load())
    Path(run_build._OUT.value).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    cli.run(main)
