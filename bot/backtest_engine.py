"""Backtest on the one engine: candles through the daemon's engine, orders, ledger and risk on the paper venue.

A backtest is the paper daemon on replayed time: `bot.engine.Engine` (the one that trades paper and live) runs
over a `adapters.replay.ReplayFeed` of the file's candles and a `adapters.paper.PaperVenue` that pushes its fills
at the candle that fills them; orders go through `bot.orders.OrderManager` (ledger write before the send, the
state machine), positions come from the bot's `bot.book.Book`, limits from `bot.risk.RiskManager`, and the clock
is market time (`bot.clock.MarketClock`). What differs from paper is only what makes it fast: the features of the
whole history are computed once (`bot.features.PrecomputedFeatures`, the functions the live path evaluates bar
by bar; a row at bar t uses bars <= t only, so nothing looks ahead), the ledger is in memory unless one is given,
its calls run inline instead of in a worker thread, and no event is built unless a sink listens. In a backtest
the simulated account is the bot's: `initial_quote` is its capital.

Candles before `start` are warm-up history, as the daemon's warm-up `fetch_ohlcv` provides. The report is built
from the ledger after the run: the equity marked at every close by the engine, the round trips of the ledger's
fills (fees, slippage, amounts rounded down to the market's lot step), with `bot.metrics.compute_metrics`, the
function training's evaluation uses, next to the buy-and-hold and SMA-crossover baselines on the same candles and
costs.

Status (issue 9): this path gives the same orders, fills, trades and figures as `bot.backtest.run_backtest`'s own
loop (tests/test_backtest_engine.py), but is several times slower per candle today (the ledger's SQL per order and
fill, and the event loop), so `ai-trading bot mode=backtest` still runs `bot.backtest` until it is fast enough.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

import numpy as np
import numpy.typing as npt
import pandas as pd
import structlog

from adapters.costs import CostModel
from adapters.paper import PaperVenue
from adapters.replay import ReplayConfig, ReplayFeed
from adapters.types import Candle, Market, timeframe_seconds
from bot.backtest import BacktestResult, TradeBook, paper_account, window_bounds
from bot.book import Book, CapitalConfig
from bot.clock import MarketClock
from bot.decision import Decision, TradingSettings
from bot.engine import Engine
from bot.event_bus import EventBus
from bot.features import PrecomputedFeatures
from bot.ledger import Ledger
from bot.metrics import compute_metrics, periods_per_year
from bot.orders import OrderManager
from bot.policy import OnnxPolicy
from bot.risk import RiskManager

log = structlog.get_logger()

FloatArray = npt.NDArray[np.float64]


@dataclass
class _Marks:
    """The engine's marks at each replayed close: equity, held fraction, decided target."""

    n: int
    on_bar: Callable[[int, float], None] | None
    equity: FloatArray = field(init=False)
    held: FloatArray = field(init=False)
    targets: FloatArray = field(init=False)
    k: int = 0

    def __post_init__(self) -> None:
        self.equity = np.empty(self.n)
        self.held = np.zeros(self.n)
        self.targets = np.full(self.n, np.nan)

    def mark(self, candle: Candle, equity: Decimal, position: Decimal, decision: Decision | None) -> None:
        k = self.k
        value = float(equity)
        self.equity[k] = value
        self.held[k] = float(position) * candle.close / value if value > 0 else 0.0
        if decision is not None:
            self.targets[k] = decision.target
        self.k = k + 1
        if self.on_bar is not None:
            self.on_bar(k, value)


