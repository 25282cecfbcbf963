"""Which numbers of directions or edges an ablation evaluates (docs/method.md 3.2): the
exponential and linear schedules, and the bisection for the fewest edges that keep the score."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Optional

import numpy as np

from libjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Which numbers of directions to ablate (docs/method.md 3.2).

    Attributes:
      kind: ``exponential`` (every value for the last ``ablate_every_vec_cutoff`` directions, then
        steps growing like ``exp_base**x``), ``linear`` (``n_points`` evenly spaced values) or
        ``explicit`` (only ``specific_points``).
      ablate_every_vec_cutoff: None = every value ``n..0``.
      exp_base: growth of the exponential steps.
      n_points: points of the linear schedule (``>= 2``; every value where the layer has fewer).
      specific_points: numbers of directions **remaining** to evaluate as well (the only ones
        for ``explicit``); those ``> n`` are ignored, as the reference does.
      early_stopping_threshold: stop a layer once its score is further than this from the score
        of its first point (None = never).
    """

    kind: str = "exponential"
    ablate_every_vec_cutoff: Optional[int] = None
    exp_base: float = 2.0
    n_points: Optional[int] = None
    specific_points: tuple[int, ...] = ()
    early_stopping_threshold: Optional[float] = None

    def validate(self) -> None:
        if self.kind not in ("exponential", "linear", "explicit"):
            raise ConfigError(f"unknown schedule {self.kind!r}; use 'exponential', 'linear' or "
                              "'explicit'")
        if self.kind == "exponential":
            if self.ablate_every_vec_cutoff is not None and self.ablate_every_vec_cutoff < 0:
                raise ConfigError(f"ablate_every_vec_cutoff must be >= 0 (or unset for every "
                                  f"value), got {self.ablate_every_vec_cutoff}")
            if not self.exp_base >= 1.0:
                raise ConfigError(f"exp_base must be >= 1, got {self.exp_base}")
        elif self.kind == "linear" and (self.n_points is None or self.n_points < 2):
            raise ConfigError(f"a linear schedule needs n_points >= 2 (--n_points), got "
                              f"{self.n_points}")
        elif self.kind == "explicit" and not self.specific_points:
            raise ConfigError("an explicit schedule needs specific_points (numbers of directions "
                              "remaining, --specific_points)")
        if any(p < 0 for p in self.specific_points):
            raise ConfigError(f"specific_points are numbers of directions remaining and must be "
                              f">= 0, got {list(self.specific_points)}")
        if self.early_stopping_threshold is not None and self.early_stopping_threshold < 0:
            raise ConfigError("early_stopping_threshold must be >= 0")

    def n_ablated(self, n: int) -> list[int]:
        """The schedule for ``n`` directions: numbers to ablate, descending from ``n`` to 0."""
        self.validate()
        if self.kind == "exponential":
            values = exponential_schedule(n, self.ablate_every_vec_cutoff, self.exp_base)
        elif self.kind == "linear":
            values = linear_schedule(n, self.n_points)
        else:
            values = []
        return with_specific_points(values, n, self.specific_points)


def exponential_schedule(n: int, cutoff: Optional[int], base: float) -> list[int]:
    """``n, n-1, ..., n-cutoff``, then ``v = int(prev - base**x)`` for ``x = 0, 1, ...`` while
    ``v > 0``, then 0. E.g. ``(n=12, cutoff=3, base=2) -> [12, 11, 10, 9, 8, 6, 2, 0]``. With no
    cutoff, or one at least ``n`` (a narrow layer), every value ``n..0``."""
    if cutoff is not None and cutoff < 0:
        raise ConfigError(f"ablate_every_vec_cutoff must be >= 0, got {cutoff}")
    if cutoff is None or cutoff >= n:
        return list(range(n, -1, -1))
    values = list(range(n, n - cutoff - 1, -1))
    prev, x = values[-1], 0
    while True:
        v = int(prev - base**x)
        if v <= 0:
            break
        values.append(v)
        prev, x = v, x + 1
    return values + [0]


def linear_schedule(n: int, n_points: int) -> list[int]:
    """``int(linspace(n, 0, n_points))``, e.g. ``(n=12, n_points=3) -> [12, 6, 0]``. A layer with
    fewer than ``n_points`` values (``n + 1``) gets every value, where the reference refuses."""
    if n_points < 2:
        raise ConfigError(f"a linear schedule needs n_points >= 2, got {n_points}")
    return [int(v) for v in np.linspace(n, 0, min(n_points, n + 1)).astype(int)]


