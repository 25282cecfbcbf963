"""The one contract between models and libjax: a model cut into sections at node layers.

A model is an ordered list of named modules. Each module is a pure per-sample function
``fn(params, inputs: tuple[Array, ...]) -> tuple[Array, ...]``; every array in a tuple is shaped
``(pos, width)`` (the first module receives the raw model input of one sample). Node layer ``X``
is the concatenation, along the last axis, of the input tuple of module ``X``; ``"output"`` is
the model output. :func:`cut` turns such a list into a :class:`SectionedModel`, the only view of a
model that ``libjax`` ever sees.

All functions of a :class:`SectionedModel` act on **one sample**; libjax vmaps them over batches.
Params are always an explicit argument, never closed over, so jitted programs stay small.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Collection, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from libjax.errors import NodeLayerError

OUTPUT = "output"

Module = tuple[str, Callable[[Any, tuple], tuple]]


@dataclasses.dataclass(frozen=True)
class MLPForm:
    """Declares that a section is, at every position, ``x -> x R + act(x B) D``.

    ``weights(params)`` returns a dict with ``"B"`` ``(d_in, m)``, ``"D"`` ``(m, d_out)`` (None:
    identity) and ``"R"`` ``(d_in, d_out)`` (None: no such term); ``act`` is None for a linear
    section ``x -> x R``. libjax then computes ``M'`` and edges in closed form
    (:mod:`libjax.closed_forms`) instead of one VJP per output direction.
    """

    act: Optional[Callable]
    weights: Callable[[Any], dict]
    kind = "mlp"


@dataclasses.dataclass(frozen=True)
class LayerNormInForm:
    """Declares the section ``x -> (var(x), x)`` at every position: the variance of the first
    ``width - 1`` coordinates (the last is the folded bias), then the input itself (SPEC 4.3);
    with ``centre=False`` (RMSNorm) their mean square instead."""

    centre: bool = True
    kind = "ln_in"


@dataclasses.dataclass(frozen=True)
class LayerNormOutForm:
    """Declares the section ``(v, x) -> (n, x)`` (or ``n`` alone without ``keep_resid``) at every
    position, ``n = ((x_j - mean) / sqrt(max(v, 0) + eps))_j`` over the first ``width - 1``
    coordinates followed by the constant 1 (SPEC 4.3); with ``centre=False`` (RMSNorm) nothing is
    subtracted, ``n = x_j / sqrt(max(v, 0) + eps)``."""

    eps: float
    keep_resid: bool
    centre: bool = True
    kind = "ln_out"


@dataclasses.dataclass(frozen=True)
class AttentionForm:
    """Declares an attention section ``x -> r_t + sum_h softmax(q k^T / scale) v W_O[h]`` at the
    output positions (all, or the last only), ``q, k, v`` from ``n``; ``n`` and ``r`` are both ``x``
    (``layout="shared"``) or its two halves (``"split"``, ``x = (n, r)``). ``weights(params)``
    gives ``W_Q``, ``W_K`` ``(H, D, dh)``, ``W_V`` ``(H, D, dv)``, ``W_O`` ``(H, dv, D)``;
    ``mask(P)`` the allowed ``(query, key)`` pairs."""

    weights: Callable[[Any], dict]
    mask: Callable[[int], Any]
    scale: float
    layout: str
    last_only: bool
    kind = "attention"


SectionForm = MLPForm | LayerNormInForm | LayerNormOutForm | AttentionForm


@dataclasses.dataclass(frozen=True)
class SectionedModel:
    """A model as seen by libjax.

    Attributes:
      node_layers: ordered node-layer names.
      params: the (bias-folded) parameter pytree, passed explicitly to every function.
      embed: ``(params, input) -> acts`` at ``node_layers[0]``, shaped ``(pos, d)``.
      sections: ``sections[i](params, acts_i) -> acts_{i+1}``, one per consecutive pair.
      tail: ``(params, acts_last) -> model output (pos, vocab)``; identity if the last node
        layer is ``"output"``. Used to evaluate the whole model (ablations).
      dims: width of each node layer (the concatenated, folded activation).
      positions: number of positions of each node layer.
      positional: whether activations have a real sequence axis (transformers) or a singleton
        one (MLPs); stochastic position sources need a real one.
      has_bias_coordinate: per node layer, whether its last coordinate is the constant 1 of the
        folded biases (every layer but ``"output"``).
      positionwise: per section, whether its output at position ``t`` depends only on its input
        at ``t`` (then one probe per output direction sums over positions exactly).
      forms: per section, a closed form (:class:`MLPForm`, :class:`LayerNormInForm`,
        :class:`LayerNormOutForm`, :class:`AttentionForm`) where the model declares one, else None.
    """

    name: str
    node_layers: tuple[str, ...]
    params: Any
    embed: Callable
    sections: tuple[Callable, ...]
    tail: Callable
    dims: tuple[int, ...]
    positions: tuple[int, ...]
    positional: bool
    has_bias_coordinate: tuple[bool, ...]
    positionwise: tuple[bool, ...] = ()
    forms: tuple[Optional[SectionForm], ...] = ()

    def __post_init__(self):
        n = len(self.sections)
        if not self.positionwise:
            object.__setattr__(self, "positionwise", (False,) * n)
        if not self.forms:
            object.__setattr__(self, "forms", (None,) * n)

    def forward(self, params, x):
        """Whole model on one sample: input -> output logits ``(pos, vocab)``."""
        return self.tail(params, self.run_to(params, x, len(self.node_layers) - 1))

    def run_to(self, params, x, layer_index: int):
        """Activations of one sample at node layer ``layer_index``."""
        acts = self.embed(params, x)
        for section in self.sections[:layer_index]:
            acts = section(params, acts)
        return acts

    def all_acts(self, params, x) -> list:
        """Activations of one sample at every node layer, in order."""
        acts = [self.embed(params, x)]
        for section in self.sections:
            acts.append(section(params, acts[-1]))
        return acts

    def index(self, node_layer: str) -> int:
        return self.node_layers.index(node_layer)


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
        form_of: Callable[[tuple[str, ...]], Optional[SectionForm]] | None = None,
        fused: Mapping[tuple[str, ...], Callable] | None = None) -> SectionedModel:
    """Cut a module list into a :class:`SectionedModel` at ``node_layers``.

    ``selectable`` restricts which module ids may be node layers (default: all but the first,
    plus ``"output"``). Input-tuple widths are found by abstract evaluation on ``example_input``.
    ``positionwise_modules`` lists the modules that act on each position separately (a section
    made only of them, keeping its number of positions, is positionwise); ``form_of`` maps a
    section's module ids to its closed form (:class:`MLPForm` ...), or None. ``fused`` maps runs
    of consecutive module ids to faster equivalent functions, used inside sections that contain
    the whole run.
    """
    fused = dict(fused or {})
    params = jax.tree.map(jnp.asarray, params)
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

    pairs = list(zip(node_layers[:-1], node_layers[1:]))
    sections = tuple(make_section(a, b) for a, b in pairs)
    spans = [tuple(mid for mid, _ in span(a, b)) for a, b in pairs]
    positionwise = tuple(positions[a] == positions[b] and set(ids_) <= set(positionwise_modules)
                         for (a, b), ids_ in zip(pairs, spans))
    forms = tuple(form_of(ids_) if form_of else None for ids_ in spans)
    last = node_layers[-1]
    if last == OUTPUT:
        tail = lambda p, acts: acts  # noqa: E731
    else:
        tail = make_section(last, None)
    return SectionedModel(
        name=name, node_layers=node_layers, params=params, embed=make_embed(), sections=sections,
        tail=tail, dims=tuple(sum(widths[n]) for n in node_layers),
        positions=tuple(positions[n] for n in node_layers), positional=positional,
        has_bias_coordinate=tuple(n != OUTPUT for n in node_layers), positionwise=positionwise,
        forms=forms)
