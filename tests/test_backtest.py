"""The backtest (bot.backtest.run) is the daemon's engine on replayed time: what it reports is what its ledger holds.

It runs the shipped default risk limits (config/bot/default.yaml) over real bundled candles through the daemon's
Engine, OrderManager, a SQLite ledger file, the bot's Book and the paper venue's pushed fills. That the backtest
reproduces training's evaluation of the same policy is tested in tests/test_engine.py.
"""

from __future__ import annotations

import itertools
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
from adapters.types import ClientOrderId, Fill, OrderStatus, Side
from bot.app_config import BotAppConfig
from bot.backtest.run import BacktestResult, ledger_trades, run_backtest
from bot.config import load_config
from bot.engine.decision import TradingSettings
from bot.ledger.positions import advance_position, empty_position_state
from bot.ledger.store import Ledger
from bot.model.policy import OnnxPolicy
from bot.risk import RiskManager
from tests.support.policy_model import export_policy, fitted_spec, random_weights

REPO = Path(__file__).resolve().parents[1]

START = pd.Timestamp("2024-01-01", tz="UTC")
END = pd.Timestamp("2024-03-01", tz="UTC")
INITIAL = Decimal(10_000)


def _run(
    tmp_path: Path,
    name: str,
    actions: tuple[float, ...] = (0.0, 1.0),
    settings: TradingSettings | None = None,
    seed: int = 0,
) -> tuple[BacktestResult, Ledger]:
    frame = load_ohlcv(sample_path("BTC/USDT-1h"))
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    weights = random_weights(spec, len(actions), seed=seed)
    policy = OnnxPolicy.load(export_policy(tmp_path / name, spec, weights, actions))
    cfg = load_config(BotAppConfig, [])
    ledger = Ledger(f"sqlite:///{tmp_path}/{name}.db")
    result = run_backtest(
        frame,
        symbol="BTC/USDT",
        policy=policy,
        market=BTC_USDT,
        risk=RiskManager(cfg.bot.risk),
        costs=cfg.costs,
        settings=settings or TradingSettings(),
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


def test_the_backtests_trades_are_its_ledgers_round_trips_and_account_for_its_equity(tmp_path: Path) -> None:
    # A policy that goes long, flat and short flips the position through one fill and closes exactly after one.
    result, ledger = _run(tmp_path, "short", (-1.0, 0.0, 1.0), TradingSettings(allow_short=True), seed=3)
    with ledger:
        closed = ledger.closed_trades("BTC/USDT")
        held = ledger.position("BTC/USDT")
    trades = result.trades
    assert len(trades) == len(closed) + (not held.is_flat) > 20
    flips = sum(a.exit_time == b.entry_time and a.direction != b.direction for a, b in itertools.pairwise(trades))
    assert flips > 5, "the fixture should flip through one fill"
    for trade, c in zip(trades, closed, strict=False):
        assert (trade.direction, trade.entry_time, trade.exit_time) == (c.side.sign, c.opened_at, c.closed_at)
        assert (trade.qty, trade.entry_price, trade.exit_price) == (
            float(c.qty),
            float(c.entry_price),
            float(c.exit_price),
        )
        assert trade.pnl == float(c.realized_pnl) and not trade.is_open
    if not held.is_flat:
        assert trades[-1].is_open and trades[-1].entry_time == held.opened_at
        assert trades[-1].entry_price == float(held.average_entry_price)
    # Every trade holds at least one lot: no remnant of float arithmetic passes for a round trip.
    assert min(t.qty for t in trades) >= float(BTC_USDT.amount_step)
    # The trades, the open one marked to the last close, are the whole equity change, and all its costs.
    assert sum(t.pnl for t in trades) == pytest.approx(result.equity[-1] - float(INITIAL), rel=1e-9)
    assert sum(t.costs for t in trades) == pytest.approx(result.total_costs, rel=1e-12)
    assert result.report.trade_count == len(trades)


def _fill(k: int, side: Side, amount: str, price: str, requested: str, fee: str, fee_currency: str = "USDT") -> Fill:
    return Fill(
        trade_id=f"t{k}",
        client_order_id=ClientOrderId(f"c{k}"),
        symbol="BTC/USDT",
        side=side,
        amount=Decimal(amount),
        price=Decimal(price),
        fee=Decimal(fee),
        fee_currency=fee_currency,
        timestamp=pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(hours=k),
        requested_price=Decimal(requested),
    )


def test_ledger_trades_share_a_flips_costs_and_mark_the_open_position_to_the_last_close() -> None:
    times = pd.date_range("2024-01-01", periods=6, freq="1h", tz="UTC")
    equity = np.array([1000.0, 1010.0, 990.0, 1005.0, 1020.0, 1030.0])
    fills = [
        _fill(1, Side.BUY, "1", "101", "100", "0.1"),
        _fill(2, Side.SELL, "3", "99", "100", "0.3"),  # closes the long, opens a short of 2: a third is the long's
        _fill(4, Side.BUY, "2", "95", "95", "0.2"),
        _fill(5, Side.BUY, "0.5", "96", "95.5", "0.001", fee_currency="BTC"),  # holds 0.499 BTC
    ]
    # The ledger's accounting over these fills: its closed trades and the position row it keeps.
    state = empty_position_state()
    closed = [c for f in fills if (c := advance_position(state, f, "BTC", "USDT", None, None)) is not None]
    trades = ledger_trades(closed, state, fills, times, equity, 1000.0, 97.0)

    long, short, held = trades
    assert (long.direction, long.entry_time, long.exit_time, long.bars) == (1, times[1], times[2], 1)
    assert (long.entry_price, long.exit_price, long.qty, long.is_open) == (101.0, 99.0, 1.0, False)
    assert long.pnl == pytest.approx(-2 - 0.1 - 0.1)
    assert long.costs == pytest.approx(0.1 + 0.1 + 1 + 1)  # fees, and slippage 1 + a third of the flip's 3
    assert long.return_fraction == pytest.approx(long.pnl / 1000.0)
    assert (short.direction, short.entry_time, short.exit_time, short.bars) == (-1, times[2], times[4], 2)
    assert (short.entry_price, short.exit_price, short.qty) == (99.0, 95.0, 2.0)
    assert short.pnl == pytest.approx(2 * 4 - 0.2 - 0.2)
    assert short.costs == pytest.approx(0.2 + 0.2 + 2)
    assert short.return_fraction == pytest.approx(short.pnl / 1010.0)
    assert (held.direction, held.entry_time, held.exit_time, held.bars, held.is_open) == (
        1,
        times[5],
        times[5],
        1,
        True,
    )
    assert (held.entry_price, held.exit_price, held.qty) == (96.0, 97.0, 0.499)
    assert held.pnl == pytest.approx(0.499 * (97 - 96) - 0.001 * 96)  # the base fee valued at its fill price
    assert held.costs == pytest.approx(0.001 * 96 + 0.5 * 0.5)
    assert held.return_fraction == pytest.approx(held.pnl / 1020.0)
    # Fills that do not make the ledger's round trips are an error, not a different report.
    with pytest.raises(RuntimeError, match="round trips"):
        ledger_trades(closed, state, fills[1:], times, equity, 1000.0, 97.0)


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
