"""Building a LIB graph: :class:`BuildConfig` says what, :func:`build` runs the pipeline.

:func:`build_many` builds several graphs of one model with the statistics of all from one pass.
``config`` (options and their validation), ``paths`` (which computation serves each section),
``steps`` (the jitted steps and the batch loop) and ``pipeline`` (statistics, bases, edges, with
resume) are its parts.
"""

from libjax.build.config import BuildConfig
from libjax.build.pipeline import build, build_many

__all__ = ["BuildConfig", "build", "build_many"]
