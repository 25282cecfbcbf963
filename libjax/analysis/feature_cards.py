"""Feature cards: what each direction of a build responds to, computed once and stored beside it.

A card set is, per node layer, a dict of NumPy arrays with one leading entry per direction (plus
shared tables), and a ``kind`` saying how the explorer draws it:

* ``grid``: ``grid`` ``(dirs, p, p)`` uint8 activations over an input grid (code 128 is 0, 0/255
  are ``-/+scale``), ``scale``, ``position`` and a text ``summary`` (modular addition: the
  dominant Fourier frequencies);
* ``images``: ``top``/``bottom`` ``(dirs, k)`` indices into ``images`` ``(n, H, W)`` uint8 (or
  ``(n, 3, H, W)``): the images of largest and of smallest (most negative) activation, with
  ``top_values``/``bottom_values`` and ``top_classes``/``bottom_classes``; ``direction``
  ``(dirs, H * W)`` (the direction drawn as an image);
* ``contexts``: ``tokens``/``bottom_tokens`` ``(dirs, k, window)`` (``-1``: none) into
  ``vocab_ids``/``vocab_text``, ``highlight`` (the activating token's index in every window) and
  ``top_values``/``bottom_values``.

Every kind may carry ``label`` ``(dirs,)``, a short text per direction (searchable in the
explorer); ``source``, a JSON text saying what data the examples were drawn from; ``hist`` ``(dirs,
bins)`` with ``hist_range`` ``(dirs, 2)``, the distribution of each
direction's activation; and its effect on the output (:func:`effects`): ``raises``/``lowers``
``(dirs, m)`` indices into ``outputs`` (their names) with ``raises_by``/``lowers_by``. The model
families make the content (``family.feature_cards``); this module computes,
stores and reads card sets: ``<graph_dir>/analysis/cards/<node layer>.npz``, each stamped with the
build's fingerprint so that cards of a rebuilt directory are recomputed, not shown.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from libjax.analysis import activations
from libjax.errors import ConfigError
from libjax.runtime import progress
from libjax.storage import files

log = logging.getLogger("libjax")

CARDS_DIR = Path("analysis") / "cards"
KINDS = ("grid", "images", "contexts")


FORMAT = 4  # the card format: cards stored in an older one are recomputed


def fingerprint(build_info: dict) -> str:
    """What identifies a build's content (its weights and data digests and its configuration)
    and the card format."""
    return f"cards v{FORMAT}|" + "|".join(str(build_info.get(k)) for k in
                                          ("params_sha256", "data_sha256", "config"))


def quantise(values: np.ndarray, axis: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Signed values -> uint8 codes (128 is 0) and the per-entry ``scale`` (max ``|value|`` over
    ``axis``): ``value ~= (code - 128) / 127 * scale``."""
    values = np.asarray(values, np.float64)
    scale = np.abs(values).max(axis=axis, keepdims=True)
    safe = np.where(scale > 0, scale, 1.0)
    codes = np.clip(np.rint(values / safe * 127) + 128, 1, 255).astype(np.uint8)
    return codes, scale.reshape(scale.shape[:1])


def _path(graph_dir, node_layer: str) -> Path:
    return Path(graph_dir) / CARDS_DIR / f"{node_layer}.npz"


def save(cards: dict, graph_dir, build_info: dict) -> list[Path]:
    """Write one ``.npz`` per node layer (atomically), stamped with the build's fingerprint."""
    paths = []
    for name, arrays in cards.items():
        if str(arrays.get("kind")) not in KINDS:
            raise ConfigError(f"cards of {name} have kind {arrays.get('kind')!r}; the explorer "
                              f"draws {', '.join(KINDS)}")
        path = _path(graph_dir, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, build=np.asarray(fingerprint(build_info)),
                            **{k: np.asarray(v) for k, v in arrays.items()})
        files.write_atomic(path, lambda f: f.write(buffer.getvalue()))
        paths.append(path)
    return paths


