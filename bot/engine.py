"""The trading engine: one decision core (features → policy → target → risk → order) driven by a candle stream.

Per closed candle of a symbol the engine:

1. brings the orders it is waiting on up to date (`OrderManager.apply` of the venue's view, which records new
   fills in the ledger and emits `fill` / `trade_closed` events);
2. feeds the candle to the symbol's `IncrementalFeatures` (the shared feature pipeline);
3. reads the account (position, free quote, equity marked at the last closes) from the venue;
4. runs the `DecisionCore`: position state as the training env encodes it, `OnnxPolicy.target_position`, order
   sizing (`plan_order`, capped to the free quote a buy can pay after fee and slippage), `RiskManager.check`;
5. hands an approved order to `OrderManager.submit` (durable ledger write, then the venue).

Backtest, paper and live share this core; the backtest (`bot.backtest`) drives it synchronously for speed.

Conventions the backtest's equality with training's evaluation rests on (see `training/env.py`):

- A target is a fraction of the symbol's share of equity (``allocation`` × equity); a new order is planned only
  when the target changes or the held fraction drifts more than ``rebalance_band`` from it (training holds a
  position between target changes; it does not rebalance every bar).
- Position state appended to the observation: ``position`` = held value / equity at the close;
  ``unrealised_pnl`` = (equity − equity before the entry fill) / equity; ``time_in_position`` =
  ``log1p(bars held)``, counting the bar whose open filled the entry as 1.

Sinks never block trading: `EventBus.publish` calls each sink's non-blocking `publish`, and a failing sink is
counted and logged, never raised into the trading loop. After each decision the engine publishes an `equity` event
(marked at the close; the scheduled snapshot also writes one to the ledger), and every `heartbeat_interval_s` a
`heartbeat` event.

The engine is the control plane's `bot.commands.CommandHandler`: ``pause`` (no new orders from the policy; the
features and position state keep advancing), ``resume`` (lifts a pause and a persisted risk halt), ``flatten``
(market orders back to flat, outside the policy), ``status`` and ``reload_model`` (a new ONNX + card with the same
feature spec, swapped between candles; the old policy stays on any failure). Commands take the symbols' locks that
candles take, so a command never lands in the middle of a decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
import structlog

from adapters.costs import CostModel
from adapters.errors import AdapterError, FatalError
from adapters.types import Candle, ClientOrderId, Market, OrderRequest, OrderType, Side, timeframe_seconds
from adapters.venue import ExchangeAdapter
from bot.events import AlertEvent, EquityEvent, Event, HeartbeatEvent, StatusEvent
from bot.features import FeatureSpec, IncrementalFeatures, position_state
from bot.ledger import split_symbol
from bot.orders import OrderManager, new_client_order_id, plan_order
from bot.policy import OnnxPolicy
from bot.risk import RiskContext, RiskDecision, RiskManager, RiskState

if TYPE_CHECKING:
    from monitoring.metrics import BotMetrics

log = structlog.get_logger()

ZERO = Decimal(0)
ONE = Decimal(1)
_FRACTION_EPS = 1e-9


def utc_now() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)


# --------------------------------------------------------------------------------------------- sinks


class EventSink(Protocol):
    """Something that receives events; `publish` must return at once (queue, drop, never wait)."""

    def publish(self, event: Event) -> None:
        """Take one event without blocking."""
        ...


class LogSink:
    """Write every event as one structured log line (`event_published`)."""

    def publish(self, event: Event) -> None:
        """Log the event's fields."""
        payload = event.to_dict()
        payload.pop("schema_version", None)
        event_type = payload.pop("type")
        log.info("event_published", event_type=event_type, **payload)


class EventBus:
    """Fan events out to sinks; a sink that raises is counted and logged, never allowed to stop trading."""

    def __init__(self, sinks: Sequence[EventSink] = ()) -> None:
        """Publish to `sinks`, in order."""
        self.sinks: list[EventSink] = list(sinks)
        self.failures = 0
        """Sink calls that raised."""
        self.published = 0
        """Events published."""

    def add(self, sink: EventSink) -> None:
        """Add one more sink."""
        self.sinks.append(sink)

    def publish(self, event: Event) -> None:
        """Hand `event` to every sink."""
        self.published += 1
        for sink in self.sinks:
            try:
                sink.publish(event)
            except Exception:  # a broken sink must never stop trading
                self.failures += 1
                log.exception("sink_publish_failed", sink=type(sink).__name__, event_type=event.type)


# --------------------------------------------------------------------------------------------- decision core


