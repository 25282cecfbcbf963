"""Open a finished build: its graph and record, and on demand its model family, model and data.

One call for every tool that reads a build back (``ablate.py``, ``plot_graph.py``, the
explorer, feature cards, clustering), so a build is found, checked and matched to its model
family in one way. It lives in ``models`` because it needs the registry (``libjax`` never
imports ``models``)::

    build = open_build("out/modadd_lib")
    build.graph.bases["ln1.0"].C
    build.model                   # the SectionedModel the build was made from (loaded once)
    build.data.inputs             # the build's inputs (read once)

The weights are the ones ``build.json`` records unless ``checkpoint`` is given, and so are a
language model's corpus and context (``data_dir`` or ``dataset``, ``n_ctx``) where the record keeps
them; other options (an MLP's ``data_dir``, ...) are passed as keyword arguments;
the sample counts and seed default to the build's, so the data is the build's own (a warning
says when it is not).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from pathlib import Path

import numpy as np

from libjax.storage import graph as graph_io
from libjax.storage import store
from models import registry
from models.family import Data, Family, Options

log = logging.getLogger("libjax")


@dataclasses.dataclass(frozen=True)
class OpenedBuild:
    """A finished build. ``graph`` and ``info`` (``build.json``) are read at once; ``model`` and
    ``data`` are built on first use and kept."""

    directory: Path
    info: dict
    graph: graph_io.Graph
    family: Family
    opts: Options

    @functools.cached_property
    def model(self):
        return self.family.load(self.opts, self.graph.node_layers)

    @functools.cached_property
    def data(self) -> Data:
        data = self.family.data(self.opts)
        digest = hashlib.sha256(np.ascontiguousarray(data.inputs).tobytes()).hexdigest()[:16]
        if digest != self.info.get("data_sha256"):
            log.warning("the data read for %s differs from the data it was built on (other "
                        "--data_dir, --n_ctx or --n_samples?); results describe the data read",
                        self.directory)
        return data


def open_build(graph_dir, model: str | None = None, checkpoint: str | None = None,
               **options) -> OpenedBuild:
    """The finished build in ``graph_dir`` (refuses an incomplete one). ``model`` and
    ``checkpoint`` override the family and weights that ``build.json`` records; ``options`` are
    further :class:`models.family.Options` fields (``data_dir``, ``n_ctx``, ``split``, ...)."""
    directory = Path(graph_dir).resolve()  # orbax needs absolute paths
    _, info, _ = store.open_complete(directory)
    family = registry.of_build(info, model)
    recorded = {"n_samples": info.get("n_samples"), "n_gram_samples": info.get("n_gram_samples"),
                "seed": info["config"].get("seed", 0)}
    corpus = info.get("data") or {}  # a language model's corpus and context, where recorded
    for key in ("data_dir", "dataset", "split", "n_ctx"):
        if corpus.get(key) is not None and options.get(key) is None:
            options[key] = corpus[key]
    opts = Options(checkpoint=checkpoint or info.get("model") or None,
                   node_layers=tuple(info["node_layers"]), **{**recorded, **options})
    return OpenedBuild(directory, info, graph_io.load(directory), family, opts)
