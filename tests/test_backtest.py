"""The backtest (bot.backtest.run) is the daemon's engine on replayed time: what it reports is what its ledger holds.

It runs the shipped default risk limits (config/bot/default.yaml) over real bundled candles through the daemon's
Engine, OrderManager, a SQLite ledger file, the bot's Book and the paper venue's pushed fills. That the backtest
reproduces training's evaluation of the same policy is tested in tests/test_engine.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from adapters.paper.config import BTC_USDT
from adapters.types import OrderStatus
from bot.app_config import BotAppConfig
from bot.backtest.run import BacktestResult, run_backtest
from bot.config import load_config
from bot.engine.decision import TradingSettings
from bot.ledger.store import Ledger
from bot.model.policy import OnnxPolicy
from bot.risk import RiskManager
from tests.support.policy_model import export_policy, fitted_spec, random_weights

REPO = Path(__file__).resolve().parents[1]

START = pd.Timestamp("2024-01-01", tz="UTC")
END = pd.Timestamp("2024-03-01", tz="UTC")
INITIAL = Decimal(10_000)


def _run(tmp_path: Path, name: str) -> tuple[BacktestResult, Ledger]:
    frame = load_ohlcv(sample_path("BTC/USDT-1h"))
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    policy = OnnxPolicy.load(export_policy(tmp_path / name, spec, random_weights(spec, 2, seed=0), (0.0, 1.0)))
    cfg = load_config(BotAppConfig, [])
    ledger = Ledger(f"sqlite:///{tmp_path}/{name}.db")
    result = run_backtest(
        frame,
        symbol="BTC/USDT",
        policy=policy,
        market=BTC_USDT,
        risk=RiskManager(cfg.bot.risk),
        costs=cfg.costs,
        settings=TradingSettings(),
        initial_quote=INITIAL,
        start=START,
        end=END,
        ledger=ledger,
    )
    return result, ledger


def test_the_backtest_reports_what_its_ledger_holds_under_the_default_limits(tmp_path: Path) -> None:
    result, ledger = _run(tmp_path, "a")
    with ledger:
        orders = ledger.orders()
        fills = ledger.fills()
        # Every order went through the order manager's state machine into the ledger before it was sent, and
        # the paper venue's pushed fills finished it.
        assert len(orders) > 20, "the default limits let the fixture policy trade"
        for order in orders:
            statuses = [t.to_status for t in ledger.transitions(order.client_order_id)]
            assert statuses[:2] == [OrderStatus.NEW, OrderStatus.SENT] and statuses[-1] is OrderStatus.FILLED
        assert [o.client_order_id for o in result.orders] == [o.client_order_id for o in orders]
        assert result.fills == fills
        assert ledger.position("BTC/USDT").amount == sum(f.amount * f.side.sign for f in fills)

    # The equity the engine marked at the last close is the account the fills made, valued at that close.
    quote, base = INITIAL, Decimal(0)
    for f in fills:
        quote -= f.side.sign * f.amount * f.price + (f.fee if f.fee_currency == "USDT" else 0)
        base += f.side.sign * f.amount - (f.fee if f.fee_currency == "BTC" else 0)
    last_close = Decimal(str(result.frame["close"].iloc[-1]))
    assert result.equity[-1] == pytest.approx(float(quote + base * last_close), rel=1e-12)
    assert result.frame.index[0] == START and result.frame.index[-1] < END and len(result.equity) == result.candles
    # Fills happen at a candle's open (the next one after the decision), inside the window.
    opens = result.frame.index
    assert all(f.timestamp in opens for f in fills)
    assert result.report.total_return == pytest.approx(result.equity[-1] / float(INITIAL) - 1, abs=1e-12)


def test_the_backtest_is_deterministic(tmp_path: Path) -> None:
    first, ledger_a = _run(tmp_path, "a")
    second, ledger_b = _run(tmp_path, "b")
    ledger_a.close()
    ledger_b.close()
    assert [(f.side, f.amount, f.price, f.timestamp) for f in first.fills] == [
        (f.side, f.amount, f.price, f.timestamp) for f in second.fills
    ]
    assert np.array_equal(first.equity, second.equity) and np.array_equal(first.targets, second.targets, equal_nan=True)


_FREED_MEMORY_CHILD = """
import json, sys
import numpy as np
if sys.argv[1] == "returned":
    from bot.backtest.mode import return_freed_memory
    assert return_freed_memory()
import pyarrow as pa
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
big = np.ones(16 << 17)  # 16 MiB: glibc maps it, and freeing it raises its mmap threshold to 16 MiB
del big
before = rss_mb()
arrays = [np.ones(1 << 18) for _ in range(40)]  # 40 x 2 MiB, like a report's series
del arrays
print(json.dumps({"pool": pa.default_memory_pool().backend_name, "kept_mb": rss_mb() - before}))
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc (Linux)")
def test_a_backtest_gives_freed_arrays_back_and_arrow_allocates_through_malloc() -> None:
    # In a fresh process each: the allocator settings are process-wide and arrow's pool is chosen when it loads.
    def child(mode: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-c", _FREED_MEMORY_CHILD, mode], capture_output=True, text=True, check=True, cwd=REPO
        )
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    default, returned = child("default"), child("returned")
    assert default["kept_mb"] > 8, default  # glibc's default keeps them: the setting is what returns them
    assert returned["kept_mb"] < 1, returned
    assert returned["pool"] == "system"
