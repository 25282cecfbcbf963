"""Shared plumbing of the command-line scripts: logging, compilation cache, error reporting.

A :class:`~libjax.errors.LibjaxError` (bad input the user can fix) ends the program with its
message and exit status 2, without a traceback; anything else is a bug and keeps its traceback.
The scripts take flags only: a stray positional argument (``--n_samples 10`` for
``--n_samples=10`` after a boolean flag, a misspelt path) is such an error, not silently ignored.
Every script keeps JAX's persistent compilation cache (``--compilation_cache_dir``), so a
repeated run with the same shapes loads its compiled steps instead of compiling them again, and
compiles CPU programs with XLA's elemental emitters (:func:`use_quick_cpu_codegen`). A script that
finished ends without the interpreter's slow teardown (:func:`_exit_without_teardown`).
SIGTERM during a build (a scheduler about to preempt the job) stops it at the next batch or stage
boundary, its progress saved (:mod:`libjax.runtime.preemption`), with a message and exit status
:data:`~libjax.runtime.preemption.EXIT_STATUS` (75, EX_TEMPFAIL): rerunning the same command
resumes.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable

import jax
from absl import app, flags
from jax._src import xla_bridge  # backends_are_initialized() has no public equivalent

from libjax.errors import ConfigError, LibjaxError
from libjax.runtime import precision, preemption

_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", None,
    "JAX's persistent compilation cache: a repeated run loads its compiled steps from here "
    "(default: $JAX_COMPILATION_CACHE_DIR if set, else $XDG_CACHE_HOME/libjax/xla or "
    "~/.cache/libjax/xla); empty: no cache")


def _quiet_third_party() -> None:
    for name in ("absl", "orbax", "jax._src.xla_bridge", "jax._src.compiler"):
        logging.getLogger(name).setLevel(logging.ERROR)


def default_cache_dir() -> str:
    """The user's ``$JAX_COMPILATION_CACHE_DIR`` if set, else ``libjax/xla`` in the XDG cache."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache_home, "libjax", "xla")


def _writable(path: str) -> bool:
    """Whether ``path`` is (or can be made) a directory we may write to; if not, says why."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            return True
    except OSError as err:
        logging.warning("compilation cache off: cannot write to %s (%s)", path, err)
        return False


def use_compilation_cache(path: str) -> None:
    """Compile through JAX's persistent cache at ``path`` (every step, however small or quick
    to compile); ``""`` or an unwritable directory: no cache. Call before anything compiles."""
    path = os.path.expanduser(path)
    enabled = bool(path) and _writable(path)
    jax.config.update("jax_compilation_cache_dir", path if enabled else None)
    if enabled:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


QUICK_CPU_CODEGEN = "--xla_cpu_use_fusion_emitters=false"


def use_quick_cpu_codegen() -> None:
    """Compile CPU fusions with XLA's elemental emitters instead of its fusion emitters: less
    compile time for the same programs, the modular-addition graph bit-identical (measured in
    BUILD_NOTES "Cold start"). Elementwise
    transcendentals (SiLU's logistic) may round differently, at 1e-15. Kept out when the user's
    ``XLA_FLAGS`` already choose, or when a backend exists already (XLA read its flags then)."""
    current = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_use_fusion_emitters" in current or xla_bridge.backends_are_initialized():
        return
    os.environ["XLA_FLAGS"] = f"{current} {QUICK_CPU_CODEGEN}".strip()


def _exit_without_teardown(status: int = 0) -> None:
    """End the script at once with ``status``: wait for its threads, run the exit handlers and
    flush the streams as a normal exit does, then skip the interpreter's teardown, where
    destroying XLA's compiled programs and thread pools takes a noticeable part of a short run
    (BUILD_NOTES "Cold start"), and where a daemon thread still inside XLA (a step compiling ahead
    when an error stopped the build) could abort the process instead of exiting."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # private, but the only way to run the exit handlers before os._exit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def run(main: Callable[[list[str]], None], float64: bool = True) -> None:
    """``absl.app.run(main)`` with libjax's logging, compilation cache and user-error handling,
    in float64 (:func:`libjax.runtime.precision.enable_float64`) unless ``float64`` is False,
    and SIGTERM stopping builds cleanly."""
    def wrapped(argv):
        if float64:
            precision.enable_float64()
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                            datefmt="%H:%M:%S", force=True)
        _quiet_third_party()
        cache_dir = _CACHE_DIR.value
        use_compilation_cache(default_cache_dir() if cache_dir is None else cache_dir)
        use_quick_cpu_codegen()
        preemption.install()
        try:
            if len(argv) > 1:
                raise ConfigError(f"unexpected argument(s) {' '.join(argv[1:])!r}; this script "
                                  "takes flags only (--name=value); see --help")
            main(argv)
        except LibjaxError as err:
            print(f"error: {err}", file=sys.stderr)
            _exit_without_teardown(2)
        except preemption.Preempted as stop:
            print(f"stopped on request (SIGTERM): {stop}; the finished stages are stored. Rerun "
                  "the same command to resume.", file=sys.stderr)
            _exit_without_teardown(preemption.EXIT_STATUS)
        _exit_without_teardown()
    # The flags libjax and models define for the script (this module's, the shared ones, a
    # config's) are listed in its --help, not only in --helpfull.
    for module, module_flags in flags.FLAGS.flags_by_module_dict().items():
        if module.startswith(("libjax.", "models.")):
            for flag in module_flags:
                flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(wrapped)


def comma_list(value: str | None) -> tuple[str, ...] | None:
    """``"a, b,c"`` -> ``("a", "b", "c")``; empty or None -> None."""
    if not value:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())
