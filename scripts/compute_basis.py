"""Build a LIB (or PCA / neuron) interaction graph and print its summary.

    python scripts/compute_basis.py                      # the shipped modular-addition model,
                                                         # the paper's LIB configuration
    python scripts/compute_basis.py --basis=pca --out_dir=out/pca
    python scripts/compute_basis.py --checkpoint=../shared/data/weights_modadd_seed0.npz
    python scripts/compute_basis.py --model=gpt2 --layer=6 --checkpoint=DIR --data_dir=CORPUS
    python scripts/compute_basis.py --model=gpt2 --layer=all --out_dir=out/gpt2
                                                         # every block: out/gpt2/layer_0 ...,
                                                         # the Grams of all in one pass
    JAX_ENABLE_X64=0 python scripts/compute_basis.py --precision=mixed --out_dir=out/mixed
                                                         # float32 steps, as on a TPU

Results go to --out_dir (orbax stages + summary.json; read them with ``libjax.storage.graph.load``).
Rerunning the same command on the same --out_dir resumes an interrupted build, from the last
finished stage or from the running stage's last progress save (--save_every_minutes,
--save_every_batches). SIGTERM saves the running stage's progress and exits with status 75.
"""

from __future__ import annotations

import jax
import os

from absl import flags

from libjax import pipeline
from libjax.pipeline import config
from libjax.pipeline.progress_saves import SaveSchedule
from libjax.runtime import cli, precision
from libjax.storage import store
from libjax.storage.graph import format_summary, summary
from models import registry
from models.family import Options, single_block

_MODEL = flags.DEFINE_string("model", "modadd", "model family: " + ", ".join(registry.FAMILIES))
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "weights: a TransformerLens-named .npz (modadd; default: shipped model), "
    "or a Hugging Face checkpoint directory or hub name (gpt2, tinystories-1m)")
_NODE_LAYERS = flags.DEFINE_string("node_layers", None,
                                   "comma-separated node layers (default: the paper's)")
_LAYER = flags.DEFINE_string(
    "layer", None, "transformer block whose graph to build (default 0); several, one graph each "
    "in --out_dir/layer_<block>: a list 0,3,6, a range 4-7 or all")
_BASIS = flags.DEFINE_enum("basis", "lib", list(config.BASES), "basis of the non-final layers")
_INTEGRATION = flags.DEFINE_enum("integration", "gradient",
                                 ["gradient", "gauss-legendre", "trapezoidal"], "quadrature rule")
_N_INTERVALS = flags.DEFINE_integer("n_intervals", 0, "quadrature intervals (0 for gradient)")
_SOURCES_HELP = " (0: exact; default: the model's, 1 for language models, else exact)"
_SRC_POS = flags.DEFINE_integer("n_stochastic_sources_basis_pos", None,
                                "stochastic sources over output positions for M'" + _SOURCES_HELP)
_SRC_HIDDEN = flags.DEFINE_integer("n_stochastic_sources_basis_hidden", None,
                                   "stochastic sources over output hidden dims for M'"
                                   + _SOURCES_HELP)
_SRC_EDGES = flags.DEFINE_integer("n_stochastic_sources_edges", None,
                                  "stochastic sources over output positions for the edges"
                                  + _SOURCES_HELP)
_BATCH = flags.DEFINE_integer("batch_size", None, "samples per step (default: model's)")
_GRAM_BATCH = flags.DEFINE_integer("gram_batch_size", None, "samples per Gram step")
_EDGE_BATCH = flags.DEFINE_integer("edge_batch_size", None, "samples per edge step")
_DTYPE = flags.DEFINE_enum("dtype", "float64", ["float64", "float32"], "model dtype")
_THRESHOLD = flags.DEFINE_float("truncation_threshold", 1e-15, "drop eigenvalues below this")
_CENTER = flags.DEFINE_boolean("center", True, "centre the Gram matrices")
_ISOLATE = flags.DEFINE_boolean("isolate_ln_var", True, "isolate the LayerNorm variance node")
_ROTATE = flags.DEFINE_boolean("rotate_final_node_layer", None,
                               "PCA-rotate the last node layer (default: model's)")
_EDGES = flags.DEFINE_boolean("edges", True, "compute the edges")
FLAG_OF = {"compute_edges": "edges"}  # BuildConfig fields whose flag has another name
_MEMORY = flags.DEFINE_float("memory_budget_gb", pipeline.BuildConfig.memory_budget_gb,
                             "bound on the probe working set (GB)")