def run_engine_backtest(
    frame: pd.DataFrame,
    *,
    symbol: str,
    policy: OnnxPolicy,
    market: Market,
    risk: RiskManager,
    costs: CostModel,
    settings: TradingSettings,
    initial_quote: Decimal,
    start: datetime | None = None,
    end: datetime | None = None,
    ledger: Ledger | None = None,
    bus: EventBus | None = None,
    on_bar: Callable[[int, float], None] | None = None,
) -> BacktestResult:
    """Replay `frame` (canonical candles) over [start, end) through the engine on a paper venue; see the module.

    Candles before `start` only warm the features up. Orders and fills are recorded in `ledger` (a file keeps
    them; default: an in-memory ledger). `bus` receives what a live run publishes (orders, fills, equity per
    candle, closed trades) when it has sinks. `on_bar(k, equity)` is called at each window bar's close.
    """
    times_all = pd.DatetimeIndex(frame.index)
    begin, stop = window_bounds(frame, start, end)
    history = frame.iloc[:stop]
    window_frame = frame.iloc[begin:stop]
    n = stop - begin
    first_open: datetime = times_all[begin].to_pydatetime()
    timeframe = settings.timeframe
    feed = ReplayFeed(history, symbol=symbol, timeframe=timeframe, config=ReplayConfig(start=first_open))
    venue = PaperVenue(paper_account(market, initial_quote, costs, settings), feed=feed)
    clock = MarketClock(first_open, timedelta(seconds=timeframe_seconds(timeframe)))
    # What a live run publishes goes out only when a sink listens: without sinks no event is built at all.
    publishing = bus is not None and bool(bus.sinks)
    events = bus if bus is not None and publishing else EventBus()
    marks = _Marks(n, on_bar)
    own_ledger = ledger is None
    led = Ledger("sqlite://") if ledger is None else ledger
    try:
        orders = OrderManager(
            led,
            venue,
            bot_id=settings.bot_id,
            book=Book(CapitalConfig(quote=initial_quote), market.quote),
            clock=clock,
            emit=events.publish if publishing else None,
            on_trade_closed=lambda t: risk.on_trade_closed(t.symbol, t.realized_pnl, t.closed_at),
            inline_db=True,
            quiet=True,
        )
        engine = Engine(
            venue=venue,
            orders=orders,
            policy=policy,
            risk=risk,
            costs=costs,
            settings=settings,
            symbols=[symbol],
            bus=events,
            clock=clock,
            mode="backtest",
            on_candle=clock.follow,
            features=lambda _: PrecomputedFeatures(policy.feature_spec, history),
            on_marked=marks.mark,
        )
        engine.timeout_check_s = 0  # market orders fill at the next candle; no wall-clock timeout task
        started = time.perf_counter()
        with led.one_transaction():  # one commit for the run, not one per order and fill
            asyncio.run(engine.run())
        elapsed = time.perf_counter() - started
        fills = led.fills(symbol)
        ledger_orders = led.orders(None, symbol)
    finally:
        if own_ledger:
            led.close()
    if marks.k != n:
        raise RuntimeError(f"backtest: the engine marked {marks.k} of {n} candles")
    trades = TradeBook(pd.DatetimeIndex(window_frame.index))
    bars = trades.times.searchsorted(pd.DatetimeIndex([f.timestamp for f in fills]))
    for fill, k in zip(fills, bars, strict=True):
        trades.on_fill(fill, int(k), float(marks.equity[k - 1]) if k > 0 else float(initial_quote))
    trades.finish(float(window_frame["close"].iloc[-1]))
    report = compute_metrics(
        marks.equity, marks.held, trades.trades, periods_per_year(timeframe), total_costs=trades.total_costs
    )
    log.info(
        "backtest_finished",
        symbol=symbol,
        candles=n,
        fills=len(fills),
        trades=len(trades.trades),
        total_return=report.total_return,
        candles_per_s=round(n / elapsed) if elapsed > 0 else None,
    )
    return BacktestResult(
        frame=window_frame,
        equity=marks.equity,
        positions=marks.held,
        targets=marks.targets,
        trades=trades.trades,
        fills=fills,
        orders=ledger_orders,
        total_costs=trades.total_costs,
        report=report,
        elapsed_s=elapsed,
    )
