"""A finished build, opened again: its record, its graph, and its model and data on demand.

Every script that reads a build (``ablate.py``, ``plot_graph.py``, explorers) starts here, so a
build is found, checked and matched to its model family in one way: the family and checkpoint
recorded in ``build.json`` unless the caller overrides them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from libjax.model import SectionedModel
from libjax.storage import graph as graph_lib
from libjax.storage import store
from models import registry
from models.family import Data, Family, Options


@dataclasses.dataclass(frozen=True)
class OpenedBuild:
    """A finished build.

    Attributes:
      directory: the build's ``--out_dir`` (absolute).
      info: its ``build.json``.
      graph: its graph.
      family: the model family it was built with (or the caller's override).
      opts: options naming its checkpoint and node layers, plus the caller's.
    """

    directory: Path
    info: dict
    graph: graph_lib.Graph
    family: Family
    opts: Options

    def model(self, **options) -> SectionedModel:
        """The build's model cut at its node layers (``options`` override, e.g. ``dtype``)."""
        return self.family.load(dataclasses.replace(self.opts, **options),
                                self.graph.node_layers)

    def data(self, **options) -> Data:
        """The model family's data with the build's options (``options`` override)."""
        return self.family.data(dataclasses.replace(self.opts, **options))


def open_build(graph_dir, model: Optional[str] = None, checkpoint: Optional[str] = None,
               **options) -> OpenedBuild:
    """Open the finished build in ``graph_dir``; ``model`` and ``checkpoint`` replace the
    recorded family and weights, ``options`` (``dataset``, ``split``, ...) go into its
    :class:`~models.family.Options`."""
    directory = Path(graph_dir).resolve()  # orbax needs absolute paths
    _, info, _ = store.open_complete(directory)
    graph = graph_lib.load(directory)
    opts = Options(checkpoint=checkpoint or info.get("model") or None,
                   node_layers=tuple(graph.node_layers), **options)
    return OpenedBuild(directory, info, graph, registry.of_build(info, model), opts)
