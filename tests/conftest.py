"""Shared test fixtures. Every test runs in float64 on the CPU (``import libjax`` enables x64)."""

from __future__ import annotations

from pathlib import Path

import pytest

import libjax  # noqa: F401  (float64, highest matmul precision)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (the authors' checkpoints and reference graphs); skips when absent,
    as in a user's checkout."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data (reference checkpoints and results) is not available")
    return SHARED_DATA
