"""The matrices an ablation applies: the rotation that zeroes the least important directions
(docs/method.md 3.1) and the mask that keeps the strongest edges (3.3)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree

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
BASE_COST = 12  # reading a row's starting sums costs about as much as summing a dozen nodes
MAX_DEPTH = 8  # generations of rows started from another row's new sums, at most


class RowLists(NamedTuple):
    """Each planned row's signed list of input nodes and what it is added to, in slots of
    ``group`` rows (:func:`cheapest_lists`). Padding slots hold row ``out``, list node ``in``,
    base ``ZERO``, length 0 and keep nothing."""

    lists: np.ndarray  # (slots, width) input nodes
    signs: np.ndarray  # (slots, width) +1 where the mask keeps the node, else -1
    rows: np.ndarray  # (slots,) output row
    bases: np.ndarray  # (slots,) ZERO, FULL or HELD
    sources: np.ndarray  # (slots,) the held row whose sums a HELD list is added to
    kept: np.ndarray  # (slots, in) the row of the mask
    lengths: np.ndarray  # (slots,) the list's length
    sourced: np.ndarray  # (slots,) another row starts from this row's new sums
    n_groups: int  # groups holding rows; the rest are padding


def longest_list(n_in: int) -> int:
    """The longest list :func:`cheapest_lists` makes for rows of ``n_in`` input nodes: a row's
    kept nodes where they are at most its ablated ones plus :data:`BASE_COST`."""
    return (n_in + BASE_COST) // 2


def cheapest_lists(mask, rows, group: int, width: int, held=None) -> RowLists:
    """Cheap signed input-node lists for ``rows`` under the boolean ``(out, in)`` edge ``mask``.

    A row's sums are linear in its kept nodes, so they can start from zero (``ZERO``: its kept
    nodes listed), from the unablated sums (``FULL``: its ablated nodes, subtracted) or from
    held sums (``HELD``: the nodes that differ, kept ones added and dropped ones subtracted):
    its own, where ``held`` (bool ``(held rows, in)``, or None) holds the pattern one of the
    first rows was last computed with, or those another held row was just computed with. The
    last is what makes a bisection's first masks cheap: at one threshold the rows of an edge
    matrix keep nearly nested sets of nodes, so most rows are a few nodes away from another.
    The choice is a spanning tree of least cost over the rows (a start costing
    :data:`BASE_COST` nodes), at most :data:`MAX_DEPTH` deep, no row costing more than its best
    start of its own.

    Rows are laid out by generation, in groups of ``group`` slots that never hold a row and its
    source (a generation starts a new group only where the last one's open group holds a
    source: its sources come first, then the other rows, each by list length); ``width >=
    longest_list(in)`` holds any list. The number of slots, ``(ceil(out / group) + MAX_DEPTH +
    1) * group``, depends on the shapes only, so one compiled program serves every mask.
    """
    n_out, n_in = mask.shape
    rows = np.asarray(rows, np.int64)
    kept = mask[rows]
    n_kept = kept.sum(1)
    base = np.where(n_in - n_kept + BASE_COST < n_kept, FULL, ZERO)
    start = np.repeat((base == FULL)[:, None], n_in, axis=1)
    cost = np.minimum(n_kept, n_in - n_kept + BASE_COST)
    parent = np.full(len(rows), -1)
    if held is not None:
        inside = rows < len(held)
        own = np.zeros(len(rows), np.int64)
        own[inside] = (kept[inside] != held[rows[inside]]).sum(1)
        closer = inside & (own + BASE_COST < cost)
        base[closer], cost[closer] = HELD, own[closer] + BASE_COST
        start[closer] = held[rows[closer]]
        parent = _spanning_parents(kept, cost, inside)
    child = parent >= 0
    base[child] = HELD
    start[child] = kept[parent[child]]
    sources = rows.copy()
    sources[child] = rows[parent[child]]
    listed = kept != start
    length = listed.sum(1)
    depth = _depths(parent)

    sourced = np.isin(np.arange(len(rows)), parent)
    order = np.lexsort((length, ~sourced, depth))  # by generation, sources first, by length
    level = depth[order]
    slot = np.arange(len(order))
    for first in np.searchsorted(level, np.arange(1, level.max(initial=0) + 1)):
        # A generation starts a new group where the last one's open group holds a source.
        open_group = slot[:first] >= slot[first - 1] // group * group
        if sourced[order[:first][open_group]].any():
            slot[first:] += -slot[first] % group
    n_slots = (-(-n_out // group) + MAX_DEPTH + 1) * group
    row_of, node = np.nonzero(listed[order])
    column = np.arange(len(row_of)) - np.searchsorted(row_of, row_of)
    out = RowLists(
        lists=np.full((n_slots, width), n_in, np.int32),
        signs=np.ones((n_slots, width), np.float32),
        rows=np.full(n_slots, n_out, np.int32), bases=np.full(n_slots, ZERO, np.int32),
        sources=np.full(n_slots, n_out, np.int32), kept=np.zeros((n_slots, n_in), bool),
        lengths=np.zeros(n_slots, np.int64), sourced=np.zeros(n_slots, bool),
        n_groups=-(-(slot[-1] + 1 if len(slot) else 0) // group))
    out.lists[slot[row_of], column] = node
    out.signs[slot[row_of], column] = np.where(kept[order][row_of, node], 1, -1)
    out.rows[slot] = rows[order]
    out.bases[slot] = base[order]
    out.sources[slot] = sources[order]
    out.kept[slot] = kept[order]
    out.lengths[slot] = length[order]
    out.sourced[slot] = sourced[order]
    return out


def _spanning_parents(kept, cost, eligible) -> np.ndarray:
    """Each row's parent (-1: it starts on its own, at ``cost``) in a cheap spanning tree: a
    row started from another costs the nodes they differ in plus :data:`BASE_COST`. Only
    ``eligible`` rows (those whose sums are held) can be parents; the tree is a minimum one
    over them, the others join where they are cheapest, then rows deeper than
    :data:`MAX_DEPTH` move to the cheapest row above that depth."""
    idx = np.flatnonzero(eligible)
    parent = np.full(len(kept), -1)
    if not len(idx):
        return parent
    k = kept.astype(np.float32)  # exact: counts below 2**24
    apart = (k @ (1 - k[idx]).T + (1 - k) @ k[idx].T).astype(np.int64) + BASE_COST
    n = len(idx)
    graph = np.zeros((n + 1, n + 1))
    graph[0, 1:] = cost[idx] + 1  # +1 on every edge: a zero weight would be no edge
    graph[1:, 1:] = np.triu(apart[idx] + 1, 1)
    tree = minimum_spanning_tree(graph)
    _, pred = breadth_first_order(tree, 0, directed=False)
    parent[idx] = np.where(pred[1:] > 0, idx[np.maximum(pred[1:] - 1, 0)], -1)
    others = np.flatnonzero(~eligible)  # they join where cheapest; no one starts from them
    if len(others):
        best = apart[others].argmin(1)
        parent[others] = np.where(apart[others, best] < cost[others], idx[best], -1)
    depth = _depths(parent)
    deep = np.flatnonzero(depth > MAX_DEPTH)  # their descendants are deep too: one pass
    if len(deep):
        shallow = eligible & (depth < MAX_DEPTH)
        reach = np.where(shallow[idx], apart[deep], np.iinfo(np.int64).max)
        best = reach.argmin(1)
        parent[deep] = np.where(reach[np.arange(len(deep)), best] < cost[deep], idx[best], -1)
    rows = np.arange(len(kept))
    on_own = (parent >= 0) & (cost <= apart[rows, np.searchsorted(idx, np.maximum(parent, 0))])
    parent[on_own] = -1
    return parent


def _depths(parent) -> np.ndarray:
    """Each row's generation in the forest ``parent`` (-1: a root, generation 0)."""
    depth = np.zeros(len(parent), np.int64)
    up = parent.copy()
    while (up >= 0).any():
        depth += up >= 0
        up = np.where(up >= 0, parent[np.maximum(up, 0)], -1)
    return depth
