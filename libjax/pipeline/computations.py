"""Which computation gives ``M'`` or the edges of a section: the one place that decides.

A section's closed form (:mod:`libjax.forms`) is used where it applies and fast paths are on;
everywhere else the general VJP path (:class:`libjax.method.vjp.VJPPath`), which on a
positionwise section (fast paths on) needs one probe per output direction only.
"""

from __future__ import annotations

from libjax.forms import EDGES, M_PRIME, Form, Task
from libjax.method.vjp import VJPPath
from libjax.pipeline.config import BuildConfig, points
from libjax.runtime import precision


def section_task(model, index: int, kind: str, cfg: BuildConfig, n_samples: int, out_dim: int,
         in_dim: int, per_device: int) -> Task:
    """The :class:`~libjax.forms.Task` of ``M'`` (``kind="m_prime"``) or the edges across
    section ``index``; ``out_dim`` is the output's width in the next basis, ``in_dim`` the input
    basis's width (edges)."""
    alphas, weights = points(cfg, model.node_layers[index])
    a, b = model.layers[index], model.layers[index + 1]
    if kind == M_PRIME:
        pos, hidden = cfg.n_stochastic_sources_basis_pos, cfg.n_stochastic_sources_basis_hidden
    else:
        pos, hidden = cfg.n_stochastic_sources_edges, None
    return Task(kind=kind, n_samples=n_samples, n_pos=a.positions, n_pos_out=b.positions,
                d_in=a.width, d_out=b.width, out_dim=out_dim,
                in_dim=in_dim if kind == EDGES else 0, pos_sources=pos, hidden_sources=hidden,
                alphas=tuple(alphas), quad_weights=tuple(weights), per_device=per_device,
                budget_gb=cfg.memory_budget_gb,
                acc_dtype=precision.accumulation_dtype(cfg.precision),
                skip_in=_skipped(cfg, a.positions), skip_out=_skipped(cfg, b.positions))


def _skipped(cfg: BuildConfig, n_pos: int) -> tuple[int, ...]:
    """The positions of a node layer with ``n_pos`` positions that the build leaves out
    (:meth:`BuildConfig.validate` has checked that every node layer has them all)."""
    return tuple(sorted(int(p) for p in cfg.skip_positions if p < n_pos))


def choose_path(section, task: Task, fast_paths: bool) -> Form:
    """The section's closed form where it applies, else the general path."""
    if fast_paths and section.form is not None and section.form.applies(section, task):
        return section.form
    return VJPPath(section.fn, positionwise=fast_paths and section.positionwise)
