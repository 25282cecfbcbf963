"""Errors a user can fix. Scripts print their message (what was wrong, what to do) and exit
non-zero without a traceback; library callers can catch :class:`LibjaxError`."""


class LibjaxError(Exception):
    """Base class of every user-facing error."""


class ConfigError(LibjaxError, ValueError):
    """Options that do not go together, or do not fit the model."""


class NodeLayerError(ConfigError):
    """A node-layer list that does not fit the model (unknown, duplicated or out of order)."""


class CheckpointError(LibjaxError, ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model."""


class DataError(LibjaxError, ValueError):
    """Input data that is missing, empty or malformed."""


class BasisError(LibjaxError, ValueError):
    """A basis that cannot be built from the given statistics."""


class NumericalError(LibjaxError, FloatingPointError):
    """NaN or inf in weights, activations or accumulated matrices."""


class StoreError(LibjaxError, RuntimeError):
    """An output directory that cannot be used as asked (other build, unwritable, incomplete)."""
