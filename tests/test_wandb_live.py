"""W&B live sink: the user guide's live/* keys, a real offline run, and a stalled W&B never delaying trading."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from adapters.costs import CostModel
from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from adapters.paper.config import BTC_USDT
from adapters.types import Side
from bot.backtest.run import run_backtest
from bot.config import WandbConfig
from bot.engine.decision import TradingSettings
from bot.events import EquityEvent, Event, FillEvent, TradeClosedEvent
from bot.ledger.store import Ledger
from bot.model.policy import OnnxPolicy
from bot.risk import RiskManager
from bot.sinks.bus import EventBus
from bot.sinks.wandb_live import WandbLiveSink, wandb_run_factory
from tests.support.policy_model import export_policy, fitted_spec, random_weights
from tests.test_engine import NO_LIMITS, START

TS = datetime(2024, 1, 1, tzinfo=UTC)


def trade(pnl: str = "12.5") -> TradeClosedEvent:
    return TradeClosedEvent(
        ts=TS,
        bot_id="b",
        symbol="BTC/USDT",
        side=Side.BUY,
        qty=Decimal("0.1"),
        entry_price=Decimal("40000"),
        exit_price=Decimal("40200"),
        realized_pnl=Decimal(pnl),
        fees=Decimal("8"),
        duration_seconds=7200.0,
        model_sha="ab" * 32,
    )


class RecordingRun:
    """A stand-in for a wandb run that records what it gets."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.finished = False

    def log(self, data: dict[str, Any]) -> None:
        self.rows.append(data)

    def finish(self) -> None:
        self.finished = True


class StalledRun(RecordingRun):
    """A stand-in for a stalled wandb-core: `log` blocks until released (as a hung network call would)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def log(self, data: dict[str, Any]) -> None:
        self.entered.set()
        self.release.wait()
        super().log(data)


def test_closed_trades_equity_and_positions_use_the_user_guide_keys() -> None:
    run = RecordingRun()
    sink = WandbLiveSink(lambda: run, model_sha="ab" * 32)
    sink.start()
    sink.publish(trade())
    sink.publish(
        EquityEvent(
            ts=TS,
            bot_id="b",
            equity=Decimal("10100"),
            cash=Decimal("100"),
            positions_value=Decimal("10000"),
            realized_pnl=Decimal(0),
            unrealized_pnl=Decimal(5),
            drawdown=0.01,
        )
    )
    sink.publish(
        FillEvent(
            ts=TS,
            bot_id="b",
            trade_id="1",
            client_order_id="c",
            symbol="BTC/USDT",
            side=Side.BUY,
            amount=Decimal("0.25"),
            price=Decimal("40000"),
            fee=Decimal("1"),
            fee_currency="USDT",
        )
    )
    assert sink.close(timeout_s=5)
    assert run.finished
    assert run.rows[0] == {
        "live/entry_price": 40000.0,
        "live/exit_price": 40200.0,
        "live/realized_pnl": 12.5,
        "live/duration_seconds": 7200.0,
        "live/qty": 0.1,
        "live/fees": 8.0,
    }
    assert run.rows[1]["live/equity"] == 10100.0 and run.rows[1]["live/drawdown"] == 0.01
    assert run.rows[2] == {"live/position/BTC/USDT": 0.25}
    assert sink.stats.delivered == 3 and sink.stats.dropped == 0
    # At close the trading charts are built from the closed trades (one here), as training's evaluation does.
    charts = run.rows[3]
    assert {
        "live/cumulative_pnl",
        "live/win_loss_distribution",
        "live/duration_vs_return",
        "live/win_rate_by_hour",
    } <= set(charts)
    assert charts["live/trades_closed"] == 1 and sink.stats.charts == 1


def test_stalled_wandb_never_delays_decisions_and_drops_are_counted(tmp_path: Path) -> None:
    frame = load_ohlcv(sample_path())
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    policy = OnnxPolicy.load(export_policy(tmp_path, spec, random_weights(spec, 2, seed=0), (0.0, 1.0)))
    kwargs: dict[str, Any] = dict(
        symbol="BTC/USDT",
        policy=policy,
        market=BTC_USDT,
        costs=CostModel(),
        settings=TradingSettings(),
        initial_quote=Decimal(10_000),
        start=START,
        end=START + (frame.index[1] - frame.index[0]) * 24 * 60,
    )
    with Ledger("sqlite://") as ledger:
        baseline = run_backtest(frame, risk=RiskManager(NO_LIMITS), ledger=ledger, **kwargs)
    run = StalledRun()
    sink = WandbLiveSink(lambda: run, queue_size=4)
    sink.start()
    offered: list[Event] = []

    class Recorder:
        def publish(self, event: Event) -> None:
            if isinstance(event, TradeClosedEvent | FillEvent | EquityEvent):  # the events the sink logs a row of
                offered.append(event)

    with Ledger("sqlite://") as ledger:
        bus = EventBus([sink, Recorder()])
        stalled = run_backtest(frame, risk=RiskManager(NO_LIMITS), ledger=ledger, bus=bus, **kwargs)
    # Every decision and order happened as without W&B, although the run never returned from log().
    assert stalled.targets.tolist() == baseline.targets.tolist()
    assert [f.price for f in stalled.fills] == [f.price for f in baseline.fills]
    closed = sum(1 for t in baseline.trades if not t.is_open)
    assert closed > 10
    assert run.entered.is_set() and run.rows == []
    # One row is stuck inside log(), 4 wait in the queue, the rest were dropped and counted: every closed trade,
    # fill and per-candle equity event the backtest published (equity rows downsampled by the sink are not drops).
    assert len(offered) > closed + len(stalled.fills)
    assert sink.stats.accepted == 5
    assert sink.stats.dropped == len(offered) - sink.equity_rows_skipped - 5
    assert sink.close(timeout_s=0.05) is False  # a stalled run cannot hold shutdown beyond its deadline
    run.release.set()
    assert sink._finished.wait(5) and run.finished


@pytest.mark.integration
def test_a_real_offline_run_is_created_logged_and_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    factory = wandb_run_factory(
        WandbConfig(enabled=True, mode="offline", project="ai-trading-test"),
        run_config={"bot": {"mode": "paper"}},
        model_sha="cd" * 32,
    )
    sink = WandbLiveSink(factory, model_sha="cd" * 32)
    sink.start()
    sink.publish(trade("-3.25"))
    assert sink.close(timeout_s=60)
    assert sink.stats.delivered == 1 and not sink.stats.init_failed and sink.stats.failures == 0
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
