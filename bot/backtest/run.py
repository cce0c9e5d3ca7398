"""Backtest: candles through the daemon's engine, orders, ledger and risk, on the paper venue in market time.

A backtest is the paper daemon on replayed time: `bot.engine.core.Engine` (the one that trades paper and live) runs
over an `adapters.paper.replay.ReplayFeed` of the file's candles and an `adapters.paper.venue.PaperVenue` that
pushes its fills at the candle that fills them; orders go through `bot.orders.manager.OrderManager` (ledger write
before the send, the state machine), positions come from the bot's `bot.orders.book.Book`, limits from
`bot.risk.RiskManager`, and the clock is market time (`bot.clock.MarketClock`). What differs from paper is only what
makes it fast: the features of the whole history are computed once (`bot.model.features.PrecomputedFeatures`, the
functions the live path evaluates bar by bar; a row at bar t uses bars <= t only, so nothing looks ahead), a flat
bar's target comes from the policy's batches over those windows (`bot.model.ahead`; the first is checked bit for
bit against one-row calls), the ledger is in memory unless one is given, its calls run inline instead of in a
worker thread, and no event is built unless a sink listens. In a backtest the simulated account is the bot's:
`initial_quote` is its capital.

Candles before `start` are warm-up history, as the daemon's warm-up `fetch_ohlcv` provides. The report is built
from the ledger after the run: the equity marked at every close by the engine, the ledger's round trips (its closed
trades, and the position still held marked to the last close; their fees, amounts rounded down to the market's lot
step) with the slippage of their fills, through `bot.evaluation.compute_metrics`, the function training's evaluation
uses, next to the buy-and-hold and SMA-crossover baselines on the same candles and costs.
"""

from __future__ import annotations

import asyncio
import gc
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import structlog

from adapters.costs import CostModel
from adapters.paper.replay import ReplayConfig, ReplayFeed
from adapters.types import Candle, Fill, Market, Order, split_symbol, timeframe_seconds, utc_from_ms
from bot.clock import MarketClock
from bot.engine.decision import Decision, TradingSettings
from bot.evaluation import (
    EvaluationReport,
    Trade,
    buy_and_hold_targets,
    compute_metrics,
    evaluate_positions,
    periods_per_year,
    sma_crossover_targets,
)
from bot.events import Event
from bot.ledger.positions import position_change
from bot.ledger.store import Ledger
from bot.ledger.types import ClosedTrade
from bot.model.drift import DriftConfig, DriftMonitor, monitor_for_card
from bot.model.features import PrecomputedFeatures
from bot.model.policy import OnnxPolicy
from bot.risk import RiskManager
from bot.sinks.bus import EventBus
from bot.wiring import build_backtest

log = structlog.get_logger()

ZERO = Decimal(0)
FloatArray = npt.NDArray[np.float64]


def _slippage(fill: Fill) -> float:
    """What the fill paid against its requested price, quote currency (0 without one)."""
    return abs(float(fill.price) - float(fill.requested_price)) * float(fill.amount) if fill.requested_price else 0.0


@dataclass
class _Trip:
    """The fills' side of one of the ledger's round trips: when it opened and closed, and the slippage it paid."""

    opened_at: datetime
    closed_at: datetime | None = None
    """None while still open."""
    slippage: float = 0.0


def _trips_of_fills(fills: Sequence[Fill], base: str) -> list[_Trip]:
    """Split the fills into round trips where the ledger's accounting does (`bot.ledger.positions.advance_position`).

    A trip ends when the position is back to flat or flips; a flipping fill's slippage is shared pro rata between
    the trip it closes and the one it opens, as the ledger shares its fee. The ledger keeps no slippage: this is
    the one figure of a trade its fills must give.
    """
    trips: list[_Trip] = []
    held = ZERO
    for fill in fills:
        qty = position_change(fill, base)
        slip = _slippage(fill)
        new = held + qty
        if qty == 0:
            if held:  # only a fee: the ledger charges it to the open trip (and to none when flat)
                trips[-1].slippage += slip
            continue
        if not held:
            trips.append(_Trip(fill.timestamp, slippage=slip))
        elif new and (new > 0) != (held > 0):
            share = float(abs(held) / abs(qty))
            trips[-1].slippage += slip * share
            trips[-1].closed_at = fill.timestamp
            trips.append(_Trip(fill.timestamp, slippage=slip * (1.0 - share)))
        else:
            trips[-1].slippage += slip
            if not new:
                trips[-1].closed_at = fill.timestamp
        held = new
    return trips


