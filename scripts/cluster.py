"""Leiden modularity clustering of a built graph, stored with the build, and its static figure.

    python scripts/cluster.py --graph_dir=out/modadd_lib                    # sqrt edges, gamma 1
    python scripts/cluster.py --graph_dir=out/modadd_lib --norm=log \\
        --edge_results=out/modadd_lib/ablations/modadd_lib_edge_ablation_results.json
    python scripts/cluster.py --graph_dir=out/modadd_lib --gamma=2 --seed=3 --norm=max

Writes ``<graph_dir>/analysis/clustering.json`` (read by ``scripts/explore.py``, which colours
the nodes by cluster) and ``<out>.png``/``.svg`` (default ``<graph_dir>/analysis/clustering``),
and prints the clusters with their directions' labels where the model family gives labels
(modular addition: Fourier frequencies). The build's own files are never changed.
"""

from __future__ import annotations

import math
import time

from absl import flags

from libjax.ablation import records
from libjax.analysis import clustering
from libjax.errors import ConfigError
from libjax.runtime import cli
from models import script_flags
from models.opened import open_build

_GRAPH_DIR = script_flags.define("graph_dir", required=True)
_NORM = flags.DEFINE_enum("norm", "sqrt", list(clustering.NORMS), "edge normalisation")
_GAMMA = flags.DEFINE_float("gamma", 1.0, "Leiden resolution (higher: more, smaller clusters)")
_SEED = flags.DEFINE_integer("seed", 0, "Leiden's random seed")
_EPS = flags.DEFINE_float("eps", None, "log normalisation: the edge strength that maps to 0")
_EDGE_RESULTS = script_flags.define("edge_results", help="log normalisation: take each "
                                    "transition's eps from this edge-ablation result file")
_INCLUDE_OUTPUT = flags.DEFINE_boolean("include_output", False, "also cluster the output layer")
_OUT = script_flags.define("out", help="figure path without suffix "
                           "(default <graph_dir>/analysis/clustering)")
_LABELS = flags.DEFINE_boolean("labels", True, "show the model family's direction labels")
_MODEL = script_flags.define("model", help="model family, for the labels (default: the build's)")


def _validated_masks():
    """Every flag checked, and the edge-ablation masks read, before the build is loaded: the
    edge masks of ``--edge_results`` (None without it)."""
    if not _GAMMA.value > 0:
        raise ConfigError(f"--gamma must be > 0, got {_GAMMA.value}")
    if _EDGE_RESULTS.value and _EPS.value is not None:
        raise ConfigError("give --eps or --edge_results, not both")
    if _EPS.value is not None and not 0 < _EPS.value < math.inf:
        raise ConfigError(f"--eps must be a finite number > 0, got {_EPS.value}")
    if _NORM.value == "log" and _EPS.value is None and not _EDGE_RESULTS.value:
        raise ConfigError("--norm=log needs its zero point: pass --eps or --edge_results")
    return records.read_required_masks(_EDGE_RESULTS.value) if _EDGE_RESULTS.value else None


def main(argv):
    del argv
    masks = _validated_masks()
    build = open_build(_GRAPH_DIR.value, _MODEL.value)
    eps = _EPS.value if masks is None else clustering.eps_from_edge_ablation(build.graph, masks)
    start = time.perf_counter()
    result = clustering.cluster(build.graph, _NORM.value, _GAMMA.value, _SEED.value, eps,
                                include_output=_INCLUDE_OUTPUT.value)
    seconds = time.perf_counter() - start
    labels = None
    if _LABELS.value:
        labels = build.family.direction_labels(build.opts, build.graph)
    path = clustering.save(result, build.directory)
    figure = clustering.figure(build.graph, result, _OUT.value or path.with_suffix(""), labels)
    print("\n".join(clustering.describe(result, labels)))
    print(f"clustering ({seconds:.2f}s) -> {path}")
    for p in figure:
        print(f"  figure: {p}")


if __name__ == "__main__":
    cli.run(main)
