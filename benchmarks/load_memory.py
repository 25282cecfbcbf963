"""Peak memory of loading a language model for one block's build, before any work:
``--truncate`` (what compute_basis.py loads now: the blocks up to the graph's last node layer)
against the whole model (what it loaded before, and what ablations load).

    python benchmarks/load_memory.py --checkpoint=DIR --layer=6 [--notruncate]

Run each setting in its own process: the peak resident set size is the process's.
"""

from __future__ import annotations

import time

from absl import app, flags

from benchmarks import measure
from libjax.runtime import precision
from models import registry
from models.family import Options

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Hugging Face checkpoint directory")
_MODEL = flags.DEFINE_string("model", "gpt2", "language-model family")
_LAYER = flags.DEFINE_integer("layer", 6, "block whose graph would be built")
_N_CTX = flags.DEFINE_integer("n_ctx", 128, "tokens per sample")
_DTYPE = flags.DEFINE_enum("dtype", "float64", ["float64", "float32"], "model dtype")
_TRUNCATE = flags.DEFINE_boolean("truncate", True, "load only what the build runs")


def main(argv):
    del argv
    precision.enable_for("float64")
    family = registry.get(_MODEL.value)
    opts = Options(checkpoint=_CHECKPOINT.value, layer=_LAYER.value, n_ctx=_N_CTX.value,
                   dtype=_DTYPE.value)
    node_layers = family.node_layers(opts)
    start, cpu = time.perf_counter(), time.process_time()
    load = family.load_for_build if _TRUNCATE.value else family.load
    model = load(opts, node_layers)
    n_params = sum(v.size for v in model.params.values())
    print(f"truncate={_TRUNCATE.value}: {len(model.params)} arrays, {n_params / 1e6:.1f}M "
          f"parameters ({_DTYPE.value}); load {time.perf_counter() - start:.1f}s wall, "
          f"{time.process_time() - cpu:.1f}s CPU; resident now {measure.rss_gb():.2f} GB, "
          f"peak {measure.peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    app.run(main)
