"""Building a LIB graph: :class:`BuildConfig` says what, :func:`build` runs the pipeline.

:func:`build_many` builds several graphs of one model with the statistics of all from one pass.
``config`` (options and their validation), ``computations`` (which computation serves each
section), ``steps`` (the jitted steps and the batch loop) and ``run`` (statistics, bases, edges,
with resume) are its parts.
"""

from libjax.pipeline.config import BuildConfig
from libjax.pipeline.run import build, build_many

__all__ = ["BuildConfig", "build", "build_many"]
