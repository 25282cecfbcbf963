"""The attention form's planner: which of the two methods, and chunk sizes within the memory
budget (see :mod:`libjax.forms.attention` for the math)."""

from __future__ import annotations

import libjax.forms.attention.lowrank as lowrank
import libjax.forms.attention.sums as sums_lib
from libjax.runtime import memory


def plan(form, params, n_pos: int, n_weightings: int, out_dim: int, in_dim: int, d_in: int,
         n_alphas: int, per_device: int, budget_gb: float) -> tuple[str, int, int]:
    """``(method, positions, samples)`` per step: the low-rank method while its rank per head is
    well below ``d_head``, else the dense one; chunk sizes keep the working set near
    ``budget_gb`` (``in_dim``: the input basis's width for the edges, 0 for ``M'``)."""
    w = form.matrices(params)
    heads, d_head, d_v = w["W_Q"].shape[0], w["W_Q"].shape[2], w["W_V"].shape[2]
    rank = lowrank.rank_per_head(n_alphas, len(sums_lib.queries(form, n_pos)), n_pos)
    if 4 * rank <= d_head:
        terms = n_weightings * n_pos * 2 * heads * rank
        per_sample = 8 * (terms * (2 * d_head + out_dim + in_dim + 2 * heads * rank)
                          + 2 * n_weightings * out_dim * in_dim)
        return "lowrank", n_pos, memory.rows_per_step(3 * per_sample, budget_gb, per_sample,
                                                     limit=per_device)
    # per position and weighting: Y and the terms it is made of (~6 copies of H x 2dh x dv),
    # the pattern weights w (H x P), the edges' per-head product (dv x in_dim), the input row;
    # per step: one head's outer products q z^T and k v^T (2 x P x dh dv, see dense.py)
    per_row = 8 * n_weightings * (heads * (12 * d_head * d_v + n_pos) + d_v * in_dim + d_in)
    fixed = 8 * 2 * n_pos * d_head * d_v
    rows = memory.rows_per_step(per_row, max(budget_gb - fixed / 2**30, budget_gb / 4))
    positions = min(n_pos, rows)
    positions = -(-n_pos // -(-n_pos // positions))  # as even as the chunk count allows
    return "dense", positions, int(max(1, min(per_device, rows // positions)))
