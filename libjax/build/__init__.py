"""Building a LIB graph: :class:`BuildConfig` says what, :func:`build` runs the pipeline.

``config`` (options and their validation), ``paths`` (which computation serves each section),
``steps`` (the jitted steps and the batch loop) and ``pipeline`` (statistics, bases, edges, with
resume) are its parts.
"""

from libjax.build.config import BuildConfig
from libjax.build.pipeline import build

__all__ = ["BuildConfig", "build"]
