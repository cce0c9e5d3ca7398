"""Backtest: replay candles through the daemon's decision core and the paper venue, as fast as possible.

The loop is the engine's per-candle path without the event loop (the paper venue's synchronous core is called
directly, which `adapters.paper.PaperVenue` offers for this): candle → paper venue fills pending orders at
this bar's open → account → `DecisionCore.decide` (policy, sizing, risk) → `PaperVenue.submit_order`.

Features are computed once with `bot.features.compute_features`, the same functions `IncrementalFeatures`
evaluates bar by bar (the live/batch parity test checks they agree); features at bar t use bars <= t only,
so nothing looks ahead. Candles before the window (`start`) are warm-up history, as the daemon's warm-up
`fetch_ohlcv` would provide.

The report is computed from what actually happened on the paper venue (equity marked at every close, fills,
fees, slippage, amounts rounded down to the market's lot step) with `bot.metrics.compute_metrics`, the function
training's evaluation uses, next to the buy-and-hold and SMA-crossover baselines on the same candles and costs.
"""

from __future__ import annotations

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
from adapters.paper_config import PaperConfig
from adapters.types import Candle, ClientOrderId, Fill, Market, Order, OrderStatus, Side, timeframe_seconds
from bot.decision import DecisionCore, TradingSettings
from bot.event_bus import EventBus
from bot.events import EquityEvent, FillEvent, TradeClosedEvent
from bot.features import candle_arrays, compute_features, observation_valid
from bot.ledger import Ledger
from bot.metrics import (
    EvaluationReport,
    Trade,
    buy_and_hold_targets,
    compute_metrics,
    evaluate_positions,
    periods_per_year,
    sma_crossover_targets,
)
from bot.policy import OnnxPolicy
from bot.risk import RiskManager

log = structlog.get_logger()

ZERO = Decimal(0)
FloatArray = npt.NDArray[np.float64]


@dataclass
class _OpenTrade:
    direction: int
    entry_bar: int
    entry_equity: float
    cash_flow: float = 0.0
    fees: float = 0.0
    slippage: float = 0.0
    entry_amount: float = 0.0
    entry_value: float = 0.0
    exit_amount: float = 0.0
    exit_value: float = 0.0


@dataclass
class TradeBook:
    """Turn fills into round-trip `Trade`s the way `bot.metrics` defines them (flat → position → flat)."""

    times: pd.DatetimeIndex
    trades: list[Trade] = field(default_factory=list)
    position: float = 0.0
    total_costs: float = 0.0
    _open: _OpenTrade | None = None

    def on_fill(self, fill: Fill, bar: int, equity_before: float) -> None:
        """Account one fill at window bar `bar`; `equity_before` is the equity at the previous close."""
        amount = float(fill.amount) * fill.side.sign
        price = float(fill.price)
        fee = float(fill.fee)
        slip = abs(price - float(fill.requested_price)) * float(fill.amount) if fill.requested_price else 0.0
        self.total_costs += fee + slip
        remaining = amount
        share = 1.0
        if self.position and (self.position > 0) != (amount > 0) and abs(amount) > abs(self.position):
            # The fill closes the trade and opens one the other way: split it (fee and slippage pro rata).
            closing = -self.position
            share = closing / amount
            self._apply(closing, price, fee * share, slip * share, bar, equity_before)
            remaining = amount - closing
            share = 1.0 - share
        self._apply(remaining, price, fee * share, slip * share, bar, equity_before)

    def _apply(self, amount: float, price: float, fee: float, slip: float, bar: int, equity_before: float) -> None:
        if self._open is None:
            self._open = _OpenTrade(direction=1 if amount > 0 else -1, entry_bar=bar, entry_equity=equity_before)
        trade = self._open
        trade.cash_flow -= amount * price + fee
        trade.fees += fee
        trade.slippage += slip
        if (amount > 0) == (trade.direction > 0):
            trade.entry_amount += abs(amount)
            trade.entry_value += abs(amount) * price
        else:
            trade.exit_amount += abs(amount)
            trade.exit_value += abs(amount) * price
        self.position += amount
        if abs(self.position) < 1e-12:
            self.position = 0.0
            self._close(
                bar,
                trade.exit_value / trade.exit_amount if trade.exit_amount else price,
                trade.cash_flow,
                is_open=False,
            )

    def _close(self, bar: int, exit_price: float, pnl: float, *, is_open: bool) -> None:
        trade = self._open
        assert trade is not None
        exit_bar = bar if not is_open else len(self.times) - 1
        self.trades.append(
            Trade(
                direction=trade.direction,
                entry_time=self.times[trade.entry_bar],
                exit_time=self.times[exit_bar],
                entry_price=trade.entry_value / trade.entry_amount if trade.entry_amount else float("nan"),
                exit_price=exit_price,
                bars=(bar - trade.entry_bar) if not is_open else len(self.times) - trade.entry_bar,
                pnl=pnl,
                return_fraction=pnl / trade.entry_equity if trade.entry_equity else float("nan"),
                costs=trade.fees + trade.slippage,
                is_open=is_open,
                qty=trade.entry_amount,
            )
        )
        self._open = None

    def finish(self, last_close: float) -> None:
        """Report a position still held after the last bar as an open trade marked to the last close."""
        if self._open is not None and self.position:
            pnl = self._open.cash_flow + self.position * last_close
            self._close(len(self.times) - 1, last_close, pnl, is_open=True)


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
    """Round trips from the fills; the last may be open."""
    fills: list[Fill]
    """Every fill of the paper venue."""
    orders: list[Order]
    """Every order accepted by the paper venue, as last seen."""
    total_costs: float
    """Fees and slippage paid, quote currency."""
    report: EvaluationReport
    """Evaluation figures of the run (bot.metrics conventions)."""
    elapsed_s: float
    """Wall time of the replay loop."""

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


