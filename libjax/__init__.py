"""libjax: the Local Interaction Basis (LIB, arXiv 2405.10928) in JAX.

Importing libjax changes no JAX setting. Builds run in float64 by default, which must be asked
for: ``libjax.runtime.precision.enable_float64()`` (what the scripts do) or the context manager
``libjax.runtime.precision.float64()``; a build refuses to start without it.
"""

__version__ = "0.1.0"

from libjax import moved as _moved

# 0.1's module names (libjax.graph, libjax.build, ...) still import, with a warning
_moved.install()


def __getattr__(name):
    """``libjax.explore``, imported on first use so that ``import libjax`` stays cheap."""
    if name == "explore":
        from libjax.analysis.explorer import explore
        return explore
    raise AttributeError(f"module 'libjax' has no attribute {name!r}")