def with_specific_points(values: Sequence[int], n: int, remaining: Iterable[int]) -> list[int]:
    """Merge numbers of directions *remaining* (``<= n``) into a schedule of numbers ablated."""
    extra = [n - r for r in remaining if r <= n]
    return sorted(set(values) | set(extra), reverse=True)


@dataclasses.dataclass(frozen=True)
class Bisect:
    """Bisection for the largest ablatable count (docs/method.md 3.2 "bisect").

    Attributes:
      score_target_difference: ``Delta``; a score is good when accuracy ``>= base - Delta`` (or
        loss ``<= base + Delta``).
      scaling: ``linear`` (midpoint) or ``logarithmic`` (geometric mean) proposals.
      tolerance: stop once ``upper - lower <= tolerance``.
    """

    score_target_difference: float = 0.001
    scaling: str = "linear"
    tolerance: int = 1

    def validate(self) -> None:
        if self.scaling not in ("linear", "logarithmic"):
            raise ConfigError(f"unknown bisect scaling {self.scaling!r}; use 'linear' or "
                              "'logarithmic'")
        if self.tolerance < 1:
            raise ConfigError(f"bisect tolerance must be >= 1, got {self.tolerance}")
        if not self.score_target_difference >= 0:
            raise ConfigError(f"score_target_difference must be >= 0, got "
                              f"{self.score_target_difference}")

    def max_steps(self, n: int) -> int:
        """About the number of evaluations :func:`bisect` makes over ``[0, n]``, for progress
        lines: a linear bisection halves the interval each step (a logarithmic one may take a
        few more)."""
        return max(1, math.ceil(math.log2(max(n, 2) / self.tolerance)) + 1)


def bisect(evaluate: Callable[[int], float], good: Callable[[float], bool], n: int,
           cfg: Bisect) -> tuple[int, int]:
    """Bisect ``n_ablated`` in ``[0, n]`` for the boundary between good and bad scores.

    ``lower`` starts at 0 (ablatable), ``upper`` at ``n``; each proposal (midpoint, or geometric
    mean of ``upper`` and ``lower + 1e-9``, nudged off the bounds) moves ``lower`` up when its score
    is good and ``upper`` down otherwise, until ``upper - lower <= tolerance``. Returns
    ``(lower, upper)``: ``lower`` is the largest count seen to be ablatable.
    """
    cfg.validate()
    lower, upper = 0, n
    while upper - lower > cfg.tolerance:
        if cfg.scaling == "linear":
            proposal = (upper + lower) // 2
        else:
            proposal = int(math.exp((math.log(upper) + math.log(lower + 1e-9)) / 2))
        proposal = min(max(proposal, lower + 1), upper - 1)
        if good(evaluate(proposal)):
            lower = proposal
        else:
            upper = proposal
    return lower, upper


MODEL_DEFAULT = object()  # "not given": take the model's value (None is a valid cutoff)


def schedule_for(model_defaults: Mapping, kind: Optional[str] = None,
                 ablate_every_vec_cutoff=MODEL_DEFAULT, exp_base: Optional[float] = None,
                 n_points: Optional[int] = None, specific_points: Sequence[int] = (),
                 early_stopping_threshold=MODEL_DEFAULT) -> Schedule:
    """The schedule a user asked for over a model's paper settings (``model_defaults``:
    ``schedule``, ``ablate_every_vec_cutoff``, ``exp_base``, ``n_points``,
    ``early_stopping_threshold``): what is given wins, then the model's value, then an
    exponential schedule of base 2 without early stopping. ``None`` is a value of the cutoff
    (every direction) and of the threshold (never stop), so those two take the model's only
    when left at :data:`MODEL_DEFAULT`."""
    def pick(value, key, fallback=None):
        return model_defaults.get(key, fallback) if value in (None, MODEL_DEFAULT) else value

    if ablate_every_vec_cutoff is MODEL_DEFAULT:
        ablate_every_vec_cutoff = model_defaults.get("ablate_every_vec_cutoff")
    if early_stopping_threshold is MODEL_DEFAULT:
        early_stopping_threshold = model_defaults.get("early_stopping_threshold")
    return Schedule(pick(kind, "schedule", "exponential"), ablate_every_vec_cutoff,
                    pick(exp_base, "exp_base", 2.0), pick(n_points, "n_points"),
                    tuple(specific_points), early_stopping_threshold)
