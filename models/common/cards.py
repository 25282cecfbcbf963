"""Feature-card content shared by model families (format: :mod:`libjax.analysis.feature_cards`;
modular addition's grid cards are :mod:`models.modadd.cards`).

* :func:`image_cards`: the images of largest and of smallest activation, and the direction drawn
  as an image (at the input layer the direction itself, deeper the correlation of its activation
  with each pixel);
* :func:`context_cards`: the token contexts of largest and smallest activation, the activating
  token highlighted,
  decoded with the model's tokenizer when there is one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np

from libjax.analysis import activations, clustering, feature_cards
from libjax.errors import DataError
from libjax.pipeline.config import skip_positions_of
from models.common import gguf


def image_cards(model, graph, data, node_layers, image_shape, k: int = 8,
                n_effect: int = 512) -> dict:
    """Per direction: the ``k`` images of largest and the ``k`` of smallest activation (its
    positive and negative ends, apart), its histogram, the classes it raises and lowers (on the
    first ``n_effect`` images) and the direction drawn as an image. Labels: a logit (the graph's
    unrotated output) is its class; a direction, the majority classes of its two ends."""
    images = np.asarray(data.inputs, np.float64)
    flat = images.reshape(len(images), -1)
    labels = None if data.labels is None else np.asarray(data.labels)
    cards = {}
    for name in node_layers:
        C = feature_cards.basis_matrix(graph, name)
        acts = activations.basis_activations(model, name, images, C, 1024)[:, 0]  # (n, dirs)
        top = np.argsort(-acts, axis=0, kind="stable")[:k].T  # (dirs, k), largest first
        bottom = np.argsort(acts, axis=0, kind="stable")[:k].T  # smallest (most negative) first
        at_input = model.node_layers.index(name) == 0 and graph.basis(name) is not None
        if at_input:
            direction = np.asarray(graph.basis(name).C_pinv, np.float64)[:, :flat.shape[1]]
        else:  # correlation of each direction's activation with each pixel
            a = acts - acts.mean(axis=0)
            x = flat - flat.mean(axis=0)
            denom = np.outer(np.linalg.norm(a, axis=0), np.linalg.norm(x, axis=0))
            direction = np.divide(a.T @ x, denom, out=np.zeros(denom.shape), where=denom > 0)
        used, index = np.unique(np.concatenate([top, bottom], axis=1), return_inverse=True)
        index = index.reshape(len(top), 2 * top.shape[1]).astype(np.int32)
        n_classes = model.layers[-1].width
        card = {"kind": "images", "source": _source(data, len(images)),
                "top": index[:, :top.shape[1]],
                "bottom": index[:, top.shape[1]:],
                "top_values": np.take_along_axis(acts.T, top, axis=1),
                "bottom_values": np.take_along_axis(acts.T, bottom, axis=1),
                "images": np.clip(np.rint(images[used] * 255), 0, 255).astype(np.uint8)
                .reshape(len(used), *image_shape),
                "direction": direction,
                "direction_kind": np.asarray("direction" if at_input else "pixel correlation"),
                **feature_cards.histograms(acts),
                **feature_cards.effects(model, graph, name, images[:n_effect], acts.std(axis=0),
                                        [f"class {c}" for c in range(n_classes)])}
        if graph.basis(name) is None and name == model.node_layers[-1]:
            text = [f"logit {j} (class {j})" for j in range(acts.shape[1])]
        else:
            text = [f"neuron {j}" if graph.basis(name) is None else f"dir {j}"
                    for j in range(acts.shape[1])]
        if labels is not None:
            up, down = labels[top], labels[bottom]
            card["top_classes"], card["bottom_classes"] = up.astype(np.int32), down.astype(np.int32)
            c_up, n_up = feature_cards.majority(up)
            c_down, n_down = feature_cards.majority(down)
            if graph.basis(name) is not None or name != model.node_layers[-1]:
                text = [f"+{a} ({na}/{k}), -{b} ({nb}/{k})"
                        for a, na, b, nb in zip(c_up, n_up, c_down, n_down)]
        card["label"] = _const_first(graph, name, text)
        cards[name] = card
    return cards


def context_cards(model, graph, data, node_layers, decode=None, k: int = 6, before: int = 12,
                  after: int = 3, batch_size: int = 8) -> dict:
    """Per direction the ``k`` token contexts of largest and the ``k`` of smallest activation,
    and its histogram over every (sample, position) of ``data``.
    ``decode(token_id) -> str`` (None: token ids shown as ``#id``)."""
    tokens = np.asarray(data.inputs)
    n_ctx = tokens.shape[1]
    name_of = (lambda t: decode(int(t))) if decode else (lambda t: f"#{t}")
    skip = skip_positions_of(graph.config)  # positions the build left out: never shown
    cards = {}
    for name in node_layers:
        ends = activations.top_activations(model, name, feature_cards.basis_matrix(graph, name),
                                           tokens, k, batch_size, skip)
        offsets = np.arange(-before, after + 1)
        windows = []
        for end in ends:
            where = end.position.T[..., None] + offsets  # (dirs, k, window)
            inside = (where >= 0) & (where < n_ctx)
            windows.append(np.where(inside, tokens[end.sample.T[..., None],
                                                   np.clip(where, 0, n_ctx - 1)], -1))
        both = np.stack(windows)
        vocab = np.unique(both[both >= 0])
        text = np.asarray([name_of(t) for t in vocab], dtype=str)
        index = np.where(both >= 0, np.searchsorted(vocab, np.maximum(both, 0)), -1)
        active = tokens[ends.high.sample.T, ends.high.position.T]
        common, count = feature_cards.majority(active)
        label = [f"{name_of(t)!r} ({n}/{active.shape[1]})" for t, n in zip(common, count)]
        lo, hi = ends.low.values[0], ends.high.values[0]  # every activation lies between
        hist = activations.histograms(model, name, feature_cards.basis_matrix(graph, name),
                                      tokens, lo, hi, batch_size=batch_size, skip_positions=skip)
        cards[name] = {"kind": "contexts", "source": _source(data, len(tokens)),
                       "tokens": index[0].astype(np.int32),
                       "hist": hist, "hist_range": np.stack([lo, hi], axis=1),
                       "bottom_tokens": index[1].astype(np.int32),
                       "vocab_ids": vocab.astype(np.int32), "vocab_text": text,
                       "highlight": np.asarray(before),
                       "top_values": ends.high.values.T, "bottom_values": ends.low.values.T,
                       "sample": ends.high.sample.T, "position": ends.high.position.T,
                       "label": _const_first(graph, name, label)}
    return cards


def _source(data, n: int) -> np.ndarray:
    """What the examples were drawn from, as the card records it (JSON): the data's own record
    (a language model's corpus, context and seed) and the number of samples."""
    return np.asarray(json.dumps({**(data.source or {}), "n_samples": int(n)}, sort_keys=True))


def _const_first(graph, node_layer: str, labels) -> np.ndarray:
    """``labels`` with a centred basis's first direction called ``const``, as it is."""
    labels = [str(x) for x in labels]
    if clustering.has_constant_direction(graph, node_layer):
        labels[0] = "const"
    return np.asarray(labels, dtype=str)


def decoder(directory) -> Optional[Callable[[int], str]]:
    """``token id -> text`` with the checkpoint's tokenizer: a GGUF file's, or the one in a
    checkpoint directory (None without one)."""
    directory = Path(directory)
    if gguf.is_gguf(directory):
        try:
            tok = gguf.tokenizer(directory)
        except DataError:  # no byte-level BPE tokenizer in the file: token ids are shown
            return None
        return lambda t: tok.decode([t], skip_special_tokens=False)
    if (directory / "tokenizer.json").is_file():
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
        return lambda t: tok.decode([t], skip_special_tokens=False)
    if not (directory / "vocab.json").is_file():  # GPT-2's older layout, with merges.txt
        return None
    try:
        from transformers import AutoTokenizer
        auto = AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return lambda t: auto.decode([t])
