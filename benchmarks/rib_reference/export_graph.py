"""Export a libjax graph to one .npz that the rib harness reads without JAX.

    cd /work/main && /work/main/.venv/bin/python /work/ref/export_graph.py GRAPH_DIR OUT.npz

Keys: ``node_layers``; ``orig__<layer>`` (width); for each layer with a basis ``C__``, ``C_pinv__``,
``W__``, ``W_pinv__``, ``kind__`` (lib/pca/neuron) and, where present, ``Lambda__``; per edge
pair ``E__<in>__<out>`` (``(out_nodes, in_nodes)``); ``config_json`` (the build config).
"""

import json
import sys

import numpy as np

from libjax.storage import graph


def main(graph_dir, out):
    g = graph.load(graph_dir)
    arrays = {"node_layers": np.asarray(g.node_layers),
              "config_json": np.asarray(json.dumps(g.config, default=str))}
    for name in g.node_layers:
        arrays[f"orig__{name}"] = np.asarray(g.orig_dims[name])
        b = g.bases.get(name)
        if b is None:
            continue
        for key in ("C", "C_pinv", "W", "W_pinv", "Lambda"):
            if getattr(b, key) is not None:
                arrays[f"{key}__{name}"] = np.asarray(getattr(b, key), np.float64)
        arrays[f"kind__{name}"] = np.asarray(b.kind)
    for (a, b), e in g.edges.items():
        arrays[f"E__{a}__{b}"] = np.asarray(e, np.float64)
    np.savez(out, **arrays)
    print(f"{out}: layers {g.node_layers}, bases {sorted(g.bases)}, edges {len(g.edges)}, "
          f"center={g.config.get('center')}")


if __name__ == "__main__":
    main(*sys.argv[1:])
