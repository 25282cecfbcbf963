"""A build from a model family and the user's options, as ``compute_basis.py`` runs it: the
model (or one per block of ``--layer=all``, a list or a range, with the Grams of all from one
pass), its data, and the graphs stored in their directories (the pipeline itself is
:mod:`libjax.pipeline`; this module adds the family, so it lives in ``models``)."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from libjax import pipeline
from libjax.pipeline.progress_saves import SaveSchedule
from libjax.storage import store
from libjax.storage.graph import Graph
from models.family import Family, Options


@dataclasses.dataclass(frozen=True)
class Built:
    """The graphs of a build, the directory each is stored in, and the samples they saw."""

    graphs: list[Graph]
    directories: list[str]
    n_samples: int


def build(family: Family, opts: Options, cfg: pipeline.BuildConfig, out_dir: str,
          layer_spec: Optional[str] = None, overwrite: bool = False,
          save_schedule: Optional[SaveSchedule] = None) -> Built:
    """Build ``cfg``'s graph of ``family``'s model with ``opts`` into ``out_dir`` (resuming what
    is there; ``overwrite``: replace a different build), or, where ``layer_spec`` (``--layer``)
    names several blocks, one graph per block into ``out_dir/layer_<block>``."""
    store.refuse_if_in_use(out_dir)  # at once, not after the model and data load
    several = layer_spec is not None and opts.layer is None
    if several:
        blocks = family.blocks(opts, layer_spec)
        stats_model, models = family.load_blocks(opts, blocks)
    else:
        models = [family.load_for_build(opts, family.node_layers(opts))]
        stats_model = models[0]
    data = family.data(opts)
    out_dirs = [os.path.join(out_dir, f"layer_{b}") for b in blocks] if several else [out_dir]
    graphs = pipeline.build_many(models, data.inputs, cfg, data.gram_inputs, out_dirs, overwrite,
                                 family.model_id(opts), stats_model=stats_model,
                                 save_schedule=save_schedule, data_record=data.source)
    return Built(list(graphs), out_dirs, len(data.inputs))
