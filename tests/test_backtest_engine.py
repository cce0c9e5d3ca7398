"""The backtest on the one engine (bot.backtest_engine) trades exactly like the backtest's own loop (bot.backtest).

Both run the shipped default risk limits (config/bot/default.yaml) over real bundled candles; the engine path
goes through the daemon's Engine, OrderManager, in-memory SQLite ledger, Book and the paper venue's pushed fills.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adapters.ohlcv import load_ohlcv
from adapters.paper_config import BTC_USDT
from adapters.sample_data import sample_path
from adapters.types import OrderStatus
from bot.app_config import BotAppConfig
from bot.backtest import run_backtest
from bot.backtest_engine import run_engine_backtest
from bot.config import load_config
from bot.decision import TradingSettings
from bot.ledger import Ledger
from bot.policy import OnnxPolicy
from bot.risk import RiskManager
from tests.support.policy_model import export_policy, fitted_spec, random_weights

START = pd.Timestamp("2024-01-01", tz="UTC")
END = pd.Timestamp("2024-03-01", tz="UTC")


def test_the_engine_backtest_trades_like_the_backtest_loop_under_the_default_limits(tmp_path: Path) -> None:
    frame = load_ohlcv(sample_path("BTC/USDT-1h"))
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    policy = OnnxPolicy.load(export_policy(tmp_path, spec, random_weights(spec, 2, seed=0), (0.0, 1.0)))
    cfg = load_config(BotAppConfig, [])
    kwargs = dict(
        symbol="BTC/USDT",
        policy=policy,
        market=BTC_USDT,
        costs=cfg.costs,
        settings=TradingSettings(),
        initial_quote=Decimal(10_000),
        start=START,
        end=END,
    )
    loop = run_backtest(frame, risk=RiskManager(cfg.bot.risk), **kwargs)  # type: ignore[arg-type]
    with Ledger(f"sqlite:///{tmp_path}/engine.db") as ledger:
        engine = run_engine_backtest(frame, risk=RiskManager(cfg.bot.risk), ledger=ledger, **kwargs)  # type: ignore[arg-type]
        # Every order went through the order manager's state machine into the ledger, before its fill.
        assert all(ledger.transitions(o.client_order_id)[1].to_status is OrderStatus.SENT for o in ledger.orders())
        assert ledger.position("BTC/USDT").amount == sum(f.amount * f.side.sign for f in ledger.fills())

    assert len(loop.fills) > 20, "the default limits let the fixture policy trade"
    assert engine.frame.index.equals(loop.frame.index)
    assert [(f.side, f.amount, f.price, f.timestamp) for f in engine.fills] == [
        (f.side, f.amount, f.price, f.timestamp) for f in loop.fills
    ]
    assert np.array_equal(engine.targets, loop.targets, equal_nan=True)
    np.testing.assert_allclose(engine.equity, loop.equity, rtol=1e-12)
    assert [(t.entry_time, t.exit_time, t.bars) for t in engine.trades] == [
        (t.entry_time, t.exit_time, t.bars) for t in loop.trades
    ]
    assert engine.report.total_return == pytest.approx(loop.report.total_return, abs=1e-12)
    assert engine.report.trade_count == loop.report.trade_count
