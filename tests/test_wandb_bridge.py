"""Tests for the W&B bridge, against real offline wandb runs (no mocking of wandb)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from monitoring.logging import LEVEL_ENV_VAR, configure_logging, current_wandb_bridge, reset_logging
from monitoring.wandb_bridge import METRIC_KEYS, WandbBridge, active_wandb_run

wandb = pytest.importorskip("wandb")


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _clean_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(LEVEL_ENV_VAR, raising=False)
    reset_logging()
    yield
    reset_logging()


@pytest.fixture
def offline_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Start a real wandb run in offline mode with every wandb directory under tmp_path."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path))
    run = wandb.init(
        dir=tmp_path,
        project="ai-trading-tests",
        settings=wandb.Settings(x_disable_stats=True, console="off"),
    )
    assert str(run.dir).startswith(str(tmp_path))
    try:
        yield run
    finally:
        if wandb.run is not None:
            run.finish()


def run_file_bytes(run: Any) -> bytes:
    """Return the bytes of the offline run's transaction log (the ``.wandb`` file beside ``files/``)."""
    (path,) = Path(run.dir).parent.glob(f"run-{run.id}.wandb")
    return path.read_bytes()


def test_does_nothing_without_an_active_run() -> None:
    assert active_wandb_run() is None
    bridge = WandbBridge(flush_interval_s=0)
    with structlog.testing.capture_logs(processors=[structlog.processors.add_log_level, bridge]) as events:
        log = structlog.get_logger()
        log.error("order_submit_failed", symbol="BTC/USDT")
        log.critical("engine_halted")
    assert [e["event"] for e in events] == ["order_submit_failed", "engine_halted"]
    assert bridge.counts == dict.fromkeys(METRIC_KEYS, 0)
    assert bridge.stats.delivered == bridge.alert_stats.delivered == bridge.stats.failures == 0

    configure_logging("INFO", json=True, stream=io.StringIO(), wandb_bridge=True)
    installed = current_wandb_bridge()
    assert isinstance(installed, WandbBridge)
    structlog.get_logger().error("order_submit_failed")
    assert installed.counts == dict.fromkeys(METRIC_KEYS, 0)


def test_counts_reach_the_run_through_the_configured_pipeline(offline_run: Any) -> None:
    clock = FakeClock()
    bridge = WandbBridge(flush_interval_s=10, clock=clock)
    out = io.StringIO()
    configure_logging("INFO", json=True, stream=out, wandb_bridge=bridge)
    log = structlog.get_logger()

    log.info("order_submitted")  # not counted
    log.warning("feed_reconnecting")  # first count flushes at once
    assert bridge.last_flushed == {"logs/warnings": 1, "logs/errors": 0, "logs/critical": 0}

    clock.now += 1
    log.error("order_submit_failed")
    try:
        raise TimeoutError("venue timeout")
    except TimeoutError:
        log.exception("balance_fetch_failed")
    logging.getLogger("ccxt").error("ccxt request failed")  # stdlib lines are counted too
    assert bridge.stats.delivered == 1  # within the interval: counted, not sent
    assert bridge.counts == {"logs/warnings": 1, "logs/errors": 3, "logs/critical": 0}

    clock.now += 10
    log.info("heartbeat")  # any line after the interval flushes pending counts
    assert bridge.stats.delivered == 2
    assert bridge.last_flushed == {"logs/warnings": 1, "logs/errors": 3, "logs/critical": 0}

    # commit=False: the counts join the next row the training loop commits.
    offline_run.log({"global_step": 128})
    summary = dict(offline_run.summary)
    assert (summary["logs/warnings"], summary["logs/errors"], summary["logs/critical"]) == (1, 3, 0)
    assert summary["global_step"] == 128
    # The bridge only counts; the rendered lines are unchanged.
    events = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    assert events[:3] == ["order_submitted", "feed_reconnecting", "order_submit_failed"]
    assert bridge.stats.failures == 0


def test_alerts_are_rate_limited_per_title_and_written_to_the_run(offline_run: Any) -> None:
    clock = FakeClock()
    bridge = WandbBridge(flush_interval_s=0, alert_interval_s=300, clock=clock)
    configure_logging("INFO", json=True, stream=io.StringIO(), secrets=["hunter2-secret"], wandb_bridge=bridge)
    log = structlog.get_logger()

    log.critical("engine_halted", reason="daily loss limit")  # sent
    clock.now += 10
    log.critical("engine_halted", reason="daily loss limit")  # same title within 5 min: suppressed
    log.warning("ledger_lagging", alert=True, detail="key hunter2-secret leaked?")  # other title: sent
    log.error("order_submit_failed")  # error without alert=True: counted only
    clock.now += 300
    log.critical("engine_halted", reason="again")  # interval passed: sent

    assert (bridge.alert_stats.delivered, bridge.alert_stats.dropped, bridge.alert_stats.failures) == (3, 1, 0)
    assert bridge.counts == {"logs/warnings": 1, "logs/errors": 1, "logs/critical": 3}

    offline_run.finish()
    # finish() can return before the wandb-core service has written the offline transaction log;
    # teardown() stops the service, which flushes and closes it.
    wandb.teardown()
    data = run_file_bytes(offline_run)
    # Each alert record holds the title and a text that starts with "<event> [<level>]".
    assert data.count(b"engine_halted [critical]") == 2
    assert data.count(b"ledger_lagging [warning]") == 1
    assert b"daily loss limit" in data
    assert b"hunter2-secret" not in data  # the alert text went through redaction
    assert b"key ***" in data

    # A finished run rejects alert() (wandb raises UsageError): counted, never raised into logging.
    stale = WandbBridge(alert_interval_s=300, clock=clock, get_run=lambda: offline_run)
    with structlog.testing.capture_logs(processors=[structlog.processors.add_log_level, stale]) as events:
        structlog.get_logger().critical("engine_halted")
    assert [e["event"] for e in events] == ["engine_halted"]
    assert (stale.alert_stats.failures, stale.stats.failures, stale.alert_stats.delivered) == (1, 1, 0)