def load(graph_dir, build_info: dict, node_layers: Sequence[str]) -> dict:
    """The stored cards of ``node_layers`` that belong to this build (others are left out)."""
    cards = {}
    for name in node_layers:
        path = _path(graph_dir, name)
        if not path.exists():
            continue
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        if str(arrays.pop("build")) != fingerprint(build_info):
            log.info("cards of %s belong to an earlier build in %s; recomputing", name, graph_dir)
            continue
        arrays["kind"] = str(arrays["kind"])
        cards[name] = arrays
    return cards


def compute(build, node_layers: Optional[Sequence[str]] = None, recompute: bool = False,
            **options) -> dict:
    """Cards of ``node_layers`` (default: all) of an opened build (``models.opened``): read where
    stored, else made by the build's model family (``family.feature_cards``) and stored. Families
    without cards give none. ``options`` go to the family (e.g. ``k``, the examples per card)."""
    layers = list(node_layers or build.graph.node_layers)
    have = {} if recompute else load(build.directory, build.info, layers)
    missing = [n for n in layers if n not in have]
    if missing:
        for name in progress.track(missing, len(missing), "feature cards", "node layers"):
            made = build.family.feature_cards(build.opts, build.model, build.graph, build.data,
                                              [name], **options)
            save(made, build.directory, build.info)  # layer by layer: an interruption keeps them
            have.update(made)
    return {n: have[n] for n in layers if n in have}


def basis_matrix(graph, node_layer: str) -> np.ndarray:
    """``C`` of ``node_layer``, or the identity for a layer without a basis (its neurons)."""
    b = graph.basis(node_layer)
    return (np.asarray(b.C, np.float64) if b is not None
            else np.eye(graph.orig_dims[node_layer]))


def majority(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``values`` ``(rows, k)``, its most common entry and how often it occurs
    (ties: the smallest entry)."""
    values = np.asarray(values)
    uniq, inverse = np.unique(values, return_inverse=True)
    counts = np.zeros((len(values), len(uniq)), int)
    np.add.at(counts, (np.repeat(np.arange(len(values)), values.shape[1]), inverse.ravel()), 1)
    best = counts.argmax(axis=1)
    return uniq[best], counts[np.arange(len(values)), best]


def histograms(acts: np.ndarray, bins: int = 32) -> dict:
    """Each direction's activation histogram: ``acts`` ``(n, dirs)`` -> ``hist`` ``(dirs, bins)``
    counts over ``bins`` equal bins spanning ``hist_range`` ``(dirs, 2)`` (its min and max)."""
    acts = np.asarray(acts, np.float64)
    lo, hi = acts.min(axis=0), acts.max(axis=0)
    width = np.where(hi > lo, hi - lo, 1.0)
    which = np.clip(((acts - lo) / width * bins).astype(np.int64), 0, bins - 1)  # (n, dirs)
    counts = np.zeros((acts.shape[1], bins), np.int32)
    np.add.at(counts, (np.broadcast_to(np.arange(acts.shape[1]), which.shape), which), 1)
    return {"hist": counts, "hist_range": np.stack([lo, hi], axis=1)}


def effects(model, graph, node_layer: str, inputs, scale: np.ndarray, outputs,
            m: int = 5) -> dict:
    """Which outputs each direction raises and lowers: the mean change of the output (centred
    over the outputs, since a shift common to every logit changes no prediction) when the
    direction's activation grows by ``scale`` (e.g. its standard deviation), linearised at each
    input (:func:`activations.output_effects`), its ``m`` largest rises and falls.
    ``outputs``: a name per output coordinate."""
    b = graph.basis(node_layer)
    rows = (np.asarray(b.C_pinv, np.float64) if b is not None
            else np.eye(graph.orig_dims[node_layer]))
    moved = activations.output_effects(model, node_layer, rows, inputs)
    moved = (moved - moved.mean(axis=1, keepdims=True)) * np.asarray(scale)[:, None]
    m = min(m, moved.shape[1])
    up = np.argsort(-moved, axis=1, kind="stable")[:, :m]
    down = np.argsort(moved, axis=1, kind="stable")[:, :m]
    return {"raises": up.astype(np.int32), "raises_by": np.take_along_axis(moved, up, 1),
            "lowers": down.astype(np.int32), "lowers_by": np.take_along_axis(moved, down, 1),
            "outputs": np.asarray([str(o) for o in outputs])}