@dataclass(frozen=True)
class TradingSettings:
    """How the decision core turns targets into orders (from `bot.app.BotConfig`)."""

    bot_id: str = "ai-trading"
    """Bot id: prefix of client order ids, `bot_id` of events."""
    timeframe: str = "1h"
    """Candle timeframe traded."""
    allocation: float = 1.0
    """Share of equity a symbol's target fraction applies to (1/len(symbols) by default in the app)."""
    allow_short: bool = False
    """Let negative targets open shorts; spot venues cannot, so they are clipped to 0 by default."""
    rebalance_band: float = 0.05
    """Trade an unchanged target again only when the held fraction drifted more than this from it."""
    order_type: OrderType = OrderType.MARKET
    """Order type the core sends."""

    def __post_init__(self) -> None:
        if not 0 < self.allocation <= 1:
            raise ValueError(f"allocation must be in (0, 1], was {self.allocation}")
        if not 0 <= self.rebalance_band < 1:
            raise ValueError(f"rebalance_band must be in [0, 1), was {self.rebalance_band}")
        timeframe_seconds(self.timeframe)


@dataclass
class PositionTracker:
    """The position state the training env appends to each observation, rebuilt from the account."""

    side: int = 0
    """Sign of the open trade (+1 long, -1 short, 0 flat)."""
    bars: int = 0
    """Bars the open trade has been held, the bar of its entry fill counting as 1."""
    entry_equity: float = 0.0
    """Equity before the entry fill (the previous close's equity)."""
    previous_equity: float | None = None
    """Equity at the previous close."""

    def update(self, fraction: float, equity: float) -> tuple[float, float, float]:
        """Advance by one closed bar holding `fraction` of `equity`; return (position, unrealised_pnl, log1p bars)."""
        side = (fraction > _FRACTION_EPS) - (fraction < -_FRACTION_EPS)
        if side != self.side:
            self.side = side
            if side:
                self.bars = 1
                self.entry_equity = equity if self.previous_equity is None else self.previous_equity
            else:
                self.bars = 0
        elif side:
            self.bars += 1
        self.previous_equity = equity
        if not side or equity <= 0:
            return position_state(fraction if side else 0.0, 0.0, 0)
        return position_state(fraction, (equity - self.entry_equity) / equity, self.bars)


@dataclass(frozen=True, slots=True)
class Decision:
    """What the core decided at one close: the policy's target and the order (or why none)."""

    symbol: str
    close_time: datetime
    target: float
    """Target fraction the policy asked for (after the spot clip)."""
    fraction: float
    """Fraction of equity held at the decision."""
    request: OrderRequest | None = None
    """The approved order, or None."""
    reason: str | None = None
    """Why there is no order: hold, at_target, below_minimum..., risk refusal reason."""
    risk: RiskDecision | None = None


