"""The one contract between models and libjax: a model cut into sections at its node layers.

A model is an ordered list of named modules. Each module is a pure per-sample function
``fn(params, inputs: tuple[Array, ...]) -> tuple[Array, ...]``; every array in a tuple is shaped
``(pos, width)`` (the first module receives the raw model input of one sample). Node layer ``X``
is the concatenation, along the last axis, of the input tuple of module ``X``; ``"output"`` is
the model output (docs/method.md 1.1). :func:`cut` turns such a list into a
:class:`SectionedModel`, the only view of a model that libjax ever sees:

* its node layers are :class:`NodeLayer` records that say everything the method needs to know
  about them (width, positions, where the constant coordinate and an isolated LayerNorm
  variance sit), so that libjax never guesses from a name;
* the sections between them are :class:`Section` records carrying their declared structure
  (positionwise or not, a closed form of ``M'`` and the edges, :mod:`libjax.forms`).

All functions act on **one sample**; libjax vmaps them over batches. Parameters are always an
explicit argument, never closed over, so jitted programs stay small.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp

from libjax.errors import NodeLayerError
from libjax.forms import Form

OUTPUT = "output"

Module = tuple[str, Callable[[Any, tuple], tuple]]


@dataclasses.dataclass(frozen=True)
class NodeLayer:
    """One node layer: the concatenated, bias-folded activations ``(positions, width)``.

    Attributes:
      name: the module id whose input tuple this is (or ``"output"``).
      width: coordinates of the concatenation.
      positions: sequence positions (1 for models without a sequence axis).
      constant: index of the coordinate that is the constant 1 of the folded biases
        (docs/method.md 1.2); None for the model output, which has none.
      variance: index of a LayerNorm variance coordinate that the method may isolate as its own
        direction (docs/method.md 1.5), or None.
    """

    name: str
    width: int
    positions: int
    constant: Optional[int]
    variance: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class Section:
    """The map from one node layer to the next.

    Attributes:
      fn: ``(params, acts (P_in, d_in)) -> acts (P_out, d_out)`` for one sample.
      positionwise: the output at position ``t`` depends only on the input at ``t`` (then one
        probe per output direction sums over positions exactly).
      form: a closed form of ``M'`` and the edges (:class:`libjax.forms.Form`), or None.
    """

    fn: Callable
    positionwise: bool = False
    form: Optional[Form] = None


@dataclasses.dataclass(frozen=True)
class SectionedModel:
    """A model as seen by libjax.

    Attributes:
      name: the model family's name (recorded with builds).
      layers: the node layers, in order.
      params: the (bias-folded) parameter pytree, passed explicitly to every function.
      embed: ``(params, input) -> acts`` at ``layers[0]``, shaped ``(pos, d)``.
      sections: one per consecutive pair of node layers.
      tail: ``(params, acts_last) -> model output (pos, vocab)``; identity if the last node
        layer is ``"output"``. Used to evaluate the whole model (ablations).
      positional: whether activations have a real sequence axis (transformers) or a singleton
        one (MLPs); stochastic position sources need a real one.
    """

    name: str
    layers: tuple[NodeLayer, ...]
    params: Any
    embed: Callable
    sections: tuple[Section, ...]
    tail: Callable
    positional: bool

    @property
    def node_layers(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def forward(self, params, x):
        """Whole model on one sample: input -> output ``(pos, vocab)``."""
        return self.run_from(params, self.run_to(params, x, len(self.layers) - 1),
                             len(self.layers) - 1)

    def run_to(self, params, x, index: int):
        """Activations of one sample at node layer ``index``."""
        return chain_acts(self.embed, [s.fn for s in self.sections[:index]], params, x)[-1]

    def run_from(self, params, acts, index: int):
        """The model output of one sample from its activations at node layer ``index``."""
        for section in self.sections[index:]:
            acts = section.fn(params, acts)
        return self.tail(params, acts)

    def all_acts(self, params, x) -> list:
        """Activations of one sample at every node layer, in order."""
        return chain_acts(self.embed, [s.fn for s in self.sections], params, x)


def chain_acts(embed: Callable, fns: Sequence[Callable], params, x) -> list:
    """One sample's activations after ``embed`` and after each of ``fns`` in turn: the node
    layers a model's sections lead through (also what the build's cached steps run, holding the
    functions without the model)."""
    acts = [embed(params, x)]
    for fn in fns:
        acts.append(fn(params, acts[-1]))
    return acts


def _split(x, widths):
    """Concatenated ``(pos, sum(widths))`` -> tuple of ``(pos, w)`` parts."""
    parts, start = [], 0
    for w in widths:
        parts.append(x[..., start:start + w])
        start += w
    return tuple(parts)


def _concat(parts):
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def _chain(modules: Sequence[Module], fused: Mapping[tuple[str, ...], Callable]):
    """The modules run in order; a run of consecutive modules that ``fused`` names is replaced by
    its single equivalent function (only possible where no node layer cuts the run)."""
    ids = [mid for mid, _ in modules]
    steps, i = [], 0
    while i < len(modules):
        run_ids = next((r for r in fused if tuple(ids[i:i + len(r)]) == r), None)
        steps.append(fused[run_ids] if run_ids else modules[i][1])
        i += len(run_ids) if run_ids else 1

    def run(params, inputs):
        for fn in steps:
            inputs = fn(params, inputs)
        return inputs
    return run


def validate_node_layers(node_layers: Sequence[str], valid: Sequence[str]) -> tuple[str, ...]:
    """Check that ``node_layers`` is a strictly increasing, duplicate-free subsequence of
    ``valid``."""
    node_layers = tuple(node_layers)
    shown = ", ".join(valid)
    if len(node_layers) < 2:
        raise NodeLayerError(
            f"need at least two node layers, got {list(node_layers)}; valid node layers in "
            f"order: {shown}")
    for name in node_layers:
        if name not in valid:
            raise NodeLayerError(f"unknown node layer {name!r}; valid node layers in order: "
                                 f"{shown}")
    if len(set(node_layers)) != len(node_layers):
        dup = sorted({n for n in node_layers if node_layers.count(n) > 1})
        raise NodeLayerError(f"node layer(s) {dup} listed more than once; valid node layers in "
                             f"order: {shown}")
    order = [valid.index(n) for n in node_layers]
    if order != sorted(order):
        raise NodeLayerError(f"node layers {list(node_layers)} are out of order; they must follow "
                             f"the model's order: {shown}")
    return node_layers


def cut(name: str, modules: Sequence[Module], params, example_input, node_layers: Sequence[str],
        positional: bool, selectable: Sequence[str] | None = None,
        positionwise_modules: Collection[str] = (),
        form_of: Callable[[tuple[str, ...]], Optional[Form]] | None = None,
        fused: Mapping[tuple[str, ...], Callable] | None = None,
        variances: Mapping[str, int] | None = None) -> SectionedModel:
    """Cut a module list into a :class:`SectionedModel` at ``node_layers``.

    ``selectable`` restricts which module ids may be node layers (default: all but the first,
    plus ``"output"``). Input-tuple widths are found by abstract evaluation on ``example_input``.
    Every node layer but ``"output"`` ends with the constant coordinate of the folded biases.
    ``positionwise_modules`` lists the modules that act on each position separately (a section
    made only of them, keeping its number of positions, is positionwise); ``form_of`` maps a
    section's module ids to its closed form, or None. ``fused`` maps runs of consecutive module
    ids to faster equivalent functions, used inside sections that contain the whole run.
    ``variances`` maps module ids to the coordinate of their input that is a LayerNorm variance.
    """
    fused, variances = dict(fused or {}), dict(variances or {})
    params = jax.device_put(params)  # (jnp.asarray compiles a program per shape)
    ids = [mid for mid, _ in modules]
    valid = list(selectable) if selectable is not None else ids[1:] + [OUTPUT]
    node_layers = validate_node_layers(node_layers, valid)
    if OUTPUT in node_layers[:-1]:
        raise NodeLayerError('"output" can only be the last node layer')

    # Shapes of every module's input tuple (and of the model output), without computing anything.
    def trace(p, x):
        shapes, inputs = {}, x
        for mid, fn in modules:
            shapes[mid] = inputs
            inputs = fn(p, inputs)
        shapes[OUTPUT] = inputs
        return shapes
    shapes = jax.eval_shape(trace, params, example_input)
    widths = {mid: tuple(a.shape[-1] for a in shapes[mid]) for mid in ids[1:] + [OUTPUT]}
    positions = {mid: shapes[mid][0].shape[0] for mid in ids[1:] + [OUTPUT]}

    pos_of = {mid: i for i, mid in enumerate(ids + [OUTPUT])}

    def span(start: str, stop: str | None):
        """Modules from node layer ``start`` up to (not including) node layer ``stop``."""
        lo = pos_of[start]
        hi = pos_of[stop] if stop is not None else len(ids)
        return modules[lo:hi]

    def make_embed():
        run = _chain(modules[:pos_of[node_layers[0]]], fused)
        return lambda p, x: _concat(run(p, x))

    def make_section(start, stop):
        run, w = _chain(span(start, stop), fused), widths[start]
        return lambda p, acts: _concat(run(p, _split(acts, w)))

    def node_layer(n: str) -> NodeLayer:
        width = sum(widths[n])
        return NodeLayer(n, width, positions[n], None if n == OUTPUT else width - 1,
                         variances.get(n))

    def section(a: str, b: str) -> Section:
        span_ids = tuple(mid for mid, _ in span(a, b))
        positionwise = positions[a] == positions[b] and set(span_ids) <= set(positionwise_modules)
        return Section(make_section(a, b), positionwise, form_of(span_ids) if form_of else None)

    last = node_layers[-1]
    tail = (lambda p, acts: acts) if last == OUTPUT else make_section(last, None)
    return SectionedModel(
        name=name, layers=tuple(node_layer(n) for n in node_layers), params=params,
        embed=make_embed(),
        sections=tuple(section(a, b) for a, b in zip(node_layers[:-1], node_layers[1:])),
        tail=tail, positional=positional)