def paper_account(market: Market, initial_quote: Decimal, costs: CostModel, settings: TradingSettings) -> PaperConfig:
    """The simulated account a backtest trades: `initial_quote` of the market's quote, the run's costs."""
    return PaperConfig(
        initial_balances={market.quote: initial_quote},
        markets=(market,),
        costs=costs,
        allow_short=settings.allow_short,
    )


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
) -> BacktestResult:
    """Replay `frame` (canonical candles) over [start, end) through the decision core and a paper venue.

    Candles before `start` only warm the features up. With a `ledger`, every order is written before it is sent
    and every fill recorded (as the daemon does); without one the run stays in memory (much faster).
    """
    times_all = pd.DatetimeIndex(frame.index)
    begin, stop = window_bounds(frame, start, end)
    history = frame.iloc[:stop]
    spec = policy.feature_spec
    ts_ms, opens, highs, lows, closes, volumes = candle_arrays(history)
    raw, valid = compute_features(spec, ts_ms, opens, highs, lows, closes, volumes)
    ready = observation_valid(spec, valid)
    window = spec.window
    window_frame = frame.iloc[begin:stop]
    n = stop - begin
    times = list(times_all[begin:stop].to_pydatetime())
    bar_length = timedelta(seconds=timeframe_seconds(settings.timeframe))

    venue = PaperVenue(paper_account(market, initial_quote, costs, settings))
    core = DecisionCore(symbol, market, policy, risk, costs, settings)
    book = TradeBook(pd.DatetimeIndex(window_frame.index))
    equity_curve = np.empty(n)
    held = np.zeros(n)
    targets = np.full(n, np.nan)
    base, quote = market.base, market.quote
    cash_d, position_d = initial_quote, ZERO
    free_d = initial_quote
    cash_f, position_f = float(initial_quote), 0.0
    previous_equity = float(initial_quote)
    pending = False
    model_sha = policy.sha256
    # What a live run publishes (fills, equity per candle, closed trades), only when a sink listens: the W&B
    # sink downsamples equity by market time; without sinks the backtest builds no event at all.
    publishing = bus is not None and bool(bus.sinks)
    peak_equity = float(initial_quote)
    started = time.perf_counter()
    for k in range(n):
        t = begin + k
        close = float(closes[t])
        candle = Candle(
            symbol,
            settings.timeframe,
            times[k],
            float(opens[t]),
            float(highs[t]),
            float(lows[t]),
            close,
            float(volumes[t]),
        )
        if pending:
            fills = venue.on_candle(candle)
            for fill in fills:
                closed_before = len(book.trades)
                book.on_fill(fill, k, previous_equity)
                if ledger is not None:
                    _record_fill(ledger, venue, fill, model_sha, settings.bot_id, bus)
                if publishing:
                    assert bus is not None
                    bus.publish(FillEvent.of(fill, settings.bot_id))
                    if ledger is None:  # with a ledger, its closed round trips are published (_record_fill)
                        for trade in book.trades[closed_before:]:
                            bus.publish(_trade_event(trade, symbol, settings.bot_id, model_sha))
            balances = venue.balances()
            cash_d, free_d, position_d = balances[quote].total, balances[quote].free, balances[base].total
            cash_f, position_f = float(cash_d), float(position_d)
            pending = bool(venue.open_orders(symbol))
        else:
            venue.on_candle(candle)
        equity = cash_f + position_f * close
        equity_curve[k] = equity
        held[k] = position_f * close / equity if equity > 0 else 0.0
        previous_equity = equity
        if publishing:
            assert bus is not None
            peak_equity = max(peak_equity, equity)
            bus.publish(
                EquityEvent(
                    ts=times[k] + bar_length,
                    bot_id=settings.bot_id,
                    equity=Decimal(repr(equity)),
                    cash=cash_d,
                    positions_value=position_d * Decimal(repr(close)),
                    realized_pnl=ZERO,
                    unrealized_pnl=ZERO,
                    drawdown=1.0 - equity / peak_equity if peak_equity > 0 else 0.0,
                )
            )
        if on_bar is not None:
            on_bar(k, equity)
        if not ready[t]:
            continue
        close_time = times[k] + bar_length
        equity_d = cash_d + position_d * Decimal(repr(close))
        risk.update_equity(equity_d, close_time)
        decision = core.decide(
            now=close_time,
            close_time=close_time,
            price=close,
            window=raw[t - window + 1 : t + 1],
            position=position_d,
            free_quote=free_d,
            equity=equity_d,
            total_notional=abs(position_d) * Decimal(repr(close)),
            has_pending=pending,
        )
        targets[k] = decision.target
        request = decision.request
        if request is None or k == n - 1:
            # The target decided at the last close never fills (the same rule as bot.metrics).
            continue
        if ledger is not None:
            ledger.record_new_order(request, ts=close_time, model_sha=model_sha, sent=True)
        order = venue.submit_order(request)
        if ledger is not None:
            ledger.update_order(
                request.client_order_id,
                OrderStatus.OPEN,
                ts=close_time,
                expected_from=OrderStatus.SENT,
                venue_order_id=order.venue_order_id,
            )
        pending = True
        balances = venue.balances()
        free_d = balances[quote].free
    elapsed = time.perf_counter() - started
    book.finish(float(closes[stop - 1]))
    report = compute_metrics(
        equity_curve, held, book.trades, periods_per_year(settings.timeframe), total_costs=book.total_costs
    )
    log.info(
        "backtest_finished",
        symbol=symbol,
        candles=n,
        fills=len(venue.fills),
        trades=len(book.trades),
        total_return=report.total_return,
        candles_per_s=round(n / elapsed) if elapsed > 0 else None,
    )
    orders = [venue.get_order(symbol, cid) for cid in _client_order_ids(venue)]
    return BacktestResult(
        frame=window_frame,
        equity=equity_curve,
        positions=held,
        targets=targets,
        trades=book.trades,
        fills=venue.fills,
        orders=orders,
        total_costs=book.total_costs,
        report=report,
        elapsed_s=elapsed,
    )