def ledger_trades(
    closed: Sequence[ClosedTrade],
    state: Mapping[str, Any] | None,
    fills: Sequence[Fill],
    times: pd.DatetimeIndex,
    equity: FloatArray,
    initial_equity: float,
    last_close: float,
) -> list[Trade]:
    """Return the ledger's round trips as `bot.evaluation.Trade`s; a position still held is the last, marked.

    `closed` are the ledger's closed trades of one symbol and `state` its position row (`positions`), `fills`
    the fills that made them, `times` the open times of the window's bars and `equity` the equity at each close.
    PnL, fees, quantities and prices are the ledger's; costs add the fills' slippage; a trade's return is its PnL
    over the equity at the close before its entry (`initial_equity` at the first bar).
    """
    base = split_symbol(fills[0].symbol)[0] if fills else ""
    trips = _trips_of_fills(fills, base)
    held: Decimal = ZERO if state is None else state["amount"]
    boundaries: list[tuple[datetime, datetime | None]] = [(c.opened_at, c.closed_at) for c in closed]
    if state is not None and held:
        boundaries.append((utc_from_ms(state["opened_at_ms"]), None))
    if [(t.opened_at, t.closed_at) for t in trips] != boundaries:
        raise RuntimeError(f"backtest: the ledger holds {len(boundaries)} round trips, its fills make {len(trips)}")
    entry_bars = times.searchsorted(pd.DatetimeIndex([t.opened_at for t in trips], tz="UTC"))
    exit_bars = times.searchsorted(pd.DatetimeIndex([c.closed_at for c in closed], tz="UTC"))
    entry_equity = np.where(entry_bars > 0, equity[entry_bars - 1], initial_equity).tolist()
    entry_times = times[entry_bars]  # indexed at once: boxing one Timestamp per lookup cost more than the rest
    trades = [
        Trade(
            direction=c.side.sign,
            entry_time=entry_time,
            exit_time=exit_time,
            entry_price=float(c.entry_price),
            exit_price=float(c.exit_price),
            bars=bars,
            pnl=float(c.realized_pnl),
            return_fraction=float(c.realized_pnl) / before if before else math.nan,
            costs=float(c.fees) + trip.slippage,
            qty=float(c.qty),
        )
        for c, trip, entry_time, exit_time, bars, before in zip(
            closed,
            trips,
            entry_times,
            times[exit_bars],
            (exit_bars - entry_bars[: len(closed)]).tolist(),
            entry_equity,
            strict=False,
        )
    ]
    if state is not None and held:
        # Marked to the last close: what it realized so far (partial exits, after every fee) and the rest held.
        entry_price: Decimal = state["average_entry_price"]
        pnl = float(state["trip_gross_pnl"] - state["trip_fees"] + held * (Decimal(last_close) - entry_price))
        before = entry_equity[-1]
        trades.append(
            Trade(
                direction=1 if held > 0 else -1,
                entry_time=entry_times[-1],
                exit_time=times[-1],
                entry_price=float(entry_price),
                exit_price=last_close,
                bars=len(times) - int(entry_bars[-1]),
                pnl=pnl,
                return_fraction=pnl / before if before else math.nan,
                costs=float(state["trip_fees"]) + trips[-1].slippage,
                is_open=True,
                qty=float(state["trip_closed_qty"] + abs(held)),
            )
        )
    return trades


@dataclass(frozen=True)
class BacktestResult:
    """What a backtest did and its evaluation figures."""

    frame: pd.DataFrame
    """The evaluated candles (the window, without warm-up history)."""
    equity: FloatArray
    """Equity at each window bar's close, quote currency."""
    positions: FloatArray
    """Fraction of equity held during each window bar (after that bar's open fills)."""
    targets: FloatArray
    """Target decided at each bar's close (NaN while warming up)."""
    trades: list[Trade]
    """The ledger's round trips (`ledger_trades`); the last may be open."""
    fills: list[Fill]
    """Every fill of the paper venue."""
    orders: list[Order]
    """Every order of the run, as the ledger holds it at the end."""
    total_costs: float
    """Fees and slippage paid, quote currency."""
    report: EvaluationReport
    """Evaluation figures of the run (bot.evaluation conventions)."""
    elapsed_s: float
    """Wall time of the replay loop."""
    drift: BacktestDrift | None = None
    """Feature drift against the card's training distribution (None: off, or a card without a distribution)."""
    decisions_ahead: int = 0
    """Decisions at flat bars answered from the policy's batches computed ahead (`bot.model.ahead`)."""

    @property
    def candles(self) -> int:
        """Candles replayed."""
        return len(self.frame)

    @property
    def candles_per_s(self) -> float:
        """Replay throughput."""
        return self.candles / self.elapsed_s if self.elapsed_s > 0 else float("inf")

    def baselines(self, costs: CostModel, timeframe: str, initial_equity: float) -> dict[str, EvaluationReport]:
        """Return the report next to buy-and-hold and SMA crossover on the same candles and costs."""
        return {
            "policy": self.report,
            "buy_and_hold": evaluate_positions(
                self.frame, buy_and_hold_targets(self.frame), costs, timeframe, initial_equity
            ),
            "sma_crossover": evaluate_positions(
                self.frame, sma_crossover_targets(self.frame), costs, timeframe, initial_equity
            ),
        }

    def trade_records(self) -> list[dict[str, object]]:
        """Return the trades as rows for the run directory's trades file."""
        return [
            {
                "direction": t.direction,
                "entry_time": t.entry_time,
                "exit_time": t.exit_time,
                "entry_price": t.entry_price,
                "exit_price": t.exit_price,
                "bars": t.bars,
                "pnl": t.pnl,
                "return_fraction": t.return_fraction,
                "costs": t.costs,
                "is_open": t.is_open,
            }
            for t in self.trades
        ]


