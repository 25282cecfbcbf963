"""A graph's first node layer, computed once per build: the ``M'`` and edge steps start there.

Each step runs its batch from the model's input to the section's input layer. For a graph of one
transformer block, the model up to the first node layer (every block before it) is most of that
work, and the same in every step: at block 6 of GPT-2 it was about 40% of a build's cost per
sample (BUILD_NOTES, "Cost against context"). So the build runs every input to the first node
layer once, keeps the activations on the host, and hands the steps a model whose ``embed`` passes
its input through. Where the activations would take more than :data:`HOST_SHARE` of the host's
memory, the steps run from the inputs as before.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from libjax.pipeline.steps import first_layer_step
from libjax.runtime import precision
from libjax.runtime.batching import batch_size_for, padded_batches
from libjax.runtime.progress import track
from libjax.runtime.sharding import Placement

log = logging.getLogger("libjax")

HOST_SHARE = 0.5


def _given(params, acts):
    """The embedding of a model that starts at its first node layer: its input is the layer."""
    return acts


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def first_layer_acts(model, inputs, batch_size: int, policy: str, placement: Placement):
    """Every sample's activations at ``model``'s first node layer, ``(N, P, d)`` NumPy in the
    policy's compute dtype, on every process."""
    size = batch_size_for(len(inputs), batch_size, placement.size)
    total = -(-len(inputs) // size)
    step = first_layer_step(model, policy)
    parts = []
    narrow = precision.as_32bit if precision.host_sums(policy) else (lambda a: a)
    with precision.scope(policy):
        params = placement.replicate(narrow(model.params))
        for _, (batch,), _ in track(padded_batches(size, inputs), total,
                                    f"activations of {model.node_layers[0]}"):
            parts.append(placement.gather(step(params, placement.batch(narrow(batch)))))
    return np.concatenate(parts)[:len(inputs)]


class FirstLayer:
    """``(model, inputs)`` for a build's steps: the model started at its first node layer and the
    activations there, computed on first use; or, where those would not fit the host, the model
    and inputs as given."""

    def __init__(self, model, inputs, batch_size: int, policy: str, placement: Placement):
        self._args = (model, inputs, batch_size, policy, placement)
        self._started = None

    def get(self):
        if self._started is None:
            model, inputs, batch_size, policy, placement = self._args
            layer = model.layers[0]
            itemsize = np.dtype(precision.accumulation_dtype(policy)).itemsize
            need = len(inputs) * layer.positions * layer.width * itemsize
            if need > HOST_SHARE * host_memory_bytes():
                log.info("the activations of %s (%.1f GB) would not fit in memory: every step "
                         "runs from the inputs", layer.name, need / 1e9)
                self._started = (model, inputs)
            else:
                acts = first_layer_acts(model, inputs, batch_size, policy, placement)
                self._started = (dataclasses.replace(model, embed=_given), acts)
        return self._started
