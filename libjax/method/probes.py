"""Probe (cotangent) sets for Jacobian-transpose products, exact or stochastic (docs/method.md 1.7,
2.3).

A probe is a tensor ``phi`` of the section's output shape ``(P_out, d_out)``; a VJP with it gives
``sum_{t,i} phi[t,i] dF_{t,i}/df``. The exact set is every one-hot ``e_{t,i}``. Stochastic sets
replace the sum over positions and/or hidden dims by Rademacher (+-1) combinations, unbiased because
``E[phi_t phi_t'] = delta_tt'``. For a *positionwise* section (output at ``t`` depends only on
input at ``t``) the probe ``phi[:, i] = 1`` is exact: its VJP at input position ``s`` is the row
``i`` of the Jacobian at ``s`` alone, so one probe per hidden dim replaces ``P_out`` of them.
Probes are numbered so they can be made chunk by chunk inside a ``scan`` (ids past ``n_probes``
are padding and give a zero probe); signs are drawn per sample and per batch. Output positions
left out of a build (``skip``, docs/method.md 1.13) are zero in every probe and weighting.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from libjax.forms import kept


@dataclasses.dataclass(frozen=True)
class ProbeSet:
    """Probes over a ``(n_pos, dim)`` output, with ``pos_sources``/``hidden_sources`` Rademacher
    sources replacing the exact sum over positions/hidden dims (``None`` = exact); the output
    positions ``skip`` are zero in every probe."""

    n_pos: int
    dim: int
    pos_sources: int | None = None
    hidden_sources: int | None = None
    positionwise: bool = False
    skip: tuple = ()

    def _kept(self, phi):
        """``phi`` with its skipped positions (axis -2) zeroed."""
        if not self.skip:
            return phi
        return phi * kept(self.n_pos, self.skip, phi.dtype)[:, None]

    def __post_init__(self):
        for name in ("pos_sources", "hidden_sources"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive number of sources or None, "
                                 f"got {value}")

    @property
    def n_probes(self) -> int:
        pos = (1 if self.positionwise
               else self.n_pos if self.pos_sources is None else self.pos_sources)
        hidden = self.dim if self.hidden_sources is None else self.hidden_sources
        return pos * hidden

    @property
    def stochastic(self) -> bool:
        """Whether the probes estimate the sum rather than compute it: sources over several
        output positions or hidden dims (one source is an estimate too; over a single position or
        dim its sign squares to 1)."""
        return ((self.pos_sources is not None and not self.positionwise and self.n_pos > 1)
                or (self.hidden_sources is not None and self.dim > 1))

    @property
    def divisor(self) -> int:
        """``S``: how many times each exact term is counted in expectation."""
        return (1 if self.positionwise else self.pos_sources or 1) * (self.hidden_sources or 1)

    def signs_shape(self) -> tuple[int, ...]:
        """Per-sample shape of the random signs (empty for exact probes)."""
        rp, rh = (None if self.positionwise else self.pos_sources), self.hidden_sources
        if rp is None and rh is None:
            return (0,)
        if rh is None:
            return (rp, self.n_pos)
        if rp is None:
            return (rh, self.dim)
        return (rp * rh, self.n_pos, self.dim)

    def draw_signs(self, key, batch: int, dtype=jnp.float64):
        """Rademacher signs ``(batch, *signs_shape)`` in ``dtype``.

        Each is the low bit of 32 random bits, so a key gives the same signs whether JAX's 64-bit
        types are on or off (``bernoulli`` draws its uniforms in the default float width: a
        mixed build would estimate with other signs than the float64 build of the same seed),
        drawn by the non-partitionable threefry, whose counters are 32-bit (the partitionable
        one counts in uint64, a 64-bit type inside every mixed step)."""
        shape = (batch, *self.signs_shape())
        with jax.threefry_partitionable(False):
            bits = jax.random.bits(key, shape, jnp.uint32)
        return jnp.where(bits & 1 == 1, 1.0, -1.0).astype(dtype)

    def position_weights(self, signs):
        """``(batch, R, n_pos)``: the position weightings of a set whose hidden dims are exact
        (every probe is such a weighting times a one-hot hidden dim): the identity (one per output
        position) for exact probes, the Rademacher signs for position sources."""
        if self.hidden_sources is not None or self.positionwise:
            raise ValueError("position weightings need exact hidden dims and a position sum")
        if self.pos_sources is None:
            rho = jnp.broadcast_to(jnp.eye(self.n_pos), (signs.shape[0], self.n_pos, self.n_pos))
        else:
            rho = signs
        return self._kept(rho[..., None])[..., 0]

    def output_index(self, ids):
        """Hidden (output) coordinate addressed by each probe id, for per-output accumulators
        (exact and position-stochastic sets only)."""
        if self.hidden_sources is not None:
            raise ValueError("per-output accumulation needs exact hidden dims")
        return ids % self.dim

    def make(self, signs, ids, dtype):
        """Probes ``(k, n_pos, dim)`` numbered ``ids`` for one sample with ``signs``."""
        valid = (ids < self.n_probes).astype(dtype)[:, None, None]
        ids = jnp.minimum(ids, self.n_probes - 1)
        rp, rh = self.pos_sources, self.hidden_sources
        if self.positionwise:  # the same hidden-dim probe at every position
            hidden = jax.nn.one_hot(ids, self.dim, dtype=dtype) if rh is None else signs[ids]
            phi = jnp.broadcast_to(hidden[:, None, :], (len(ids), self.n_pos, self.dim))
        elif rp is None and rh is None:
            phi = jax.nn.one_hot(ids, self.n_pos * self.dim, dtype=dtype)
            phi = phi.reshape(-1, self.n_pos, self.dim)
        elif rh is None:  # id = r * dim + i: signs over positions in hidden dim i
            r, i = jnp.divmod(ids, self.dim)
            phi = signs[r][:, :, None] * jax.nn.one_hot(i, self.dim, dtype=dtype)[:, None, :]
        elif rp is None:  # id = t * R_h + r: signs over hidden dims at position t
            t, r = jnp.divmod(ids, rh)
            phi = jax.nn.one_hot(t, self.n_pos, dtype=dtype)[:, :, None] * signs[r][:, None, :]
        else:
            phi = signs[ids]
        return self._kept(phi.astype(dtype) * valid)
