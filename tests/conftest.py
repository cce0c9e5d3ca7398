"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

# Fixtures that start real services, shared by every test module (each module imports only the types).
from tests.support.binance_server import binance_server  # noqa: F401
from tests.support.browser import browser  # noqa: F401
from tests.support.postgres import postgres_server, postgres_url  # noqa: F401
from tests.support.prometheus import prometheus  # noqa: F401

# --- market data (tests/test_ohlcv.py, test_validation.py, test_splits.py, test_data_cli.py) ---------

TEST_DATA = Path(__file__).resolve().parent / "data"
"""Small real candle files shipped with the tests (tests/data/README.md says where each comes from)."""

BUNDLED_AS = {
    "binance/BTC_USDT-1h.parquet": "BTC/USDT-1h",
    "freqtrade/ETH_BTC-5m.feather": "ETH/BTC-5m",
    "freqtrade/LTC_BTC-5m.feather": "LTC/BTC-5m",
}
"""Files of the workspace's shared/data layout that the package bundles (adapters/bundled/)."""


@pytest.fixture(scope="session")
def shared_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like shared/data/, built from what the project ships: never absent, never skipped.

    The bundled candles (adapters/bundled/) and tests/data/ are linked into one tree, so a test names files the
    way the shared data does (``binance/BTC_USDT-1h.parquet``) and runs the same on a fresh clone.
    """
    from adapters.data.sample import sample_path

    root = tmp_path_factory.mktemp("shared-data")
    for source in TEST_DATA.rglob("*"):
        if source.is_file() and source.suffix != ".py" and source.name != "README.md":
            target = root / source.relative_to(TEST_DATA)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)
    for relative, sample in BUNDLED_AS.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(sample_path(sample))
    return root


# --- skip policy -----------------------------------------------------------------------------------------


def _skips_fail() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


HARDWARE_SKIPS = ("no CUDA device",)
"""Skip reasons CI may keep: hardware it cannot install (the CUDA runs of the device tests need a GPU)."""


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a skip into a failure that says why it was skipped (unless only hardware is missing)."""
    if report.skipped and not hasattr(report, "wasxfail") and _skips_fail():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if any(allowed in reason for allowed in HARDWARE_SKIPS):
            return
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true (CI installs every binary and ships every file): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Under ``CI=true`` a skipped test fails: CI installs every binary, so nothing may be left unproven."""
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    """The same for a whole module skipped at import (``pytest.importorskip``)."""
    outcome = yield
    _fail_skip(outcome.get_result())


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
    # WANDB_DIR stays unset, as for most users: runs then go to each run's own directory (tests that set it check
    # that it wins).
    monkeypatch.delenv("WANDB_DIR", raising=False)
    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
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
