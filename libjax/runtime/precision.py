"""The precision a build computes in, asked for explicitly: importing libjax changes no JAX
setting.

LIB is numerically delicate (Gram eigenvalues over twelve decades, ``D^-1/2`` amplification), so
the default policy, ``float64``, needs JAX's 64-bit types (``jax_enable_x64``) and full-precision
matmuls (``jax_default_matmul_precision="highest"``: no TF32 or bf16 passes on accelerators). The
scripts turn both on for their process with :func:`enable_float64`; research code does the same,
or runs inside :func:`float64`. A build checks with :func:`require` that its policy is in force.
"""

from __future__ import annotations

import contextlib

import jax

from libjax.errors import ConfigError

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


def require(policy: str) -> None:
    """Raise a :class:`ConfigError` unless the settings that ``policy`` needs are in force."""
    if policy == "float64" and not jax.config.jax_enable_x64:
        raise ConfigError(f"a float64 build needs JAX's 64-bit types, which are off; {HOW}")
