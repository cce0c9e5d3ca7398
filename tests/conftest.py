"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# --- market data (tests/test_ohlcv.py, test_validation.py, test_splits.py, test_data_cli.py) ---------

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""The real candle files shared beside the checkout (see shared/data/README.md); absent on fresh clones."""


@pytest.fixture
def shared_data() -> Path:
    """Return the shared real-data folder, skipping the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared market data not found at {SHARED_DATA}")
    return SHARED_DATA