def window_bounds(frame: pd.DataFrame, start: datetime | None, end: datetime | None) -> tuple[int, int]:
    """Return the rows [begin, stop) of `frame` a backtest over [start, end) replays; raise under two candles."""
    times = pd.DatetimeIndex(frame.index)
    begin = 0 if start is None else int(times.searchsorted(pd.Timestamp(start), side="left"))
    stop = len(frame) if end is None else int(times.searchsorted(pd.Timestamp(end), side="left"))
    if stop - begin < 2:
        raise ValueError(f"backtest window [{start}, {end}) holds {max(stop - begin, 0)} candles; it needs >= 2")
    return begin, stop


@dataclass
class BacktestDrift:
    """Feature drift over a backtest: the daemon's check, run every `every` candles on the rolling window."""

    every: int
    """Candles between checks (the config's min_samples)."""
    checks: int = 0
    """Checks run (the first once the window holds min_samples candles)."""
    first_drifted: dict[str, datetime] = field(default_factory=dict)
    """Features that crossed a threshold, with the close time of the check that first saw it."""
    last: dict[str, tuple[float, float]] = field(default_factory=dict)
    """{feature: (PSI, KS)} at the last check."""

    def to_dict(self) -> dict[str, object]:
        """The summary's ``drift`` entry."""
        return {
            "every_candles": self.every,
            "checks": self.checks,
            "drifted": {name: ts.isoformat() for name, ts in self.first_drifted.items()},
            "last": {name: {"psi": p, "ks": k} for name, (p, k) in self.last.items()},
        }


@dataclass
class _DriftChecks:
    """Feeds the window's feature rows to the drift monitor in blocks and checks at market time, as paper does."""

    monitor: DriftMonitor
    features: PrecomputedFeatures
    begin: int
    emit: Callable[[Event], None] | None
    bot_id: str
    result: BacktestDrift
    bar: timedelta
    fed: int = -1

    def at(self, k: int, candle: Candle, last: bool) -> None:
        if (k + 1) % self.result.every and not last:
            return
        closed_at = candle.open_time + self.bar
        raw, valid = self.features.raw
        start = self.begin if self.fed < 0 else self.fed
        stop = self.begin + k + 1
        self.monitor.observe_many(raw[start:stop][valid[start:stop]])
        self.fed = stop
        report = self.monitor.check(closed_at)
        if not report.is_ready:
            return
        self.result.checks += 1
        self.result.last = report.gauges()
        for alert in report.alerts:
            self.result.first_drifted.setdefault(alert.feature, closed_at)
            if self.emit is not None:
                self.emit(alert.to_event(self.bot_id, closed_at))


@dataclass
class _Marks:
    """The engine's marks at each replayed close: equity, held fraction, decided target."""

    n: int
    on_bar: Callable[[int, float], None] | None
    bar: timedelta
    drift: _DriftChecks | None = None
    equity: FloatArray = field(init=False)
    held: FloatArray = field(init=False)
    targets: FloatArray = field(init=False)
    k: int = 0
    _equity: Decimal = ZERO
    _equity_f: float = 0.0

    def __post_init__(self) -> None:
        self.equity = np.empty(self.n)
        self.held = np.zeros(self.n)
        self.targets = np.full(self.n, np.nan)

    def mark(self, candle: Candle, equity: Decimal, position: Decimal, decision: Decision | None) -> None:
        k = self.k
        if equity is not self._equity:  # the same Decimal while a flat book is unchanged: converted once
            self._equity, self._equity_f = equity, float(equity)
        value = self._equity_f
        self.equity[k] = value
        if position and value > 0:
            self.held[k] = float(position) * candle.close / value  # 0 otherwise, as allocated
        if decision is not None:
            self.targets[k] = decision.target
        self.k = k + 1
        if self.drift is not None:
            self.drift.at(k, candle, last=k == self.n - 1)
        if self.on_bar is not None:
            self.on_bar(k, value)


