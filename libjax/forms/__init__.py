"""Closed forms: how ``M'`` and the edges of a section come out of sums over its tokens.

A model may attach a form to a section (:class:`libjax.model.Section`). The build computes
``M'`` of the section's input layer (docs/method.md 1.7) and the edges across it (2.2) by asking
the section's *path* (its form, or :class:`libjax.method.vjp.VJPPath`, the general path of one
VJP per output direction, which implements the same protocol):

    applies(section, task)              may this path compute the task for this section?
    probes(task)                        the random signs it draws per batch (None: exact)
    plan(task, params)                  static chunk sizes, from shapes and the memory budget
    zero(task, params)                  the empty accumulator (host arrays)
    needs_data(task)                    whether the accumulator depends on the data at all
    batch_sums(task, plan, params, x, sample_weights, signs, c_in_pinv, c_next)
                                        one batch's contribution (traced inside a jitted step)
    finish(task, params, sums, c_next)  unnormalised ``M'`` or edges on the host

``x`` is the batch at the input layer, in the neuron basis for ``M'`` and in the input layer's
basis for the edges; the build adds the contributions over batches and divides the result by
``N * P_in * divisor(task)``. Adding a form means writing one class like those in this package;
nothing is registered in the build.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Optional

import jax.numpy as jnp
import numpy as np

M_PRIME, EDGES = "m_prime", "edges"


@dataclasses.dataclass(frozen=True)
class Task:
    """One ``M'`` or edge computation across a section, as far as it is known before any data.

    Attributes:
      kind: ``"m_prime"`` or ``"edges"``.
      n_samples: samples the computation runs over.
      n_pos, n_pos_out: input and output positions of the section.
      d_in, d_out: widths of its input and output in the neuron basis.
      out_dim: width of the output in the next layer's basis (``d_out`` without one).
      in_dim: width of the input basis (edges; 0 for ``M'``).
      pos_sources, hidden_sources: stochastic sources asked for (None: exact sums).
      alphas, quad_weights: the integration rule's points and weights (docs/method.md 2.5).
      per_device: samples per device in one step.
      budget_gb: memory for one step's working set.
      acc_dtype: the dtype sums accumulate in on the device (the build's precision policy:
        :func:`libjax.runtime.precision.accumulation_dtype`).
      skip_in, skip_out: input and output positions left out of the sums (docs/method.md 1.13):
        no term whose input position is in ``skip_in`` or whose output position is in
        ``skip_out`` is added.
    """

    kind: str
    n_samples: int
    n_pos: int
    n_pos_out: int
    d_in: int
    d_out: int
    out_dim: int
    in_dim: int
    pos_sources: Optional[int]
    hidden_sources: Optional[int]
    alphas: tuple
    quad_weights: tuple
    per_device: int
    budget_gb: float
    acc_dtype: Any = np.float64
    skip_in: tuple = ()
    skip_out: tuple = ()

    @property
    def rows(self) -> int:
        """(sample, kept position) rows of the input layer: the normaliser of ``M'`` and the
        edges."""
        return self.n_samples * (self.n_pos - len(self.skip_in))

    def row_weights(self, sample_weights):
        """``(batch, n_pos)``: each sample's weight at its kept input positions, 0 at skipped
        ones (traced)."""
        rows = jnp.broadcast_to(sample_weights[:, None], (sample_weights.shape[0], self.n_pos))
        return rows * kept(self.n_pos, self.skip_in, rows.dtype) if self.skip_in else rows


def as_rows(weights, shape):
    """``(batch, pos)`` row weights from ``(batch,)`` sample weights (the same at every position)
    or from row weights already (traced)."""
    return jnp.broadcast_to(weights[:, None] if weights.ndim == 1 else weights, shape)


def kept(n_pos: int, skip: tuple, dtype=np.float64) -> np.ndarray:
    """``(n_pos,)``: 1 at the positions kept, 0 at those in ``skip``."""
    keep = np.ones(n_pos, dtype)
    keep[list(skip)] = 0
    return keep


class Form(abc.ABC):
    """Base class of the closed forms (and of the general path): defaults for an exact form of a
    positionwise section whose result is the summed batch contributions. ``batch_sums`` is the
    one method every form writes."""

    label = "closed form"  # what the log calls it

    def applies(self, section, task: Task) -> bool:
        return section.positionwise

    def probes(self, task: Task):
        return None

    def divisor(self, task: Task) -> int:
        probes = self.probes(task)
        return 1 if probes is None else probes.divisor

    def plan(self, task: Task, params) -> Any:
        return None

    def needs_data(self, task: Task) -> bool:
        return True

    def zero(self, task: Task, params):
        return np.zeros((task.out_dim, task.in_dim) if task.kind == EDGES
                        else (task.d_in, task.d_in))

    @abc.abstractmethod
    def batch_sums(self, task: Task, plan, params, x, sample_weights, signs, c_in_pinv, c_next):
        """One batch's contribution to the sums (traced inside a jitted step)."""

    def finish(self, task: Task, params, sums, c_next):
        return sums

    def describe(self, task: Task, plan) -> str:
        """A few words for the log: which path, exact or stochastic."""
        probes = self.probes(task)
        stochastic = probes is not None and probes.stochastic
        return f"{self.label} ({'stochastic' if stochastic else 'exact'})"


def as_float64(a) -> Optional[np.ndarray]:
    return None if a is None else np.asarray(a, np.float64)


def next_k(task: Task, c_next) -> np.ndarray:
    """``K = C C^T`` of the next layer's basis (the identity without one), on the host: the only
    way the next layer enters a closed-form ``M'``."""
    c = np.eye(task.d_out) if c_next is None else np.asarray(c_next, np.float64)
    return c @ c.T
