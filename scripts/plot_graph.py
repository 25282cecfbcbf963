"""Draw a built interaction graph: a column of nodes per node layer, the strongest edges between.

    python scripts/plot_graph.py --graph_dir=out/modadd_lib
    python scripts/plot_graph.py --graph_dir=out/modadd_lib --n_edges=80 --nolabels
    python scripts/plot_graph.py --graph_dir=out/modadd_lib \\
        --edge_results=out/modadd_lib/ablations/modadd_lib_edge_ablation_results.json

Writes ``<out>.png`` and ``<out>.svg`` (default ``<graph_dir>/graph``). Directions are labelled by
index and, where the model family provides them, by a short description (modular addition: the
dominant Fourier frequencies in a, b and a+b). With ``--edge_results`` only edges that an edge
ablation found necessary are drawn (the strongest ``--n_edges`` of them).
"""

from __future__ import annotations

from absl import flags

from libjax.ablation import records
from libjax.analysis import plots
from libjax.errors import ConfigError, StoreError
from libjax.runtime import cli, precision
from libjax.storage import store
from models import script_flags
from models.opened import open_build

_GRAPH_DIR = script_flags.define("graph_dir", required=True)
_OUT = script_flags.define("out", help="output path without suffix (default <graph_dir>/graph)")
_N_EDGES = flags.DEFINE_integer("n_edges", 40, "edges drawn per transition (the strongest)")
_MAX_NODES = flags.DEFINE_integer("max_nodes", 20, "nodes on either side of a transition, at most")
_EDGE_RESULTS = script_flags.define("edge_results", help="an edge-ablation result file: draw "
                                    "only its required edges")
_INCLUDE_CONST = flags.DEFINE_boolean("include_const", False,
                                      "also draw the (large, always kept) constant-direction edges")
_LABELS = flags.DEFINE_boolean("labels", True, "label directions with the model family's "
                               "description (e.g. Fourier frequencies for modadd)")
_MODEL = script_flags.define("model", help="model family, for the labels (default: the build's)")
_CHECKPOINT = script_flags.define("checkpoint",
                                  help="weights for the labels (default: the build's)")


def _validated_masks():
    """Every flag checked, and the edge masks read, before the build is loaded: the masks of
    ``--edge_results`` (None without it)."""
    if _N_EDGES.value < 1 or _MAX_NODES.value < 1:
        raise ConfigError(f"--n_edges and --max_nodes must be >= 1, got {_N_EDGES.value} and "
                          f"{_MAX_NODES.value}")
    return records.read_required_masks(_EDGE_RESULTS.value) if _EDGE_RESULTS.value else None


def main(argv):
    del argv
    masks = _validated_masks()
    precision.enable_for(precision.of_record(store.open_complete(_GRAPH_DIR.value)[1]))
    opened = open_build(_GRAPH_DIR.value, _MODEL.value, _CHECKPOINT.value)
    graph = opened.graph
    labels = None
    if _LABELS.value:
        labels = opened.family.direction_labels(opened.opts, graph)
    out = _OUT.value or str(opened.directory / "graph")
    try:
        paths = plots.interaction_graph(graph, out, n_edges=_N_EDGES.value,
                                        max_nodes=_MAX_NODES.value, masks=masks, labels=labels,
                                        include_const=_INCLUDE_CONST.value)
    except OSError as err:
        raise StoreError(f"cannot write the plot to {out}: {err.strerror or err}; choose another "
                         "--out") from None
    for path in paths:
        print(path)


if __name__ == "__main__":
    cli.run(main, float64=False)  # main enables float64 where the build's policy needs it
