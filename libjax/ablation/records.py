"""Ablation results as JSON records (docs/method.md 3.5), and the edge masks read back from
them."""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

import numpy as np

from libjax.errors import DataError


@dataclasses.dataclass(frozen=True)
class EdgeResult:
    """Edge-ablation outcome of one layer pair, keyed by its input layer.

    Attributes:
      scores: ``{n_edges_kept: score}`` of every probed count, descending.
      n_edges_required: ``n - lower`` (conservative), ``n = orig_in * orig_out``.
      mask: the edge mask keeping ``n_edges_required`` edges.
    """

    scores: dict[int, float]
    n_edges_required: int
    mask: np.ndarray


def node_record(results: dict[str, dict[int, float]], no_ablation_result: float, config: dict,
                seconds: float, cpu_seconds: Optional[float] = None) -> dict:
    """The JSON record of a node ablation (docs/method.md 3.5): ``results[layer][n_remaining] =
    score``,
    with the wall-clock (and CPU) time it took."""
    return {"config": config,
            "results": {name: {str(k): v for k, v in scores.items()}
                        for name, scores in results.items()},
            "no_ablation_result": no_ablation_result,
            "time_taken": f"{seconds:.1f} s", "time_taken_s": seconds, "cpu_time_s": cpu_seconds}


def edge_record(results: dict[str, EdgeResult], no_ablation_result: float, config: dict,
                seconds: float, cpu_seconds: Optional[float] = None) -> dict:
    """The JSON record of an edge ablation (docs/method.md 3.5): ``results[layer][n_edges_kept] =
    score``, ``n_edges_required``, and ``edge_masks[layer][n_edges_required]``: the mask of the
    required edges as one string of 0/1 per output node (compact, unlike nested lists)."""
    record = node_record({k: r.scores for k, r in results.items()}, no_ablation_result, config,
                         seconds, cpu_seconds)
    record["n_edges_required"] = {k: r.n_edges_required for k, r in results.items()}
    record["edge_masks"] = {
        k: {str(r.n_edges_required): ["".join("1" if v else "0" for v in row) for row in r.mask]}
        for k, r in results.items()}
    return record


def required_masks(record: dict) -> dict[str, np.ndarray]:
    """The masks of the required edges of an edge-ablation record, by input layer."""
    return {name: np.array([[c == "1" for c in row] for row in record["edge_masks"][name][str(n)]])
            for name, n in record["n_edges_required"].items()}


def read_record(path, flag: str) -> dict:
    """The ablation record in the JSON file ``path`` (written by ``ablate.py``); ``flag``: the
    option that named the file, for the error message."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as err:  # ValueError: not JSON, not text
        raise DataError(f"cannot read ablation results {path}: {err}") from None
    if not isinstance(record, dict) or "results" not in record or \
            "ablation_type" not in record.get("config", {}):
        raise DataError(f"{path} is not an ablation result file of ablate.py ({flag})")
    return record


def read_required_masks(path) -> dict[str, np.ndarray]:
    """:func:`required_masks` of the edge-ablation record in the JSON file ``path``."""
    try:
        with open(path) as f:
            return required_masks(json.load(f))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"cannot read edge masks from {path}: {err}; pass the "
                        "*_edge_ablation_results.json written by ablate.py") from None
