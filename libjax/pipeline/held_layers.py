"""Node layers whose activations a build computes once and keeps on the host: each ``M'`` and
edge step starts at the nearest one at or before its section.

Each step runs its batch from the model's input to its section's input layer. Two parts of that
work are the same in many steps: the model up to the first node layer (every block before the
graph's; at block 6 of GPT-2 about 40% of a build's cost per sample, BUILD_NOTES "Cost against
context"), and every attention section before a step's own (at context 1024 the three steps
after a block's attention each ran it again, in the bases and again in the edges). So the build
holds the activations at the first node layer and at the output of every section that is not
positionwise, each computed once from the held layer before it, and hands a step the model
started there (its ``embed`` passes its input through). Where they would take more than
:data:`HOST_SHARE` of the host's memory, only the first layer is held; where that does not fit
either, every step runs from the inputs, as the log says.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from libjax.pipeline.steps import run_step
from libjax.runtime import precision
from libjax.runtime.batching import batch_size_for, padded_batches
from libjax.runtime.memory import host_memory_bytes
from libjax.runtime.progress import track
from libjax.runtime.sharding import Placement

log = logging.getLogger("libjax")

HOST_SHARE = 0.5


def _given(params, acts):
    """The embedding of a model started at a held node layer: its input is that layer."""
    return acts


def hold_points(model) -> list[int]:
    """The node layers worth holding: the first, and the output of every section that is not
    positionwise where a later section starts (not the last node layer)."""
    last = len(model.layers) - 1
    return [0] + [i + 1 for i, s in enumerate(model.sections)
                  if not s.positionwise and i + 1 < last]


def started_at(model, index: int):
    """``model`` started at node layer ``index``: layers and sections from there, its input the
    activations at that layer."""
    return dataclasses.replace(model, embed=_given, layers=model.layers[index:],
                               sections=model.sections[index:])


def layer_acts(model, inputs, batch_size: int, policy: str, placement: Placement,
               index: int = 0):
    """Every sample's activations at ``model``'s node layer ``index``, ``(N, P, d)`` NumPy in the
    policy's compute dtype, on every process."""
    size = batch_size_for(len(inputs), batch_size, placement.size)
    total = -(-len(inputs) // size)
    step = run_step(model, index, policy)
    parts = []
    narrow = precision.as_32bit if precision.host_sums(policy) else (lambda a: a)
    with precision.scope(policy):
        params = placement.replicate(narrow(model.params))
        for _, (batch,), _ in track(padded_batches(size, inputs), total,
                                    f"activations of {model.node_layers[index]}"):
            parts.append(placement.gather(step(params, placement.batch(narrow(batch)))))
    return np.concatenate(parts)[:len(inputs)]


class HeldLayers:
    """Where a build's steps start: :meth:`start` gives the model started at the held node
    layer nearest before a section, the activations there (computed on first use) and that
    layer's index; or, where nothing fits the host, the model and inputs as given."""

    def __init__(self, model, inputs, batch_size: int, policy: str, placement: Placement):
        self._args = (model, inputs, batch_size, policy, placement)
        self._points: list[int] | None = None
        self._acts: dict[int, np.ndarray] = {}

    def _choose(self) -> list[int]:
        model, inputs, _, policy, _ = self._args
        itemsize = np.dtype(precision.accumulation_dtype(policy)).itemsize

        def need(i):  # bytes of node layer i's activations
            return len(inputs) * model.layers[i].positions * model.layers[i].width * itemsize

        limit = HOST_SHARE * host_memory_bytes()
        points = hold_points(model)
        if sum(need(i) for i in points) <= limit:
            return points
        if need(0) <= limit:
            log.info("the activations of %s would not fit in memory with those of %s: only the "
                     "first node layer is held", model.node_layers[0],
                     ", ".join(model.node_layers[i] for i in points[1:]))
            return [0]
        log.info("the activations of %s (%.1f GB) would not fit in memory: every step runs from "
                 "the inputs", model.node_layers[0], need(0) / 1e9)
        return []

    def start(self, index: int):
        """``(model started at layer j, activations at j, j)`` for the section ``index``."""
        model, inputs, batch_size, policy, placement = self._args
        if self._points is None:
            self._points = self._choose()
        before = [j for j in self._points if j <= index]
        if not before:
            return model, inputs, 0
        j = before[-1]
        if j not in self._acts:
            if j == 0:
                self._acts[0] = layer_acts(model, inputs, batch_size, policy, placement)
            else:
                from_model, acts, i = self.start(j - 1)
                self._acts[j] = layer_acts(from_model, acts, batch_size, policy, placement,
                                           j - i)
        return started_at(model, j), self._acts[j], j