def run_backtest(
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
    drift: DriftConfig | None = None,
) -> BacktestResult:
    """Replay `frame` (canonical candles) over [start, end) through the engine on a paper venue; see the module.

        Candles before `start` only warm the features up. Orders and fills are recorded in `ledger` (a file keeps
        them; default: an in-memory ledger). `bus` receives what a live run publishes (orders, fills, equity per
        candle, closed trades) when it has sinks. `on_bar(k, equity)` is called at each window bar's close. With `drift`
    (and a card that stores its training feature distribution), the daemon's drift check runs every `min_samples`
    candles of market time and at the end; its alerts go to `bus`, its figures to the result.
    """
    times_all = pd.DatetimeIndex(frame.index)
    begin, stop = window_bounds(frame, start, end)
    history = frame.iloc[:stop]
    window_frame = frame.iloc[begin:stop]
    n = stop - begin
    first_open: datetime = times_all[begin].to_pydatetime()
    timeframe = settings.timeframe
    feed = ReplayFeed(history, symbol=symbol, timeframe=timeframe, config=ReplayConfig(start=first_open))
    clock = MarketClock(first_open, timedelta(seconds=timeframe_seconds(timeframe)))
    # What a live run publishes goes out only when a sink listens: without sinks no event is built at all.
    publishing = bus is not None and bool(bus.sinks)
    events = bus if bus is not None and publishing else EventBus()
    marks = _Marks(n, on_bar, timedelta(seconds=timeframe_seconds(timeframe)))
    features = PrecomputedFeatures(policy.feature_spec, history)
    monitor = monitor_for_card(policy.card, drift) if drift is not None else None
    if monitor is not None and drift is not None:
        marks.drift = _DriftChecks(
            monitor,
            features,
            begin,
            events.publish if publishing else None,
            settings.bot_id,
            BacktestDrift(every=drift.min_samples),
            marks.bar,
        )
    own_ledger = ledger is None
    led = Ledger("sqlite://") if ledger is None else ledger
    try:
        parts = build_backtest(
            feed,
            led,
            symbol=symbol,
            policy=policy,
            market=market,
            risk=risk,
            costs=costs,
            settings=settings,
            initial_quote=initial_quote,
            clock=clock,
            bus=events,
            features=features,
            on_marked=marks.mark,
        )
        engine = parts.engine
        started = time.perf_counter()
        with led.one_transaction():  # one commit for the run, not one per order and fill
            asyncio.run(engine.run())
        elapsed = time.perf_counter() - started
        # The engine, its venue, feed and precomputed features hold each other (callbacks, the event loop's
        # tasks): free them now (42 MB on 200,000 candles), before the ledger's records are read and the report
        # allocates, not at a later collection.
        drift_result = None if marks.drift is None else marks.drift.result
        decisions_ahead = engine.decisions_ahead
        marks.drift = None
        del engine, parts, feed
        gc.collect()
        fills = led.fills(symbol)
        ledger_orders = led.orders(None, symbol)
        closed = led.closed_trades(symbol)
        position_state = led.position_state(symbol)
    finally:
        if own_ledger:
            led.close()
    if marks.k != n:
        raise RuntimeError(f"backtest: the engine marked {marks.k} of {n} candles")
    trades = ledger_trades(
        closed,
        position_state,
        fills,
        pd.DatetimeIndex(window_frame.index),
        marks.equity,
        float(initial_quote),
        float(window_frame["close"].iloc[-1]),
    )
    total_costs = sum(float(f.fee) + _slippage(f) for f in fills)
    report = compute_metrics(marks.equity, marks.held, trades, periods_per_year(timeframe), total_costs=total_costs)
    log.info(
        "backtest_finished",
        symbol=symbol,
        candles=n,
        fills=len(fills),
        trades=len(trades),
        total_return=report.total_return,
        candles_per_s=round(n / elapsed) if elapsed > 0 else None,
    )
    return BacktestResult(
        frame=window_frame,
        equity=marks.equity,
        positions=marks.held,
        targets=marks.targets,
        trades=trades,
        fills=fills,
        orders=ledger_orders,
        total_costs=total_costs,
        report=report,
        elapsed_s=elapsed,
        drift=drift_result,
        decisions_ahead=decisions_ahead,
    )