class DecisionCore:
    """The per-symbol compute path: observation, policy, target, sizing and risk, with no I/O."""

    def __init__(
        self,
        symbol: str,
        market: Market,
        policy: OnnxPolicy,
        risk: RiskManager,
        costs: CostModel,
        settings: TradingSettings,
    ) -> None:
        """Decide for `symbol` on `market` with `policy`, checking orders with `risk`."""
        self.symbol = symbol
        self.market = market
        self.policy = policy
        self.risk = risk
        self.settings = settings
        self.spec: FeatureSpec = policy.feature_spec
        self.tracker = PositionTracker()
        self.last_target: float | None = None
        self.timeframe_s = float(timeframe_seconds(settings.timeframe))
        self._timeframe = timedelta(seconds=self.timeframe_s)
        self._width = self.spec.window * self.spec.n_features
        self._obs: npt.NDArray[np.float32] = np.zeros(self.spec.observation_size, dtype=np.float32)
        self._allocation = Decimal(repr(settings.allocation))
        # A buy may spend the free quote on price × (1 + slippage) × (1 + fee): size it so that it can pay.
        self._buy_cost_factor = Decimal(
            repr((1.0 + costs.fee_fraction(is_maker=False)) * (1.0 + costs.slippage_fraction(0.0)))
        )
        self.decisions = 0

    def observation(self, window: npt.NDArray[Any], fraction: float, equity: float) -> npt.NDArray[np.float32]:
        """Advance the position state by one bar and return the raw observation (window, then state)."""
        state = self.tracker.update(fraction, equity)
        obs = self._obs
        obs[: self._width] = window.reshape(-1)
        obs[self._width :] = state
        return obs

    def decide(
        self,
        *,
        now: datetime,
        close_time: datetime,
        price: float,
        window: npt.NDArray[Any],
        position: Decimal,
        free_quote: Decimal,
        equity: Decimal,
        total_notional: Decimal,
        has_pending: bool = False,
        quote_rate: Decimal = ONE,
    ) -> Decision:
        """Decide at the close of one bar: the order that moves the position toward the policy's target, or none.

        `window` is the raw [window, n_features] feature block ending at this bar; price, free quote and equity
        are in the symbol's quote currency, `total_notional` in the account's, and `quote_rate` is the value of one
        unit of the quote in the account currency (1 when they are the same).
        """
        self.decisions += 1
        equity_f = float(equity)
        fraction = float(position) * price / equity_f if equity_f > 0 else 0.0
        obs = self.observation(window, fraction, equity_f)
        target = self.policy.target_position(obs)
        if not self.settings.allow_short and target < 0:
            target = 0.0
        if has_pending:
            return Decision(self.symbol, close_time, target, fraction, reason="order_pending")
        if target == self.last_target and abs(fraction - target * self.settings.allocation) <= (
            self.settings.rebalance_band
        ):
            return Decision(self.symbol, close_time, target, fraction, reason="hold")
        return self._order_for(
            now, close_time, price, target, fraction, position, free_quote, equity, total_notional, quote_rate
        )

    def _order_for(
        self,
        now: datetime,
        close_time: datetime,
        price: float,
        target: float,
        fraction: float,
        position: Decimal,
        free_quote: Decimal,
        equity: Decimal,
        total_notional: Decimal,
        quote_rate: Decimal = ONE,
    ) -> Decision:
        market = self.market
        price_d = Decimal(repr(price))
        cid = new_client_order_id(self.settings.bot_id, self.symbol, now=now)
        plan = plan_order(
            Decimal(repr(target)) * self._allocation,
            position,
            price_d,
            market,
            equity,
            client_order_id=cid,
            order_type=self.settings.order_type,
            allow_short=self.settings.allow_short,
        )
        request = plan.request
        if request is not None and request.side is Side.BUY and position >= 0:
            affordable = market.round_amount(max(free_quote, ZERO) / (price_d * self._buy_cost_factor))
            if affordable < request.amount:
                if affordable <= 0 or affordable < market.min_amount or affordable * price_d < market.min_notional:
                    self.last_target = target
                    return Decision(self.symbol, close_time, target, fraction, reason="insufficient_quote")
                request = OrderRequest(
                    request.client_order_id, request.symbol, request.side, request.type, affordable, request.price
                )
        if request is None:
            self.last_target = target
            return Decision(self.symbol, close_time, target, fraction, reason=plan.reason)
        ctx = RiskContext(
            now=now,
            last_price=price_d,
            position=position,
            total_notional=total_notional,
            last_candle_close=close_time,
            timeframe_s=self.timeframe_s,
            market=market,
            reference_price=price_d,
            quote_rate=quote_rate,
        )
        verdict = self.risk.check(request, ctx)
        self.last_target = target
        if verdict.request is None:
            reason = verdict.refusal.reason.value if verdict.refusal is not None else "refused"
            return Decision(self.symbol, close_time, target, fraction, reason=f"risk:{reason}", risk=verdict)
        return Decision(self.symbol, close_time, target, fraction, request=verdict.request, risk=verdict)


# --------------------------------------------------------------------------------------------- async engine


class Notifier(Protocol):
    """Service-manager notifications (systemd's sd_notify, or nothing)."""

    def ready(self, status: str) -> None:
        """Say the service is ready."""
        ...

    def watchdog(self) -> None:
        """Say the service is alive."""
        ...

    def status(self, text: str) -> None:
        """Set the one-line status."""
        ...

    def stopping(self) -> None:
        """Say the service is stopping."""
        ...


class NullNotifier:
    """A notifier that does nothing (no service manager)."""

    def ready(self, status: str) -> None:
        """Do nothing."""

    def watchdog(self) -> None:
        """Do nothing."""

    def status(self, text: str) -> None:
        """Do nothing."""

    def stopping(self) -> None:
        """Do nothing."""


@dataclass
class SymbolState:
    """Live state of one traded symbol."""

    core: DecisionCore
    features: IncrementalFeatures
    pending: set[ClientOrderId] = field(default_factory=set)
    last_close: float | None = None
    last_candle_close: datetime | None = None
    candles: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held while a candle of this symbol is handled, or a command acts on it."""


RECENT_LATENCIES = 4096
"""Decision latencies `EngineStats` keeps (the latest ones)."""


@dataclass
class EngineStats:
    """Counters for the status line, the benchmark and tests."""

    candles: int = 0
    decisions: int = 0
    orders_submitted: int = 0
    decision_latency_s: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_LATENCIES))
    """Closed candle in → order handed to the venue (ledger write included), for the latest candles that ordered.

    Bounded: a daemon runs for months (the full distribution is the Prometheus histogram)."""
    symbol_failures: dict[str, int] = field(default_factory=dict)
    """Failures of each symbol's task (each retried with backoff)."""
    orders_withheld: int = 0
    """Decisions while paused at which the policy's target was away from the held position (an order withheld)."""


