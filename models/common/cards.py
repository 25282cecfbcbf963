"""Feature-card content shared by model families (format: :mod:`libjax.analysis.feature_cards`;
modular addition's grid cards are :mod:`models.modadd.cards`).

* :func:`image_cards`: the top-activating images, and the direction drawn as an image (at the
  input layer the direction itself, deeper the correlation of its activation with each pixel);
* :func:`context_cards`: the top-activating token contexts, activating token highlighted,
  decoded with the model's tokenizer when there is one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from libjax.analysis import activations, clustering, feature_cards


def image_cards(model, graph, data, node_layers, image_shape, k: int = 8) -> dict:
    images = np.asarray(data.inputs, np.float64)
    flat = images.reshape(len(images), -1)
    labels = None if data.labels is None else np.asarray(data.labels)
    cards = {}
    for name in node_layers:
        C = feature_cards.basis_matrix(graph, name)
        acts = activations.basis_activations(model, name, images, C, 1024)[:, 0]  # (n, dirs)
        order = np.argsort(-np.abs(acts), axis=0, kind="stable")[:k].T  # (dirs, k)
        at_input = model.node_layers.index(name) == 0 and graph.basis(name) is not None
        if at_input:
            direction = np.asarray(graph.basis(name).C_pinv, np.float64)[:, :flat.shape[1]]
        else:  # correlation of each direction's activation with each pixel
            a = acts - acts.mean(axis=0)
            x = flat - flat.mean(axis=0)
            denom = np.outer(np.linalg.norm(a, axis=0), np.linalg.norm(x, axis=0))
            direction = np.divide(a.T @ x, denom, out=np.zeros(denom.shape), where=denom > 0)
        used, top = np.unique(order, return_inverse=True)
        card = {"kind": "images", "top": top.reshape(order.shape).astype(np.int32),
                "top_values": np.take_along_axis(acts.T, order, axis=1),
                "images": np.clip(np.rint(images[used] * 255), 0, 255).astype(np.uint8)
                .reshape(len(used), *image_shape),
                "direction": direction,
                "direction_kind": np.asarray("direction" if at_input else "pixel correlation")}
        if labels is not None:
            classes = labels[order]
            common, count = feature_cards.majority(classes)
            card["top_classes"] = classes.astype(np.int32)
            card["label"] = _const_first(graph, name, [f"class {c} ({n}/{classes.shape[1]})"
                                                        for c, n in zip(common, count)])
        cards[name] = card
    return cards


def context_cards(model, graph, data, node_layers, decode=None, k: int = 6, before: int = 12,
                  after: int = 3, batch_size: int = 8) -> dict:
    """``decode(token_id) -> str`` (None: token ids shown as ``#id``)."""
    tokens = np.asarray(data.inputs)
    n_ctx = tokens.shape[1]
    cards = {}
    for name in node_layers:
        top = activations.top_activations(model, name, feature_cards.basis_matrix(graph, name),
                                          tokens, k, batch_size)
        sample, pos = top.sample.T, top.position.T  # (dirs, k)
        offsets = np.arange(-before, after + 1)
        where = pos[..., None] + offsets  # (dirs, k, window)
        inside = (where >= 0) & (where < n_ctx)
        window = np.where(inside, tokens[sample[..., None], np.clip(where, 0, n_ctx - 1)], -1)
        vocab = np.unique(window[window >= 0])
        text = np.asarray([decode(int(t)) if decode else f"#{t}" for t in vocab], dtype=str)
        index = np.where(window >= 0, np.searchsorted(vocab, np.maximum(window, 0)), -1)
        active = tokens[sample, pos]
        common, count = feature_cards.majority(active)
        label = [f"{(decode(int(t)) if decode else f'#{t}')!r} ({n}/{active.shape[1]})"
                 for t, n in zip(common, count)]
        cards[name] = {"kind": "contexts", "tokens": index.astype(np.int32),
                       "vocab_ids": vocab.astype(np.int32), "vocab_text": text,
                       "highlight": np.asarray(before),
                       "top_values": top.values.T, "sample": sample, "position": pos,
                       "label": _const_first(graph, name, label)}
    return cards


def _const_first(graph, node_layer: str, labels) -> np.ndarray:
    """``labels`` with a centred basis's first direction called ``const``, as it is."""
    labels = [str(x) for x in labels]
    if clustering.has_constant_direction(graph, node_layer):
        labels[0] = "const"
    return np.asarray(labels, dtype=str)


def decoder(directory) -> Optional[Callable[[int], str]]:
    """``token id -> text`` with the checkpoint's tokenizer in ``directory`` (None without one)."""
    directory = Path(directory)
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
