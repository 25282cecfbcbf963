"""Matmul FLOPs of traced JAX programs, and a ``jax.jit`` that records what each call costs.

XLA's ``compiled.cost_analysis()["flops"]`` counts the body of a ``while`` loop once, whatever its
trip count (``lax.scan``, ``lax.map`` and ``fori_loop`` all become ``while`` loops), and libjax
folds its probe chunks with ``lax.scan``. So FLOPs are counted here on the jaxpr instead: a
``dot_general`` costs ``2 * batch * M * N * K``; a ``scan`` body is multiplied by its length; a
``cond`` costs its dearest branch; other higher-order primitives (``pjit``, ``custom_jvp_call``,
``remat``, ``shard_map``...) are entered; a ``while`` loop of unknown trip count is counted once
and reported. Elementwise work is not counted: these are the FLOPs to set against a matmul rate.
Host work (NumPy ``eigh`` and products in :mod:`libjax.basis`) is not a jaxpr and is not counted.

``python benchmarks/flops.py`` checks the counter against a hand count and against XLA's cost
analysis on small cases.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.extend as jex
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Count:
    """Matmul FLOPs of a program and how many ``while`` loops were counted as one trip."""

    flops: int = 0
    while_loops: int = 0

    def __add__(self, other: Count) -> Count:
        return Count(self.flops + other.flops, self.while_loops + other.while_loops)

    def times(self, n: int) -> Count:
        return Count(self.flops * n, self.while_loops)


def _dot_flops(eqn) -> int:
    lhs, rhs = (v.aval.shape for v in eqn.invars)
    (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
    k = math.prod(lhs[i] for i in lhs_contract)
    batch = math.prod(lhs[i] for i in lhs_batch)
    n = math.prod(rhs) // (k * batch)
    return 2 * math.prod(lhs) * n  # = 2 * batch * M * K * N


def _inner_live(eqn, used: list[bool], inner) -> list[bool] | None:
    """Which outputs of an inner jaxpr are needed: those of the equation's used outputs when
    they correspond one to one (``pjit``, ``cond`` branches, ``custom_*_call``, ``remat``...),
    every loop carry plus the used stacked outputs for ``scan``, else all."""
    if eqn.primitive.name == "scan":
        return [True] * eqn.params["num_carry"] + used[eqn.params["num_carry"]:]
    return used if len(inner.outvars) == len(used) else None


def matmul_flops(jaxpr, live: list[bool] | None = None) -> Count:
    """Matmul FLOPs of a (closed) jaxpr, loops unrolled by their trip counts.

    Equations none of whose outputs reach a ``live`` output (default: all) are skipped, as XLA
    drops them: e.g. the primal output of a ``jax.vjp`` whose only use is the pullback.
    """
    if isinstance(jaxpr, jex.core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    live = [True] * len(jaxpr.outvars) if live is None else live
    needed = {v for v, keep in zip(jaxpr.outvars, live) if keep and isinstance(v, jex.core.Var)}
    total = Count()
    for eqn in reversed(jaxpr.eqns):
        used = [v in needed for v in eqn.outvars]
        if not any(used) and not eqn.effects:
            continue
        needed.update(v for v in eqn.invars if isinstance(v, jex.core.Var))
        name = eqn.primitive.name
        inner = [matmul_flops(j, _inner_live(eqn, used, j))
                 for j in jex.core.jaxprs_in_params(eqn.params)]
        if name == "dot_general":
            total += Count(_dot_flops(eqn))
        elif name == "cond":
            total += max(inner, key=lambda c: c.flops)
        elif name == "scan":
            total += sum(inner, Count()).times(eqn.params["length"])
        else:
            total += sum(inner, Count(0, int(name == "while")))
    return total


def _signature(args, kwargs):
    leaves, tree = jax.tree.flatten((args, kwargs))
    return tree, tuple((x.shape, str(x.dtype)) if hasattr(x, "shape") else x for x in leaves)


@dataclasses.dataclass(frozen=True)
class Call:
    """One call of a jitted function: when it was dispatched, its cost (and XLA's count of the
    same program, if asked for), and the function."""

    time: float
    count: Count
    name: str
    xla_flops: float | None = None


_ACTIVE: list[list] = []  # the ``calls`` of every JitCounter now active


class _Counted:
    """A jitted function that logs a :class:`Call` per call into every active
    :class:`JitCounter` (those active when it is called, not when it was jitted: libjax caches its
    steps across builds, so a second build in one process calls programs jitted in the first);
    the jaxpr of each new signature is traced once (``jax.jit`` reuses that trace when it
    compiles)."""

    def __init__(self, jitted, name: str, xla: bool):
        self._jitted, self._name, self._xla = jitted, name, xla
        self._costs = {}

    def __call__(self, *args, **kwargs):
        key = _signature(args, kwargs)
        if key not in self._costs:
            traced = self._jitted.trace(*args, **kwargs)
            self._costs[key] = (matmul_flops(traced.jaxpr),
                                _xla_flops(traced.lower()) if self._xla else None)
        count, xla = self._costs[key]
        call = Call(time.perf_counter(), count, self._name, xla)
        for calls in _ACTIVE:
            calls.append(call)
        return self._jitted(*args, **kwargs)

    def __getattr__(self, attr):
        return getattr(self._jitted, attr)


class JitCounter:
    """Context in which ``jax.jit(f, ...)`` returns a counted function; ``calls`` lists every call.

    It sees the calls, while it is active, of the functions jitted while any counter was
    active (libjax makes its build steps inside the build and caches them for later builds);
    functions jitted otherwise, e.g. by decorators at import time, are not counted. ``xla=True``
    also records XLA's cost analysis of each program (an extra compile: for checks only).
    """

    def __init__(self, xla: bool = False):
        self.calls: list[Call] = []
        self._xla = xla
        self._jit = None

    def __enter__(self) -> JitCounter:
        self._jit = jax.jit
        jax.jit = self._wrap
        _ACTIVE.append(self.calls)
        return self

    def __exit__(self, *exc) -> None:
        jax.jit = self._jit
        del _ACTIVE[next(i for i, c in enumerate(_ACTIVE) if c is self.calls)]

    def _wrap(self, fun, *args, **kwargs):
        name = getattr(fun, "__qualname__", repr(fun))
        return _Counted(self._jit(fun, *args, **kwargs), name, self._xla)


def _xla_flops(lowered) -> float:
    analysis = lowered.compile().cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]


def _check_small_cases() -> list[str]:
    n, steps = 64, 10
    a = jnp.ones((n, n))
    one = 2 * n**3
    scan = lambda x, w: jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=steps)[0]  # noqa
    vjp = lambda x, w: jax.vjp(lambda y: jnp.tanh(y @ w) @ w, x)[1](x)[0]  # noqa: E731
    # The VJP needs x @ w forward (for tanh') and two products backward; the forward's last
    # product only makes the unused primal output.
    cases = [("x @ w", lambda x, w: x @ w, one),
             (f"scan of {steps} x @ w", scan, steps * one),
             ("VJP of tanh(x @ w) @ w", vjp, 3 * one)]
    lines = []
    for what, fn, hand in cases:
        ours = matmul_flops(jax.make_jaxpr(fn)(a, a)).flops
        xla = _xla_flops(jax.jit(fn).lower(a, a))
        assert ours == hand, (what, ours, hand)
        lines.append(f"{what:41s} hand {hand:>13,}  jaxpr {ours:>13,}  XLA {xla:>13,.0f}")
    return lines


def _check_later_counter() -> list[str]:
    """A program jitted under one counter and called under a later one counts in the later one
    (as a cached build step does in a second build of a process)."""
    with JitCounter():
        square = jax.jit(lambda x: x @ x)
    with JitCounter() as later:
        square(jnp.ones((8, 8)))
    assert [c.count.flops for c in later.calls] == [2 * 8**3], later.calls
    return ["a program jitted under one counter counts under the next one: yes"]


def _check_build_steps() -> list[str]:
    """A small modular-addition build with a memory budget large enough that every probe scan
    has one trip: XLA's count then covers the whole program, and ours (matmuls only) should be
    at most that and close to it."""
    from libjax import pipeline
    from models.modadd import model as modadd

    cfg, weights = modadd.load()
    tokens, _ = modadd.split_data("train")
    with JitCounter(xla=True) as counter:
        pipeline.build(modadd.sectioned_model(weights, cfg), tokens[:16],
                    pipeline.BuildConfig(batch_size=16, memory_budget_gb=64))
    lines = []
    for call in {c.name + str(c.count): c for c in counter.calls}.values():
        ratio = call.count.flops / call.xla_flops
        assert ratio <= 1.0 + 1e-9 and call.count.while_loops == 0, call
        lines.append(f"modadd {call.name:34s} jaxpr {call.count.flops:>13,}  XLA "
                     f"{call.xla_flops:>13,.0f}  ({ratio:.0%})")
    return lines


def check() -> list[str]:
    """Compare the counter with hand counts and XLA's cost analysis; returns report lines and
    raises ``AssertionError`` if the counter is wrong."""
    return _check_small_cases() + _check_later_counter() + _check_build_steps()


if __name__ == "__main__":
    from libjax.runtime import precision
    precision.enable_float64()

    print("\n".join(check()))