class Engine:
    """Trade symbols on a venue from its closed-candle streams until stopped; see the module docstring."""

    def __init__(
        self,
        *,
        venue: ExchangeAdapter,
        orders: OrderManager,
        policy: OnnxPolicy,
        risk: RiskManager,
        costs: CostModel,
        settings: TradingSettings,
        symbols: Sequence[str],
        bus: EventBus | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], datetime] = utc_now,
        mode: str = "paper",
        cancel_on_exit: bool = False,
        max_candles: int | None = None,
        on_candle: Callable[[Candle], None] | None = None,
        watchdog_interval_s: float | None = None,
        stuck_after_s: float = 120.0,
        metrics: BotMetrics | None = None,
        heartbeat_interval_s: float | None = None,
        symbol_retry_s: float = 1.0,
    ) -> None:
        """Wire the engine; nothing talks to the venue until `run`.

        A symbol whose feed or orders fail is retried after `symbol_retry_s` (doubling up to 60 s); the other
        symbols trade on.
        """
        if not symbols:
            raise ValueError("the engine needs at least one symbol")
        # The account is valued in the first symbol's quote; another quote needs its <quote>/<account> symbol.
        account = split_symbol(symbols[0])[1]
        for quote in sorted({split_symbol(s)[1] for s in symbols} - {account}):
            if f"{quote}/{account}" not in symbols:
                raise ValueError(
                    f"cannot value {quote} in {account}: trade {quote}/{account} too, or only {account}-quoted symbols"
                )
        self.venue = venue
        self.orders = orders
        self.policy = policy
        self.risk = risk
        self.costs = costs
        self.settings = settings
        self.symbols = list(symbols)
        self.quote = account
        """The currency the account (equity, risk limits) is valued in."""
        self.symbol_retry_s = symbol_retry_s
        self.bus = bus or EventBus()
        self.notifier: Notifier = notifier or NullNotifier()
        self.clock = clock
        self.mode = mode
        self.cancel_on_exit = cancel_on_exit
        self.max_candles = max_candles
        self._on_candle_hook = on_candle
        self.stats = EngineStats()
        self.state = "starting"
        self.accepting = True
        """False once shutdown began: no new positions."""
        self._states: dict[str, SymbolState] = {}
        self._started = time.monotonic()
        self._stop = asyncio.Event()
        self._busy_since: float | None = None
        self.stuck_after_s = stuck_after_s
        self.watchdog_interval_s = watchdog_interval_s
        self.metrics = metrics
        """Prometheus metrics fed directly (latency, candle lag, position, risk state); events reach it via the bus."""
        self.heartbeat_interval_s = heartbeat_interval_s
        self.paused = False
        """True after a `pause` command: the policy places no new orders until `resume`."""
        self._heartbeat_seq = 0
        self._log = log.bind(bot_id=settings.bot_id, mode=mode)

    # ------------------------------------------------------------------------------------- life cycle

    def request_stop(self) -> None:
        """Stop taking new positions and end `run` (safe from a signal handler)."""
        if self.accepting:
            self._log.info("engine_stop_requested")
        self.accepting = False
        self._stop.set()

    async def start(self) -> None:
        """Load markets, reconcile the ledger with the venue and warm the features up; raise if that fails."""
        markets = await self.venue.load_markets()
        missing = [s for s in self.symbols if s not in markets]
        if missing:
            raise FatalError(f"symbols {missing} are not traded on {self.venue.name}")
        await self.orders.reconcile(self.symbols)
        for symbol in self.symbols:
            core = DecisionCore(symbol, self.venue.market(symbol), self.policy, self.risk, self.costs, self.settings)
            features = IncrementalFeatures(self.policy.feature_spec)
            state = SymbolState(core, features)
            history = await self.venue.fetch_ohlcv(
                symbol, self.settings.timeframe, limit=self.policy.feature_spec.min_history
            )
            for candle in history:
                self._feed(state, candle)
            self._states[symbol] = state
            self._log.info(
                "features_warmed", symbol=symbol, candles=len(history), bars_until_warm=features.bars_until_warm
            )
        pending = await asyncio.to_thread(self.orders.ledger.orders, None)
        for order in pending:
            if not order.status.is_final and order.symbol in self._states:
                self._states[order.symbol].pending.add(order.client_order_id)
        self.state = "running"
        self.notifier.ready(self.status_line())
        self._emit_status("running")
        self._log.info("engine_ready", symbols=self.symbols, model_sha=self.policy.sha256)

    async def run(self) -> None:
        """Start, then trade every symbol in its own task until `request_stop` or the feeds end."""
        await self.start()
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._trade(symbol), name=f"trade:{symbol}") for symbol in self.symbols]
                helpers = [group.create_task(self._stop_when_asked(tasks), name="engine:stop")]
                if self.watchdog_interval_s is not None:
                    helpers.append(group.create_task(self._watchdog(self.watchdog_interval_s), name="engine:watchdog"))
                if self.heartbeat_interval_s:
                    helpers.append(
                        group.create_task(self._heartbeats(self.heartbeat_interval_s), name="engine:heartbeat")
                    )
                # A failing symbol task makes the TaskGroup cancel the rest and raise an ExceptionGroup.
                await asyncio.gather(*tasks, return_exceptions=True)
                for helper in helpers:
                    helper.cancel()
        finally:
            await self.shutdown()

    def is_healthy(self) -> bool:
        """Whether the trading loop is not stuck inside one candle for longer than `stuck_after_s`."""
        busy = self._busy_since
        return busy is None or time.monotonic() - busy < self.stuck_after_s

    async def _watchdog(self, interval_s: float) -> None:
        # Candles may be an hour apart: ping on a timer, but only while no candle has been stuck in handling.
        while True:
            if self.is_healthy():
                self.notifier.watchdog()
            else:
                self._log.error("engine_stuck", busy_s=time.monotonic() - (self._busy_since or 0.0))
            await asyncio.sleep(interval_s)

    async def _heartbeats(self, interval_s: float) -> None:
        while True:
            self.beat()
            await asyncio.sleep(interval_s)

    def beat(self) -> HeartbeatEvent:
        """Publish the next heartbeat (the heartbeat task calls this every `heartbeat_interval_s`)."""
        self._heartbeat_seq += 1
        event = HeartbeatEvent(
            ts=self.clock(),
            bot_id=self.settings.bot_id,
            seq=self._heartbeat_seq,
            uptime_s=time.monotonic() - self._started,
        )
        self.bus.publish(event)
        return event

    async def _stop_when_asked(self, tasks: list[asyncio.Task[None]]) -> None:
        await self._stop.wait()
        for task in tasks:
            task.cancel()

    async def shutdown(self) -> None:
        """Stop trading: optionally cancel open orders, record a last equity snapshot, say so."""
        self.accepting = False
        self.state = "stopping"
        self.notifier.stopping()
        self._emit_status("stopping")
        if self.cancel_on_exit:
            for symbol, state in self._states.items():
                for cid in list(state.pending):
                    try:
                        await self.orders.cancel(cid, reason="shutdown")
                    except (AdapterError, Exception):
                        self._log.exception("order_cancel_on_exit_failed", symbol=symbol, client_order_id=cid)
        with contextlib.suppress(Exception):
            await self.snapshot_equity()
        self.state = "stopped"
        self._log.info("engine_stopped", candles=self.stats.candles, orders=self.stats.orders_submitted)

    # ------------------------------------------------------------------------------------- per candle

    async def _trade(self, symbol: str) -> None:
        # Each symbol is its own task: an exchange error in one (a delisted pair, a rejected request) is logged,
        # alerted and retried with backoff, never allowed to stop the others. FatalError stops the engine.
        delay_s = self.symbol_retry_s
        while self.accepting:
            try:
                await self._trade_stream(symbol)
                return
            except (FatalError, asyncio.CancelledError):
                raise
            except Exception as e:
                self.stats.symbol_failures[symbol] = self.stats.symbol_failures.get(symbol, 0) + 1
                self._log.exception("symbol_task_failed", symbol=symbol, retry_in_s=delay_s)
                self.bus.publish(
                    AlertEvent(
                        ts=self.clock(),
                        bot_id=self.settings.bot_id,
                        level="error",
                        code="symbol_failed",
                        message=f"trading {symbol} failed: {type(e).__name__}: {e}; retrying in {delay_s:g} s, "
                        "other symbols trade on",
                    )
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 60.0)

    async def _trade_stream(self, symbol: str) -> None:
        state = self._states[symbol]
        async for candle in self.venue.candles(symbol, self.settings.timeframe):
            if not self.accepting:
                break
            await self.on_candle(state, candle)
            if self.max_candles is not None and self.stats.candles >= self.max_candles:
                self.request_stop()
                break

    def _feed(self, state: SymbolState, candle: Candle) -> npt.NDArray[np.float64] | None:
        window = state.features.update_candle(candle)
        state.last_close = candle.close
        state.last_candle_close = candle.open_time + state.core._timeframe
        state.candles += 1
        return window

    async def on_candle(self, state: SymbolState, candle: Candle) -> Decision | None:
        """Handle one closed candle of a symbol (see the module docstring); return the decision, if any."""
        received = time.perf_counter()
        self._busy_since = time.monotonic()
        try:
            async with state.lock:
                return await self._handle_candle(state, candle, received)
        finally:
            self._busy_since = None

    async def _handle_candle(self, state: SymbolState, candle: Candle, received: float) -> Decision | None:
        self.stats.candles += 1
        if state.pending:
            await self._refresh_pending(state)
        window = self._feed(state, candle)
        if self._on_candle_hook is not None:
            self._on_candle_hook(candle)
        if window is None:
            return None
        balances = await self.venue.fetch_balances()
        base, quote = split_symbol(state.core.symbol)
        position = balances[base].total if base in balances else ZERO
        free_quote = balances[quote].free if quote in balances else ZERO
        equity, total_notional = self._equity(balances)
        # Sizing is in the symbol's quote currency, the risk limits in the account's.
        quote_rate = self._values().get(quote, ZERO) if quote != self.quote else ONE
        now = self.clock()
        self.risk.update_equity(equity, now)
        assert state.last_candle_close is not None
        metrics = self.metrics
        if metrics is not None:
            metrics.set_staleness(state.core.symbol, (now - state.last_candle_close).total_seconds())
            metrics.set_position(state.core.symbol, position)
            metrics.set_risk_state(self.risk.state.value)
        decision = state.core.decide(
            now=now,
            close_time=state.last_candle_close,
            price=candle.close,
            window=window,
            position=position,
            free_quote=free_quote,
            equity=equity / quote_rate if quote_rate > 0 else ZERO,
            total_notional=total_notional,
            has_pending=bool(state.pending) or not self.accepting or self.paused,
            quote_rate=quote_rate,
        )
        self.stats.decisions += 1
        if metrics is not None:
            metrics.decision_latency.observe(time.perf_counter() - received)
        if self.paused and abs(decision.fraction - decision.target * self.settings.allocation) > (
            self.settings.rebalance_band
        ):
            self.stats.orders_withheld += 1
        if decision.request is not None and self.accepting and not self.paused:
            order = await self.orders.submit(decision.request, model_sha=self.policy.sha256)
            self.stats.decision_latency_s.append(time.perf_counter() - received)
            self.stats.orders_submitted += 1
            if not order.status.is_final:
                state.pending.add(order.client_order_id)
        # Marked at this close with the balances read before the order: off the decision's latency path.
        self.bus.publish(await self._equity_event(balances, now))
        self.notifier.status(self.status_line())
        return decision

    async def _refresh_pending(self, state: SymbolState) -> None:
        for cid in list(state.pending):
            order = await asyncio.to_thread(self.orders.ledger.get_order, cid)
            if order is None:
                state.pending.discard(cid)
                continue
            try:
                venue_order = await self.venue.fetch_order(order.symbol, cid)
            except AdapterError as e:
                self._log.warning("order_refresh_failed", client_order_id=cid, error=str(e))
                continue
            updated = await self.orders.apply(venue_order)
            if updated.status.is_final:
                state.pending.discard(cid)

    def _values(self) -> dict[str, Decimal]:
        """Return the account-currency value of one unit of each currency priced by the last closes."""
        values = {self.quote: ONE}
        # Account-quoted symbols first, so that a cross pair's quote (e.g. BTC of ETH/BTC) is priced already.
        for symbol in sorted(self._states, key=lambda s: split_symbol(s)[1] != self.quote):
            state = self._states[symbol]
            base, quote = split_symbol(symbol)
            if state.last_close is None or quote not in values or base in values:
                continue
            values[base] = Decimal(repr(state.last_close)) * values[quote]
        return values

    def _equity(self, balances: Mapping[str, Any]) -> tuple[Decimal, Decimal]:
        """Return (equity, total absolute position value) in the account currency, marked at the last closes."""
        cash = balances[self.quote].total if self.quote in balances else ZERO
        notional = ZERO
        equity = cash
        for currency, unit_value in self._values().items():
            if currency == self.quote or currency not in balances:
                continue
            value = balances[currency].total * unit_value
            equity += value
            notional += abs(value)
        return equity, notional

    # ------------------------------------------------------------------------------------- reports

    async def snapshot_equity(self) -> EquityEvent | None:
        """Record an equity snapshot in the ledger and publish it (the scheduled job)."""
        if not self._states:
            return None
        balances = await self.venue.fetch_balances()
        event = await self._equity_event(balances, self.clock())
        await asyncio.to_thread(self.orders.ledger.record_equity, event)
        self.bus.publish(event)
        return event

    async def _equity_event(self, balances: Mapping[str, Any], now: datetime) -> EquityEvent:
        equity, notional = self._equity(balances)
        cash = balances[self.quote].total if self.quote in balances else ZERO
        positions = await asyncio.to_thread(self.orders.ledger.positions)
        realized = sum((p.realized_pnl for p in positions.values()), ZERO)
        unrealized = ZERO
        for symbol, position in positions.items():
            state = self._states.get(symbol)
            if state is not None and state.last_close is not None and position.amount:
                unrealized += position.amount * (Decimal(repr(state.last_close)) - position.average_entry_price)
        return EquityEvent(
            ts=now,
            bot_id=self.settings.bot_id,
            equity=equity,
            cash=cash,
            positions_value=notional,
            realized_pnl=realized,
            unrealized_pnl=unrealized,
        )

    async def reconcile(self) -> None:
        """Reconcile the ledger with the venue (the scheduled job); a failure halts new risk."""
        try:
            await self.orders.reconcile(self.symbols)
        except Exception as e:
            self.risk.halt(f"reconciliation failed: {e}", self.clock())
            self._log.exception("reconciliation_failed")

    def status_line(self) -> str:
        """Return a one-line summary for systemd's STATUS= and logs."""
        positions = []
        for symbol, state in self._states.items():
            target = state.core.last_target
            positions.append(f"{symbol} target={'-' if target is None else f'{target:g}'}")
        return (
            f"{self.state}{' paused' if self.paused else ''} {self.mode} risk={self.risk.state.value} "
            f"candles={self.stats.candles} "
            f"orders={self.stats.orders_submitted} " + " ".join(positions)
        ).strip()

    def _emit_status(self, state: str) -> None:
        self.bus.publish(
            StatusEvent(
                ts=self.clock(),
                bot_id=self.settings.bot_id,
                state="paused" if state == "running" and self.paused else state,
                risk_state=self.risk.state.value,
                mode=self.mode,
                uptime_s=time.monotonic() - self._started,
                message=self.status_line(),
            )
        )

    # ------------------------------------------------------------------------------------- commands

    @contextlib.asynccontextmanager
    async def _every_symbol(self) -> AsyncIterator[None]:
        # Candle handling holds one symbol's lock at a time, so taking them all in a fixed order cannot deadlock.
        async with contextlib.AsyncExitStack() as stack:
            for state in self._states.values():
                await stack.enter_async_context(state.lock)
            yield

    async def pause(self) -> Mapping[str, Any]:
        """Stop the policy from placing new orders until `resume`; open orders and fills are still followed."""
        async with self._every_symbol():  # a candle being decided finishes first
            was_paused, self.paused = self.paused, True
        if not was_paused:
            self._log.warning("engine_paused")
            self._emit_status(self.state)
        return {"state": "paused", "was_paused": was_paused, "status": self.status_line()}

    async def resume(self) -> Mapping[str, Any]:
        """Lift a pause and return a halted or reducing risk manager to active (also the persisted halt)."""
        async with self._every_symbol():
            was_paused, self.paused = self.paused, False
            previous_risk = self.risk.state
            if previous_risk is not RiskState.ACTIVE:
                # One small ledger write, inline like the risk manager's own state changes on each candle.
                self.risk.resume(self.clock())
        self._log.info("engine_resumed", was_paused=was_paused, previous_risk_state=previous_risk.value)
        self._emit_status(self.state)
        return {
            "state": self.state,
            "was_paused": was_paused,
            "previous_risk_state": previous_risk.value,
            "risk_state": self.risk.state.value,
            "status": self.status_line(),
        }

    async def flatten(self, symbol: str | None) -> Mapping[str, Any]:
        """Cancel the open orders of `symbol` (every symbol when None) and close its position with a market order.

        Operator orders bypass the policy and the risk limits (they only reduce exposure). The policy may open a
        position again at the next candle: pause first to stay flat.
        """
        symbols = list(self.symbols) if symbol is None else [symbol]
        unknown = [s for s in symbols if s not in self._states]
        if unknown:
            raise ValueError(f"flatten: {unknown[0]!r} is not traded by this bot (it trades {', '.join(self.symbols)})")
        if not self.accepting:
            raise RuntimeError("flatten: the engine is stopping")
        results: dict[str, Any] = {}
        for name in symbols:
            state = self._states[name]
            async with state.lock:
                results[name] = await self._flatten_symbol(state)
        message = "; ".join(f"{s}: {r['order'] or r['reason']}" for s, r in results.items())
        self.bus.publish(
            AlertEvent(ts=self.clock(), bot_id=self.settings.bot_id, level="warning", code="flatten", message=message)
        )
        return {"symbols": results, "status": self.status_line()}

    async def _flatten_symbol(self, state: SymbolState) -> dict[str, Any]:
        symbol = state.core.symbol
        cancelled = []
        for cid in sorted(state.pending):
            order = await self.orders.cancel(cid, reason="flatten command")
            if order.status.is_final:
                state.pending.discard(cid)
                cancelled.append(cid)
        balances = await self.venue.fetch_balances()
        base = split_symbol(symbol)[0]
        position = balances[base].total if base in balances else ZERO
        market = state.core.market
        amount = market.round_amount(abs(position))
        result: dict[str, Any] = {"position": str(position), "cancelled": cancelled, "order": None, "reason": None}
        price = Decimal(repr(state.last_close)) if state.last_close is not None else None
        if amount <= 0:
            result["reason"] = "flat"
        elif amount < market.min_amount or (price is not None and amount * price < market.min_notional):
            result["reason"] = "below_minimum"
        else:
            side = Side.SELL if position > 0 else Side.BUY
            cid = new_client_order_id(self.settings.bot_id, symbol, now=self.clock())
            request = OrderRequest(cid, symbol, side, OrderType.MARKET, amount)
            self._log.warning("position_flattening", symbol=symbol, side=side.value, amount=str(amount))
            order = await self.orders.submit(request, model_sha=self.policy.sha256)
            self.stats.orders_submitted += 1
            if not order.status.is_final:
                state.pending.add(order.client_order_id)
            result.update(order=order.client_order_id, side=side.value, amount=str(amount), status=order.status.value)
        return result

    async def status(self) -> Mapping[str, Any]:
        """Return the status line and the engine's state as JSON-ready data (and republish the status event)."""
        self._emit_status(self.state)
        symbols = {
            name: {
                "target": state.core.last_target,
                "last_close": state.last_close,
                "last_candle_close": None if state.last_candle_close is None else state.last_candle_close.isoformat(),
                "pending_orders": sorted(state.pending),
            }
            for name, state in self._states.items()
        }
        return {
            "status": self.status_line(),
            "state": self.state,
            "paused": self.paused,
            "mode": self.mode,
            "risk_state": self.risk.state.value,
            "risk_reason": self.risk.reason,
            "candles": self.stats.candles,
            "decisions": self.stats.decisions,
            "orders_submitted": self.stats.orders_submitted,
            "orders_withheld": self.stats.orders_withheld,
            "uptime_s": round(time.monotonic() - self._started, 3),
            "model": {
                "path": str(self.policy.onnx_path),
                "sha256": self.policy.sha256,
                "run_id": self.policy.card.run_id,
            },
            "symbols": symbols,
        }

    async def reload_model(self, path: str | None) -> Mapping[str, Any]:
        """Load the ONNX model at `path` (the current one when None) with its card and trade with it from the next
        candle; refuse a card it cannot verify or a different feature spec, keeping the old policy."""
        target = Path(path) if path is not None else self.policy.onnx_path
        # Reading and hashing the files and building the onnxruntime session block: keep them off the loop.
        policy = await asyncio.to_thread(OnnxPolicy.load, target)
        check_compatible(self.policy, policy)
        async with self._every_symbol():
            previous, self.policy = self.policy, policy
            for state in self._states.values():
                state.core.policy = policy
        self._log.warning("policy_reloaded", path=str(target), sha256=policy.sha256, previous_sha256=previous.sha256)
        self.bus.publish(
            AlertEvent(
                ts=self.clock(),
                bot_id=self.settings.bot_id,
                level="info",
                code="model_reloaded",
                message=f"model {previous.sha256[:12]} -> {policy.sha256[:12]} from {target}",
            )
        )
        return {
            "path": str(target),
            "sha256": policy.sha256,
            "previous_sha256": previous.sha256,
            "run_id": policy.card.run_id,
        }


def check_compatible(current: OnnxPolicy, new: OnnxPolicy) -> None:
    """Raise ValueError unless `new` observes exactly what `current` does (the live features cannot change)."""
    old_spec, new_spec = current.feature_spec, new.feature_spec
    for name in ("version", "names", "window", "params"):
        old_value, new_value = getattr(old_spec, name), getattr(new_spec, name)
        if (dict(old_value) if name == "params" else old_value) != (dict(new_value) if name == "params" else new_value):
            raise ValueError(
                f"reload-model refused: feature spec {name} differs ({new_value!r} in {new.onnx_path}, "
                f"{old_value!r} live); the running features cannot change, restart the bot with that model"
            )
    if current.observation_shape != new.observation_shape:
        raise ValueError(
            f"reload-model refused: observation shape {new.observation_shape} differs from the live "
            f"{current.observation_shape}"
        )
