"""The precision a build computes in, asked for explicitly: importing libjax changes no JAX
setting.

Two policies (docs: README "Precision policy"):

- ``float64`` (the default): every jitted step in float64 with full-precision matmuls. It needs
  JAX's 64-bit types (``jax_enable_x64``) and ``jax_default_matmul_precision="highest"`` (no TF32
  or bf16 passes on accelerators); the scripts turn both on with :func:`enable_float64`, research
  code does the same or runs inside :func:`float64`.
- ``mixed`` (for TPUs, which have no float64, and fast float32 on GPUs): every jitted step in
  float32 with ``Precision.HIGHEST`` matmuls, traced with 64-bit types off (:func:`scope`), each
  returning one batch's contribution, which the host adds (or, for statistics, Chan-merges) in
  float64 NumPy. It runs whether the process has x64 on or off.

Eigendecompositions and the basis algebra are host float64 NumPy under both.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

from libjax.errors import ConfigError

POLICIES = ("float64", "mixed")

HOW = ("call libjax.runtime.precision.enable_float64() before creating models (or run inside "
       "`with libjax.runtime.precision.float64():`, or set JAX_ENABLE_X64=1)")


def enable_float64() -> None:
    """Turn on float64 and full-precision matmuls for the whole process."""
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_default_matmul_precision", "highest")


@contextlib.contextmanager
def float64():
    """Float64 and full-precision matmuls inside the block only (both restored after)."""
    with jax.enable_x64(True), jax.default_matmul_precision("highest"):
        yield


def enable_for(policy: str) -> None:
    """Turn on what ``policy`` needs for the whole process: float64 for ``float64``; nothing for
    ``mixed``, which runs with JAX's 64-bit types as the process has them."""
    check(policy)
    if policy == "float64":
        enable_float64()


def of_record(build_info: dict) -> str:
    """The policy a build was made with, from its record (``build.json``; older builds, made
    before the policy was recorded, are float64)."""
    return build_info.get("config", {}).get("precision", "float64")


def default_policy() -> str:
    """``mixed`` on TPUs (no float64 arithmetic), ``float64`` elsewhere."""
    return "mixed" if jax.default_backend() == "tpu" else "float64"


def check(policy: str) -> None:
    """Raise a :class:`ConfigError` unless ``policy`` is one of :data:`POLICIES`."""
    if policy not in POLICIES:
        raise ConfigError(f"unknown precision policy {policy!r}; choose one of "
                          f"{', '.join(POLICIES)}")


def require(policy: str) -> None:
    """Raise a :class:`ConfigError` unless the settings that ``policy`` needs are in force
    (``mixed`` needs none: it runs with JAX's 64-bit types on or off)."""
    check(policy)
    if policy == "float64" and not jax.config.jax_enable_x64:
        raise ConfigError(f"a float64 build needs JAX's 64-bit types, which are off; {HOW} or "
                          "build with precision='mixed' (--precision=mixed)")


def accumulation_dtype(policy: str):
    """The dtype that the jitted steps accumulate in under ``policy``."""
    return jnp.float64 if policy == "float64" else jnp.float32


def host_sums(policy: str) -> bool:
    """Whether each step returns its batch's contribution for the host to add in float64
    (``mixed``), instead of adding it to an accumulator on the device (``float64``)."""
    return policy == "mixed"


def narrow_dtype(dtype) -> np.dtype:
    """The dtype of a ``mixed`` step's argument of ``dtype``: floats as float32, integers as
    int32, so that nothing 64-bit enters a step (as on a TPU)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.floating):
        return np.dtype(np.float32)
    if np.issubdtype(dtype, np.integer) and dtype.itemsize > 4:
        return np.dtype(np.int32)
    return dtype


def as_32bit(tree):
    """``tree`` as NumPy arrays of :func:`narrow_dtype`, for a ``mixed`` step."""
    def cast(a):
        a = np.asarray(a)
        return a.astype(narrow_dtype(a.dtype), copy=False)
    return jax.tree.map(cast, tree)


@contextlib.contextmanager
def scope(policy: str):
    """What the steps of a ``policy`` build are traced and run under. ``mixed``: JAX's 64-bit
    types off (as on a TPU: no literal or index in a model's code can widen a step to 64 bits,
    whatever the process's setting) and ``Precision.HIGHEST`` matmuls. ``float64`` keeps the
    process's settings exactly (:func:`enable_float64`)."""
    if policy == "mixed":
        with jax.enable_x64(False), jax.default_matmul_precision("highest"):
            yield
    else:
        yield