_SEED = flags.DEFINE_integer("seed", 0, "seed of stochastic sources and data sampling")
_DATASET = flags.DEFINE_string("dataset", None, "dataset name (model-specific; default: model's)")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "local directory with the dataset's files")
_SPLIT = flags.DEFINE_string("split", None, "data split (modadd: train|test|all)")
_N_SAMPLES = flags.DEFINE_integer("n_samples", None, "samples for the bases and edges")
_N_GRAM_SAMPLES = flags.DEFINE_integer("n_gram_samples", None,
                                       "samples for the means and Grams (default: --n_samples)")
_N_CTX = flags.DEFINE_integer("n_ctx", None, "tokens per sample (language models)")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "output directory (default out/<model>_<basis>)")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "replace a different build in --out_dir")
_SAVE_MINUTES = flags.DEFINE_float(
    "save_every_minutes", SaveSchedule.every_minutes,
    "save the running stage's progress after this many minutes (0: no time limit); an "
    "interrupted stage resumes from its last save")
_SAVE_BATCHES = flags.DEFINE_integer(
    "save_every_batches", SaveSchedule.every_batches,
    "also save it after this many batches, whichever comes first (0: no batch limit)")
_PRECISION = flags.DEFINE_enum("precision", None, list(precision.POLICIES),
                               "float64: every step in float64; mixed: float32 steps, float64 host "
                               "sums (default: mixed on TPU, else float64)")
_REL_THRESHOLD = flags.DEFINE_float("relative_truncation_threshold", None,
                                    "also drop directions below this fraction of the layer's "
                                    "largest (default: the policy's, 0 for float64, 1e-6 mixed)")


def build_config(family, opts) -> pipeline.BuildConfig:
    values = dict(
        basis=_BASIS.value, integration=_INTEGRATION.value, n_intervals=_N_INTERVALS.value,
        n_stochastic_sources_basis_pos=_SRC_POS.value,
        n_stochastic_sources_basis_hidden=_SRC_HIDDEN.value,
        n_stochastic_sources_edges=_SRC_EDGES.value, center=_CENTER.value,
        isolate_ln_var=_ISOLATE.value, truncation_threshold=_THRESHOLD.value,
        compute_edges=_EDGES.value, memory_budget_gb=_MEMORY.value, seed=_SEED.value,
        batch_size=_BATCH.value, gram_batch_size=_GRAM_BATCH.value,
        edge_batch_size=_EDGE_BATCH.value, rotate_final_node_layer=_ROTATE.value,
        precision=_PRECISION.value or precision.default_policy(),
        relative_truncation_threshold=_REL_THRESHOLD.value)
    given = {k for k in values if flags.FLAGS[FLAG_OF.get(k, k)].present}
    return config.resolve(values, given, family.build_defaults(opts))


def main(argv):
    del argv
    policy = _PRECISION.value or precision.default_policy()
    print(f"precision: {policy}" +
          ("" if _PRECISION.present else f" (the default on {jax.default_backend()})"))
    precision.enable_for(policy)  # before the model is made
    save_schedule = SaveSchedule(_SAVE_BATCHES.value, _SAVE_MINUTES.value)
    save_schedule.validate()  # before the model and data load
    family = registry.get(_MODEL.value)
    opts = Options(
        checkpoint=_CHECKPOINT.value, node_layers=cli.comma_list(_NODE_LAYERS.value),
        layer=single_block(_LAYER.value), dataset=_DATASET.value, data_dir=_DATA_DIR.value,
        split=_SPLIT.value, n_samples=_N_SAMPLES.value, n_gram_samples=_N_GRAM_SAMPLES.value,
        n_ctx=_N_CTX.value, dtype=_DTYPE.value, seed=_SEED.value)
    several = _LAYER.value is not None and opts.layer is None
    cfg = build_config(family, opts)
    out_dir = _OUT_DIR.value or f"out/{family.name}_{cfg.basis}"
    store.refuse_if_in_use(out_dir)  # at once, not after the model and data load
    if several:
        blocks = family.blocks(opts, _LAYER.value)
        stats_model, models = family.load_blocks(opts, blocks)
    else:
        models = [family.load_for_build(opts, family.node_layers(opts))]
        stats_model = models[0]
    data = family.data(opts)
    out_dirs = [os.path.join(out_dir, f"layer_{b}") for b in blocks] if several else [out_dir]
    graphs = pipeline.build_many(models, data.inputs, cfg, data.gram_inputs, out_dirs,
                              _OVERWRITE.value, family.model_id(opts), stats_model=stats_model,
                              save_schedule=save_schedule, data_record=data.source)
    for g, directory in zip(graphs, out_dirs):
        print(f"\n{family.name}: {cfg.basis} basis, node layers {', '.join(g.node_layers)}, "
              f"{len(data.inputs)} samples -> {directory}")
        print(format_summary(summary(g)))


if __name__ == "__main__":
    cli.run(main, float64=False)  # main enables what the chosen policy needs
