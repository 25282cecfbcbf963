"""The matrices an ablation applies: the rotation that zeroes the least important directions
(docs/method.md 3.1) and the mask that keeps the strongest edges (3.3)."""

from __future__ import annotations

import numpy as np

from libjax.errors import ConfigError


def rotation_matrix(c, c_pinv, n_zeroed: int) -> np.ndarray:
    """``C_abl C^+`` with the last ``n_zeroed`` columns of ``C`` zeroed (docs/method.md 3.1); the
    identity
    for ``n_zeroed = 0`` (not the projector ``C C^+``), zero for ``n_zeroed = rib``."""
    c, c_pinv = np.asarray(c, np.float64), np.asarray(c_pinv, np.float64)
    rib = c.shape[1]
    if not 0 <= n_zeroed <= rib:
        raise ConfigError(f"cannot zero {n_zeroed} of {rib} directions")
    if n_zeroed == 0:
        return np.eye(c.shape[0])
    keep = rib - n_zeroed
    return c[:, :keep] @ c_pinv[:keep]


def edge_mask(edges, n_keep: int, free_const_column: bool) -> np.ndarray:
    """Boolean ``(out, in)`` mask keeping the ``n_keep`` strongest edges (docs/method.md 3.3).

    With ``free_const_column`` (a centred build) the edges of input node 0, the constant
    direction, are always kept and not counted. Entries ``>=`` the ``n_keep``-th largest
    candidate are kept, so ties may keep more; ``n_keep`` above the number of candidates keeps all.
    """
    edges = np.asarray(edges)
    if n_keep < 0:
        raise ConfigError(f"cannot keep a negative number of edges ({n_keep})")
    start = 1 if free_const_column else 0
    candidates = edges[:, start:]
    mask = np.ones(edges.shape, bool)
    if n_keep > candidates.size:
        return mask
    if n_keep == 0:
        mask[:, start:] = False
    else:
        k = candidates.size - n_keep
        threshold = np.partition(candidates.ravel(), k)[k]  # the n_keep-th largest
        mask[:, start:] = candidates >= threshold
    return mask


def group_rows(mask, compute) -> tuple[np.ndarray, np.ndarray]:
    """Group the rows of an edge mask that must be computed by their pattern of kept inputs.

    Returns ``(patterns, inverse)``: the distinct patterns of the rows with ``compute`` set, as
    0/1 floats ``(U, in)``, and for each row the index of its pattern, or -1 for the other rows.
    """
    mask, compute = np.asarray(mask, bool), np.asarray(compute, bool)
    inverse = np.full(mask.shape[0], -1, np.int32)
    if not compute.any():
        return np.zeros((0, mask.shape[1]), np.float32), inverse
    patterns, inv = np.unique(mask[compute], axis=0, return_inverse=True)
    inverse[compute] = np.ravel(inv)
    return patterns.astype(np.float32), inverse


ZERO, FULL, HELD = 0, 1, 2  # what a row's signed list is added to (:func:`cheapest_lists`)


def cheapest_lists(mask, rows, n_slots: int, width: int, held=None) -> tuple:
    """Each of ``rows``' shortest signed input-node list under the boolean ``(out, in)`` edge
    ``mask``, and what it is added to: its kept nodes to zero (``ZERO``); its ablated nodes,
    subtracted from the unablated row (``FULL``), where it keeps more than half; or, where
    ``held`` (bool ``(held rows, in)``, or None) holds the pattern one of the first rows was
    last computed with (``HELD``), the nodes that changed since, kept ones added and dropped
    ones subtracted. A
    listed node's sign is +1 where the mask keeps it, else -1. Rows are sorted by list length
    (stably) and padded to ``n_slots``; ``width >= in // 2`` holds any list.

    Returns ``(lists (n_slots, width), signs, out_rows, base, kept (n_slots, in), lengths)``:
    padding lists hold node ``in``, padding rows index ``out``, keep nothing, have base
    ``ZERO`` and length 0.
    """
    n_out, n_in = mask.shape
    kept = mask[rows]
    n_kept = kept.sum(1)
    base = np.where(2 * n_kept > n_in, FULL, ZERO)
    listed = kept != (base == FULL)[:, None]
    if held is not None:  # rows below len(held) hold sums
        inside = np.flatnonzero(np.asarray(rows) < len(held))
        changed = kept[inside] != held[np.asarray(rows)[inside]]
        closer = changed.sum(1) < np.minimum(n_kept, n_in - n_kept)[inside]
        base[inside[closer]] = HELD
        listed[inside[closer]] = changed[closer]
    length = listed.sum(1)
    order = np.argsort(length, kind="stable")
    row_of, node = np.nonzero(listed[order])
    column = np.arange(len(row_of)) - np.searchsorted(row_of, row_of)
    lists = np.full((n_slots, width), n_in, np.int32)
    lists[row_of, column] = node
    signs = np.ones((n_slots, width), np.float32)
    signs[row_of, column] = np.where(kept[order][row_of, node], 1, -1)
    out_rows = np.full(n_slots, n_out, np.int32)
    out_rows[:len(rows)] = np.asarray(rows)[order]
    bases = np.full(n_slots, ZERO, np.int32)
    bases[:len(rows)] = base[order]
    kept_rows = np.zeros((n_slots, n_in), bool)
    kept_rows[:len(rows)] = kept[order]
    lengths = np.zeros(n_slots, np.int64)
    lengths[:len(rows)] = length[order]
    return lists, signs, out_rows, bases, kept_rows, lengths
