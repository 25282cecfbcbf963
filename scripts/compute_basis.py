"""Build a LIB (or PCA / neuron) interaction graph and print its summary.

    python scripts/compute_basis.py                      # the shipped modular-addition model,
                                                         # the paper's LIB configuration
    python scripts/compute_basis.py --basis=pca --out_dir=out/pca
    python scripts/compute_basis.py --basis=given --basis_file=dirs.npz --out_dir=out/sae
                                                         # a user's directions per node layer,
                                                         # e.g. an SAE decoder (method.md 1.14)
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

import dataclasses

import jax
from absl import flags

from libjax import kinds
from libjax.pipeline.progress_saves import SaveSchedule
from libjax.runtime import cli, precision
from libjax.runtime import flags as config_flags
from libjax.storage.graph import format_summary, summary
from models import building, registry, script_flags

_MODEL = script_flags.define("model", "modadd", "model family: " + ", ".join(registry.FAMILIES))
_CHECKPOINT = script_flags.define(
    "checkpoint", help="weights: a TransformerLens-named .npz (modadd; default: shipped model), "
    "or a Hugging Face checkpoint directory or hub name (gpt2, tinystories-1m)")
_NODE_LAYERS = script_flags.define("node_layers")
_LAYER = script_flags.define("layer")
_DTYPE = script_flags.define("dtype")
_DATASET = script_flags.define("dataset")
_DATA_DIR = script_flags.define("data_dir")
_SPLIT = script_flags.define("split")
_N_SAMPLES = script_flags.define("n_samples")
_N_GRAM_SAMPLES = script_flags.define("n_gram_samples")
_N_CTX = script_flags.define("n_ctx")
_OUT_DIR = script_flags.define("out_dir", help="output directory (default out/<model>_<basis>)")
_OVERWRITE = script_flags.define("overwrite", help="replace a different build in --out_dir")
BUILD = config_flags.define_build_flags()  # every BuildConfig field: --basis, --seed, --edges ...
_BASIS_FILE = flags.DEFINE_string(
    "basis_file", None, "with --basis=given: an .npz with one (n, d) array of directions per "
    "node layer, named by it, rows in the layer's coordinates (d or d-1 wide), and optional "
    "readout:<layer> (d, n) arrays (docs/method.md 1.14)")
_SAVE_MINUTES = flags.DEFINE_float(
    "save_every_minutes", SaveSchedule.every_minutes,
    "save the running stage's progress after this many minutes (0: no time limit); an "
    "interrupted stage resumes from its last save")
_SAVE_BATCHES = flags.DEFINE_integer(
    "save_every_batches", SaveSchedule.every_batches,
    "also save it after this many batches, whichever comes first (0: no batch limit)")


def main(argv):
    del argv
    given_policy = BUILD.holders["precision"].value
    policy = given_policy or precision.default_policy()
    print(f"precision: {policy}" +
          ("" if given_policy else f" (the default on {jax.default_backend()})"))
    precision.enable_for(policy)  # before the model is made
    save_schedule = SaveSchedule(_SAVE_BATCHES.value, _SAVE_MINUTES.value)
    save_schedule.validate()  # before the model and data load
    family = registry.get(_MODEL.value)
    opts = script_flags.options()
    cfg = config_flags.build_config(BUILD, family.build_defaults(opts))
    cfg = dataclasses.replace(cfg, basis=kinds.from_command_line(cfg.basis, _BASIS_FILE.value))
    out_dir = _OUT_DIR.value or f"out/{family.name}_{cfg.kind.name}"
    built = building.build(family, opts, cfg, out_dir, _LAYER.value, _OVERWRITE.value,
                           save_schedule)
    for g, directory in zip(built.graphs, built.directories):
        print(f"\n{family.name}: {cfg.kind.name} basis, node layers {', '.join(g.node_layers)}, "
              f"{built.n_samples} samples -> {directory}")
        print(format_summary(summary(g)))


if __name__ == "__main__":
    cli.run(main, float64=False)  # main enables what the chosen policy needs