def _trade_event(trade: Trade, symbol: str, bot_id: str, model_sha: str) -> TradeClosedEvent:
    """The `trade_closed` event of a round trip of the backtest's trade book."""
    return TradeClosedEvent(
        ts=trade.exit_time.to_pydatetime(),
        bot_id=bot_id,
        symbol=symbol,
        side=Side.BUY if trade.direction > 0 else Side.SELL,
        qty=Decimal(repr(trade.qty)),
        entry_price=Decimal(repr(trade.entry_price)),
        exit_price=Decimal(repr(trade.exit_price)),
        realized_pnl=Decimal(repr(trade.pnl)),
        fees=Decimal(repr(trade.costs)),
        duration_seconds=(trade.exit_time - trade.entry_time).total_seconds(),
        model_sha=model_sha,
    )


def _client_order_ids(venue: PaperVenue) -> list[ClientOrderId]:
    seen: dict[ClientOrderId, None] = {}
    for fill in venue.fills:
        seen.setdefault(fill.client_order_id, None)
    for order in venue.open_orders():
        seen.setdefault(order.client_order_id, None)
    return list(seen)


def _record_fill(
    ledger: Ledger, venue: PaperVenue, fill: Fill, model_sha: str, bot_id: str, bus: EventBus | None
) -> None:
    result = ledger.record_fill(fill)
    order = venue.get_order(fill.symbol, ClientOrderId(fill.client_order_id))
    current = ledger.get_order(order.client_order_id)
    if current is not None and not current.status.is_final:
        ledger.update_order(
            order.client_order_id,
            order.status,
            ts=fill.timestamp,
            expected_from=current.status,
            filled=order.filled,
            average_price=order.average_price,
            fee=order.fee,
            fee_currency=order.fee_currency,
        )
    if bus is not None and result.closed_trade is not None:
        bus.publish(result.closed_trade.to_event(bot_id))
