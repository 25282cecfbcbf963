"""Shared plumbing of the command-line scripts: logging set-up and error reporting.

A :class:`~libjax.errors.LibjaxError` (bad input the user can fix) ends the program with its
message and exit status 2, without a traceback; anything else is a bug and keeps its traceback.
The scripts take flags only: a stray positional argument (``--n_samples 10`` for
``--n_samples=10`` after a boolean flag, a misspelt path) is such an error, not silently ignored.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

from absl import app

from libjax.errors import ConfigError, LibjaxError


def _quiet_third_party() -> None:
    for name in ("absl", "orbax", "jax._src.xla_bridge", "jax._src.compiler"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run(main: Callable[[list[str]], None]) -> None:
    """``absl.app.run(main)`` with libjax's logging and user-error handling."""
    def wrapped(argv):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                            force=True)
        _quiet_third_party()
        try:
            if len(argv) > 1:
                raise ConfigError(f"unexpected argument(s) {' '.join(argv[1:])!r}; this script "
                                  "takes flags only (--name=value); see --help")
            main(argv)
        except LibjaxError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
    app.run(wrapped)


def comma_list(value: str | None) -> tuple[str, ...] | None:
    """``"a, b,c"`` -> ``("a", "b", "c")``; empty or None -> None."""
    if not value:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())
