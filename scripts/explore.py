"""The interactive explorer of a built graph: one self-contained page, offline from file://.

    python scripts/explore.py --graph_dir=out/modadd_lib           # writes the page, prints where
    python scripts/explore.py --graph_dir=out/modadd_lib --serve   # and serves it on localhost
    python scripts/explore.py --graph_dir=out/gpt2_lib --data_dir=CORPUS --n_ctx=1024

Writes ``<graph_dir>/explorer/index.html``: one column of nodes per node layer (size: Lambda, or
the variance for PCA), edges by strength, pruned by cumulative share and top-k per node; hover
and click show a node's card. Feature cards (``<graph_dir>/analysis/cards``) and a clustering
(``<graph_dir>/analysis/clustering.json``, see ``scripts/cluster.py``) are computed on first use
and stored with the build. Options the build does not record (a language model's ``--data_dir``
and ``--n_ctx``) must be given again to compute its cards.
"""

from __future__ import annotations

import functools
import http.server
import time
from pathlib import Path

from absl import flags

from libjax.runtime import cli
from libjax.analysis import clustering, explorer, feature_cards
from libjax.errors import ConfigError
from models.opened import open_build

_GRAPH_DIR = flags.DEFINE_string("graph_dir", None, "a finished build (compute_basis.py --out_dir)",
                                 required=True)
_OUT = flags.DEFINE_string("out", None, "the page (default <graph_dir>/explorer/index.html)")
_MODEL = flags.DEFINE_string("model", None, "model family (default: the build's)")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "weights (default: the build's)")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "the build's data directory, for the cards")
_DATASET = flags.DEFINE_string("dataset", None, "the build's dataset, for the cards")
_N_CTX = flags.DEFINE_integer("n_ctx", None, "the build's tokens per sample (language models)")
_N_SAMPLES = flags.DEFINE_integer("n_samples", None, "samples the cards are computed on "
                                  "(default: the model's build data)")
_CARDS = flags.DEFINE_boolean("cards", True, "compute (or read) and show the feature cards")
_RECOMPUTE = flags.DEFINE_boolean("recompute_cards", False, "compute the cards again")
_K = flags.DEFINE_integer("k", None, "examples per card (default: the model family's)")
_CLUSTER = flags.DEFINE_boolean("cluster", True, "colour by the stored clustering, clustering "
                                "with scripts/cluster.py's defaults if none is stored")
_MAX_SHARE = flags.DEFINE_float("max_share", explorer.MAX_SHARE,
                                "write each transition's strongest edges up to this share")
_MAX_EDGES = flags.DEFINE_integer("max_edges", explorer.MAX_EDGES,
                                  "write at most this many edges per transition")
_SERVE = flags.DEFINE_boolean("serve", False, "serve the page on localhost until interrupted")
_PORT = flags.DEFINE_integer("port", 8000, "port for --serve (0: any free port)")


def _serve(page: Path) -> None:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(page.parent))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", _PORT.value), handler)
    except OSError as err:
        raise ConfigError(f"cannot serve on port {_PORT.value}: {err.strerror}; pass another "
                          "--port (0: any free one)") from None
    print(f"serving http://127.0.0.1:{server.server_address[1]}/{page.name}  (Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv):
    del argv
    options = {k: v for k, v in {"data_dir": _DATA_DIR.value, "dataset": _DATASET.value,
                                 "n_ctx": _N_CTX.value, "n_samples": _N_SAMPLES.value}.items()
               if v is not None}
    build = open_build(_GRAPH_DIR.value, _MODEL.value, _CHECKPOINT.value, **options)
    timings, cards, labels = {}, {}, None
    start = time.perf_counter()
    if _CARDS.value:
        cards = feature_cards.compute(build, recompute=_RECOMPUTE.value,
                                      **({"k": _K.value} if _K.value else {}))
        timings["cards"] = time.perf_counter() - start
    if not cards:
        labels = build.family.direction_labels(build.opts, build.graph)
    found = None
    if _CLUSTER.value and build.graph.edges:  # a build made with --noedges has nothing to cluster
        start = time.perf_counter()
        found = clustering.load(build.directory)
        if found is None:
            found = clustering.cluster(build.graph)
            clustering.save(found, build.directory)
        timings["clustering"] = time.perf_counter() - start
    start = time.perf_counter()
    page = explorer.explore(build.graph, labels, cards, found,
                            title=f"{build.family.name}: {build.directory.name}",
                            max_share=_MAX_SHARE.value, max_edges=_MAX_EDGES.value)
    out = Path(_OUT.value) if _OUT.value else build.directory / "explorer" / "index.html"
    page.save(out)
    timings["page"] = time.perf_counter() - start
    print(f"{out} ({out.stat().st_size / 1e6:.2f} MB; " +
          ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()) + ")")
    if _SERVE.value:
        _serve(out)


if __name__ == "__main__":
    cli.run(main)
