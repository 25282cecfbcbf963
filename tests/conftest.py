"""Shared test fixtures. Every test runs in float64 on the CPU;
helpers that tests import live in :mod:`tests.helpers`."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from libjax.runtime import precision

precision.enable_float64()  # every test runs in float64 with full-precision matmuls

# Scripts run by the tests share one compilation cache for the session (repeated shapes compile
# once), never the user's ~/.cache.
_CACHE = tempfile.mkdtemp(prefix="libjax-test-xla-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (the authors' checkpoints and reference graphs); skips when absent,
    as in a user's checkout."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data (reference checkpoints and results) is not available")
    return SHARED_DATA
