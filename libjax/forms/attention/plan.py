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
    per_row = 8 * 2 * n_weightings * heads * (2 * d_head * d_v * (3 + heads) + d_v * in_dim
                                              + n_pos * (2 * d_head + d_v) + d_in)
    rows = memory.rows_per_step(per_row, budget_gb)
    positions = min(n_pos, rows)
    return "dense", positions, int(max(1, min(per_device, rows // positions)))
