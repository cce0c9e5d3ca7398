"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# Fixtures that start real services, shared by every test module (each module imports only the types).
from tests.support.binance_server import binance_server  # noqa: F401
from tests.support.browser import browser  # noqa: F401
from tests.support.prometheus import prometheus  # noqa: F401

# --- market data (tests/test_ohlcv.py, test_validation.py, test_splits.py, test_data_cli.py) ---------

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""The real candle files shared beside the checkout (see shared/data/README.md); absent on fresh clones."""


@pytest.fixture
def shared_data() -> Path:
    """Return the shared real-data folder, skipping the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared market data not found at {SHARED_DATA}")
    return SHARED_DATA


# --- two real tiny training runs (tests/test_dashboard*.py share them) ------------------------------------


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real runs (run-a seed 1, run-b seed 2, the newer one) in an ``outputs`` tree; trained once a session."""
    from tests.support.training_runs import train_two_runs

    return train_two_runs(tmp_path_factory.mktemp("trained-runs"))


# --- W&B isolation (every test) ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _wandb_offline(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep W&B offline, silent and out of $HOME in every test (no test needs the network)."""
    root = tmp_path_factory.getbasetemp() / "wandb-home"
    for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        path = root / name.lower()
        path.mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


# --- logging isolation (every test) ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Undo any entry point's logging setup after each test.

    Entry points (``main(argv)``) configure structlog to write to the ``sys.stderr`` of the moment, which under
    pytest is a capture buffer closed at the end of the test; a later test logging through it would fail.
    """
    yield
    from monitoring.logging import reset_logging

    reset_logging()
