"""The interactive explorer of a finished build, as ``explore.py`` writes and serves it: the page
with its feature cards and clustering (computed on first use, stored with the build), and the
local server whose API ablates directions (:mod:`models.ablating`'s evaluator) and sends edges
beyond those written into the page. The page itself is :mod:`libjax.analysis.explorer`; this
module adds the family's evaluation, so it lives in ``models``."""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Optional

from libjax.analysis import clustering, explorer, feature_cards
from libjax.errors import ConfigError, LibjaxError
from models import ablating
from models.opened import OpenedBuild

STREAM_LIMIT = 2_000_000  # edges per transition that api/edges sends at most


def write_page(build: OpenedBuild, out=None, cards: bool = True, recompute_cards: bool = False,
               k: Optional[int] = None, cluster: bool = True,
               max_share: float = explorer.MAX_SHARE,
               max_edges: int = explorer.MAX_EDGES) -> tuple[Path, dict[str, float]]:
    """Write the explorer page of ``build`` to ``out`` (default
    ``<graph_dir>/explorer/index.html``), with its feature cards (``k`` examples each; default:
    the family's) or else the family's direction labels, coloured by the stored clustering (made
    with :func:`clustering.cluster`'s defaults if none is stored); returns the page's path and
    the seconds each part took."""
    timings, card_data, labels = {}, {}, None
    start = time.perf_counter()
    if cards:
        card_data = feature_cards.compute(build, recompute=recompute_cards,
                                          **({"k": k} if k else {}))
        timings["cards"] = time.perf_counter() - start
    if not card_data:
        labels = build.family.direction_labels(build.opts, build.graph)
    found = None
    if cluster and build.graph.edges:  # a build made with --noedges has nothing to cluster
        start = time.perf_counter()
        found = clustering.load(build.directory)
        if found is None:
            found = clustering.cluster(build.graph)
            clustering.save(found, build.directory)
        timings["clustering"] = time.perf_counter() - start
    start = time.perf_counter()
    out = Path(out) if out else build.directory / "explorer" / "index.html"
    page = explorer.explore(build.graph, labels, card_data, found,
                            title=f"{build.family.name}: {build.directory.name}",
                            max_share=max_share, max_edges=max_edges,
                            view=explorer.read_view(out.with_name(explorer.VIEW_FILE)))
    page.save(out)
    timings["page"] = time.perf_counter() - start
    return out, timings


class Api:
    """What the served page may ask: ablations (an evaluator made on first use, one at a time)
    and edges beyond those written into the page. ``dtype``: the model's during the ablations
    (``ablate.py``'s default, float32)."""

    def __init__(self, build: OpenedBuild, dtype: str = "float32"):
        self.build, self.dtype, self.lock, self._ev = build, dtype, threading.Lock(), None
        self.defaults = build.family.ablation_defaults(build.opts)

    def info(self) -> dict:
        d = self.defaults
        where = f"the {d['split']} split" if d and d.get("split") else "held-out data"
        return {"ablate": d is not None, "edges": True,
                "data": f"{where}, {d['metric']}" if d else ""}

    def evaluator(self):
        """As ablate.py makes it: the family's evaluation data and whole model, its defaults."""
        if self._ev is None:
            self._ev = ablating.evaluator(self.build,
                                          ablating.Evaluation(dtype=self.dtype)).evaluator
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
                                   query.get("to", [""])[0], share, STREAM_LIMIT)


def handler(api: Api, directory: Path):
    """The HTTP handler of the page's directory and of ``api``'s requests."""
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


def serve(page: Path, build: OpenedBuild, port: int = 8000, dtype: str = "float32") -> None:
    """Serve ``page`` and its API (:class:`Api`) on localhost ``port`` (0: any free port) until
    interrupted."""
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port),
                                                 handler(Api(build, dtype), page.parent))
    except OSError as err:
        raise ConfigError(f"cannot serve on port {port}: {err.strerror}; pass another "
                          "--port (0: any free one)") from None
    print(f"serving http://127.0.0.1:{server.server_address[1]}/{page.name}  (Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
