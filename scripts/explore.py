"""The interactive explorer of a built graph: one self-contained page, offline from file://.

    python scripts/explore.py --graph_dir=out/modadd_lib           # writes the page, prints where
    python scripts/explore.py --graph_dir=out/modadd_lib --serve   # serves it, with interventions
    python scripts/explore.py --graph_dir=out/gpt2_lib --data_dir=CORPUS --n_ctx=1024

Writes ``<graph_dir>/explorer/index.html``: one column of nodes per node layer (size: Lambda, or
the variance for PCA), edges by strength, pruned by cumulative share and top-k per node; hover
and click show a node's card. Feature cards (``<graph_dir>/analysis/cards``) and a clustering
(``<graph_dir>/analysis/clustering.json``, see ``scripts/cluster.py``) are computed on first use
and stored with the build. Options the build does not record (a language model's ``--data_dir``
and ``--n_ctx``) must be given again to compute its cards.

With ``--serve`` the page is served on localhost with an API beside it: ``api/ablate`` mean-ablates
the chosen directions of a node or supernode in the graph's basis and answers the model's score
on its evaluation data (as ``ablate.py`` takes them: the family's evaluation data, metric, batch
size and sample count; a language model's held-out chunks of the build corpus, whole model),
computed with ``libjax.ablation``; ``api/edges`` sends a transition's edges up to any share, so a page whose
written edges stop short of the share asked for gets the rest; ``api/view`` keeps the page's view
(supernodes included) in ``view.json`` beside it, which the page opens with from then on (also
when written again without ``--serve``).
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import threading
import time
import urllib.parse
from pathlib import Path

from absl import flags

from libjax import ablation
from libjax.runtime import cli
from libjax.analysis import clustering, explorer, feature_cards
from libjax.errors import ConfigError, LibjaxError
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


_ABLATION_DTYPE = flags.DEFINE_enum("ablation_dtype", "float32", ["float32", "float64"],
                                    "dtype of --serve's ablations (ablate.py's default)")
_STREAM_LIMIT = 2_000_000  # edges per transition that api/edges sends at most


def _check_flags() -> None:
    """Every flag's value, before anything is loaded or computed."""
    explorer.check_limits(_MAX_SHARE.value, _MAX_EDGES.value)
    for flag, low in ((_K, 1), (_N_SAMPLES, 1), (_N_CTX, 1)):
        if flag.value is not None and flag.value < low:
            raise ConfigError(f"--{flag.name} must be >= {low}, got {flag.value}")
    if not 0 <= _PORT.value <= 65535:
        raise ConfigError(f"--port must be in 0..65535 (0: any free port), got {_PORT.value}")


class _Api:
    """What the served page may ask: ablations (an evaluator made on first use, one at a time)
    and edges beyond those written into the page."""

    def __init__(self, build):
        self.build, self.lock, self._ev = build, threading.Lock(), None
        self.defaults = build.family.ablation_defaults(build.opts)

    def info(self) -> dict:
        d = self.defaults
        where = f"the {d['split']} split" if d and d.get("split") else "held-out data"
        return {"ablate": d is not None, "edges": True,
                "data": f"{where}, {d['metric']}" if d else ""}

    def evaluator(self):
        """As ablate.py makes it: the family's evaluation data and whole model, its defaults."""
        if self._ev is None:
            build, d = self.build, self.defaults
            if d is None:
                raise ConfigError(f"--model={build.family.name} has no labelled evaluation "
                                  "data to ablate on")
            opts = dataclasses.replace(build.opts, split=build.opts.split or d.get("split"),
                                       n_samples=d.get("n_samples"), n_gram_samples=None)
            data = build.family.evaluation_data(opts, build.info, None)
            self._ev = ablation.Evaluator(build.family.load(opts, build.graph.node_layers),
                                          data.inputs, data.labels, metric=d["metric"],
                                          batch_size=d["batch_size"],
                                          dtype=_ABLATION_DTYPE.value)
        return self._ev

    def ablate(self, request: dict) -> dict:
        with self.lock:
            return explorer.ablation_scores(self.evaluator(), self.build.graph,
                                            str(request.get("layer")),
                                            request.get("directions") or [])

    def edges(self, query: dict) -> dict:
        try:
            share = float(query.get("share", [""])[0])
        except ValueError:
            raise ConfigError("api/edges needs share=<number in (0, 1]>") from None
        return explorer.transition(self.build.graph, query.get("from", [""])[0],
                                   query.get("to", [""])[0], share, _STREAM_LIMIT)


def _handler(api: _Api, directory: Path):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(directory), **kwargs)

        def _answer(self, status: int, body: dict) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _api(self, work) -> None:
            try:
                self._answer(200, work())
            except LibjaxError as err:  # bad requests and unusable builds: said, not raised
                self._answer(400, {"error": str(err)})

        def do_GET(self):
            url = urllib.parse.urlparse(self.path)
            if url.path.endswith("/api/info"):
                return self._api(api.info)
            if url.path.endswith("/api/edges"):
                return self._api(lambda: api.edges(urllib.parse.parse_qs(url.query)))
            return super().do_GET()

        def do_POST(self):
            kind = self.path.rsplit("/", 1)[-1]
            if kind not in ("ablate", "view") or "/api/" not in self.path:
                return self._answer(404, {"error": f"no API at {self.path}"})
            try:
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            except ValueError:
                return self._answer(400, {"error": f"api/{kind} takes a JSON object"})
            if kind == "view":  # the page's view, beside it: explore.py opens the page with it
                return self._api(lambda: {"saved": str(explorer.write_view(
                    request, directory / explorer.VIEW_FILE))})
            return self._api(lambda: api.ablate(request))

        def log_message(self, *args):  # quiet: the page asks often
            pass
    return Handler


def _serve(page: Path, build) -> None:
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", _PORT.value),
                                                 _handler(_Api(build), page.parent))
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
    _check_flags()
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
    out = Path(_OUT.value) if _OUT.value else build.directory / "explorer" / "index.html"
    page = explorer.explore(build.graph, labels, cards, found,
                            title=f"{build.family.name}: {build.directory.name}",
                            max_share=_MAX_SHARE.value, max_edges=_MAX_EDGES.value,
                            view=explorer.read_view(out.with_name(explorer.VIEW_FILE)))
    page.save(out)
    timings["page"] = time.perf_counter() - start
    print(f"{out} ({out.stat().st_size / 1e6:.2f} MB; " +
          ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()) + ")")
    if _SERVE.value:
        _serve(out, build)


if __name__ == "__main__":
    cli.run(main)
