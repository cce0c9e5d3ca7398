"""The trading engine: one decision core (features → policy → target → risk → order) driven by a candle stream.

Per closed candle of a symbol the engine:

1. brings the orders it is waiting on up to date (`OrderManager.apply` of the venue's view, which records new
   fills in the ledger and emits `fill` / `trade_closed` events);
2. feeds the candle to the symbol's `IncrementalFeatures` (the shared feature pipeline);
3. reads the account (position, free quote, equity marked at the last closes) from the venue;
4. runs the `DecisionCore`: position state as the training env encodes it, `OnnxPolicy.target_position`, order
   sizing (`plan_order`, capped to the free quote a buy can pay after fee and slippage), `RiskManager.check`;
5. hands an approved order to `OrderManager.submit` (durable ledger write, then the venue).

Backtest, paper and live run this engine: the backtest (`bot.backtest.run`) runs it over a replay feed and the paper
venue in market time, with its ledger in one transaction and its calls inline.

The conventions the backtest's equality with training's evaluation rests on are in `bot.engine.decision`.

Sinks never block trading: `EventBus.publish` calls each sink's non-blocking `publish`, and a failing sink is
counted and logged, never raised into the trading loop. After each decision the engine publishes an `equity` event
(marked at the close; the scheduled snapshot also writes one to the ledger), and every `heartbeat_interval_s` a
`heartbeat` event.

The engine answers the control plane (`bot.engine.commands`, which also has ``promote``: a shadow model of
`bot.shadow` becomes the live policy): ``pause`` (no new orders from the policy; the features and position state
keep advancing), ``resume`` (lifts a pause and a persisted risk halt), ``flatten``
(market orders back to flat, outside the policy), ``status`` and ``reload_model`` (a new ONNX + card with the same
feature spec, swapped between candles; the old policy stays on any failure). Commands take the symbols' locks that
candles take, so a command never lands in the middle of a decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import structlog
from sqlalchemy.exc import DBAPIError

from adapters.candle_guard import CandleGuard, CandleGuardConfig
from adapters.costs import CostModel
from adapters.errors import AdapterError, FatalError, OrderNotFound
from adapters.types import Balance, Candle, Fill, Market, Order, OrderRequest, OrderType, Side, split_symbol
from adapters.venue import ExchangeAdapter
from bot.clock import utc_now
from bot.engine.commands import EngineCommands
from bot.engine.decision import Decision, DecisionCore, TradingSettings
from bot.engine.state import EngineStats, Notifier, NullNotifier, SymbolState
from bot.engine.valuation import ONE, ZERO, account_currency, mark_equity, priced_values, pricing_order
from bot.events import AlertEvent, EquityEvent, HeartbeatEvent, StatusEvent
from bot.model.ahead import FlatTargets
from bot.model.features import FeatureSource, IncrementalFeatures, PrecomputedFeatures
from bot.model.policy import OnnxPolicy
from bot.orders.manager import OrderManager
from bot.orders.sizing import new_client_order_id
from bot.risk import RiskContext, RiskManager, RiskState
from bot.shadow.pool import LiveDecision, ShadowPool
from bot.sinks.bus import EventBus

if TYPE_CHECKING:
    from monitoring.metrics import BotMetrics


@runtime_checkable
class FillPusher(Protocol):
    """A venue that pushes its fills to the engine instead of being asked for each pending order."""

    def set_fill_listener(self, listener: Callable[[list[Fill], list[Order]], None] | None) -> None:
        """Call `listener` with each batch of fills and their orders as they are after it."""
        ...


MarkListener = Callable[[Candle, Decimal, Decimal, "Decision | None"], None]
"""Called at each candle with (candle, equity and the symbol's position marked at its close, the decision or None
while the features warm up)."""

log = structlog.get_logger()


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
        observe_features: Callable[[npt.NDArray[np.float64] | None], None] | None = None,
        watchdog_interval_s: float | None = None,
        stuck_after_s: float = 120.0,
        metrics: BotMetrics | None = None,
        heartbeat_interval_s: float | None = None,
        symbol_retry_s: float = 1.0,
        features: Callable[[str], FeatureSource] | None = None,
        on_marked: MarkListener | None = None,
        candle_guard: CandleGuardConfig | None = None,
        on_reanchor: Callable[[], None] | None = None,
        shadows: ShadowPool | None = None,
        promote_position: Literal["keep", "flatten"] = "keep",
        on_model_change: Callable[[OnnxPolicy], None] | None = None,
    ) -> None:
        """Wire the engine; nothing talks to the venue until `run`.

        A symbol whose feed or orders fail is retried after `symbol_retry_s` (doubling up to 60 s); the other
        symbols trade on. `features` makes each symbol's feature source (default: `IncrementalFeatures` of the
        policy's spec; a backtest passes `PrecomputedFeatures` of its history). `on_marked` is called at every
        candle with the equity and position marked at its close and the decision (a backtest's report).
        `candle_guard` refuses live candles the bot must not trade on (`adapters.candle_guard`); None (a backtest,
        whose file was validated when it was loaded) trades every candle. `on_reanchor` is called when `resume`
        re-anchors the guards (the paper venue's own guards). `shadows` run after each live decision
        (`bot.shadow.pool`); `promote_position` is what `promote` does with the live position; `on_model_change` is
        told of every new live policy (the drift monitor's reference).
        """
        if not symbols:
            raise ValueError("the engine needs at least one symbol")
        account = account_currency(symbols)
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
        self._observe_features = observe_features
        self._features = features
        self._on_marked = on_marked
        """Called with each candle's raw feature row (drift monitoring; None while warming up)."""
        self.stats = EngineStats()
        self._guards = {symbol: CandleGuard(candle_guard) for symbol in symbols} if candle_guard else {}
        self._refusing: dict[str, str] = {}
        self._on_reanchor = on_reanchor
        """The problem of each symbol's current streak of refused candles (logged and alerted when it changes)."""
        self.state = "starting"
        self.accepting = True
        """False once shutdown began: no new positions."""
        self._states: dict[str, SymbolState] = {}
        self._pricing: list[tuple[str, str, SymbolState, bool]] = []
        """`pricing_order` of `_states`, kept while the set of symbols is the same (their states priced per candle)."""
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
        self.book = orders.book
        """The bot's own book (position and free quote from its own fills); None: the venue's whole account."""
        self.shadows = shadows
        self.promote_position = promote_position
        self._on_model_change = on_model_change
        self.commands = EngineCommands(self)
        """The control plane's `bot.commands.CommandHandler` (pause, resume, flatten, status, reload-model, promote)."""
        self.timeout_check_s = max(1.0, min(30.0, orders.order_timeout_s / 2))
        """How often open orders are checked against `bot.order_timeout_s` (cancelled, then re-decided)."""
        self._halt_flattened = False
        self._pushed: dict[str, list[tuple[list[Fill], list[Order]]]] = {}
        self._refresh_errors: dict[str, str] = {}
        """The last venue error of each open order's lookup (logged when it changes)."""
        self.pushes_fills = isinstance(venue, FillPusher)
        """Whether the venue pushes its fills (the paper venue, at the candle that fills); else pending orders are
        looked up at each candle."""
        if isinstance(venue, FillPusher):
            venue.set_fill_listener(self._on_pushed_fills)

    def _on_pushed_fills(self, fills: list[Fill], orders: list[Order]) -> None:
        # Called by the venue just before it yields the candle the fills happened on: handled with that candle.
        self._pushed.setdefault(fills[0].symbol, []).append((fills, orders))

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

    def _values(self, held: Mapping[str, Balance] | None = None) -> dict[str, Decimal]:
        """Return the account-currency value of one unit of each currency priced by the last closes (with `held`,
        only the currencies `mark_equity` of those balances needs)."""
        pricing = self._pricing
        if len(pricing) != len(self._states):  # `start` adds the states (and empties this)
            pricing = self._pricing = pricing_order(self.quote, self._states)
        return priced_values(self.quote, pricing, held)

    def _equity(self, balances: Mapping[str, Any]) -> tuple[Decimal, Decimal]:
        """Return (equity, total absolute position value) in the account currency, marked at the last closes."""
        return mark_equity(balances, self.quote, self._values())

    # ------------------------------------------------------------------------------------- reports

    async def balances(self) -> Mapping[str, Balance]:
        """Return the bot's holdings: its own book's, or (without a book) the venue account's."""
        if self.book is not None:
            return self.book.balances()
        return await self.venue.fetch_balances()

    async def snapshot_equity(self) -> EquityEvent | None:
        """Record an equity snapshot in the ledger and publish it (the scheduled job)."""
        if not self._states:
            return None
        balances = await self.balances()
        event = await self._equity_event(balances, self.clock())
        await self.orders.db(self.orders.ledger.record_equity, event)
        self.bus.publish(event)
        return event

    async def _equity_event(self, balances: Mapping[str, Any], now: datetime) -> EquityEvent:
        equity, notional = self._equity(balances)
        cash = balances[self.quote].total if self.quote in balances else ZERO
        positions = await self.orders.db(self.orders.ledger.positions)
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

    @property
    def symbol_states(self) -> Mapping[str, SymbolState]:
        """The traded symbols' states, once `start` warmed them up."""
        return self._states

    @property
    def uptime_s(self) -> float:
        """Seconds since the engine was built."""
        return time.monotonic() - self._started

    @property
    def decisions_ahead(self) -> int:
        """Decisions whose target came from a batch computed ahead (`bot.model.ahead`: a backtest's flat bars)."""
        return sum(s.core.flat_targets.served for s in self._states.values() if s.core.flat_targets is not None)

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

    def emit_status(self, state: str) -> None:
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
            features = (
                self._features(symbol) if self._features is not None else IncrementalFeatures(self.policy.feature_spec)
            )
            state = SymbolState(self._decision_core(symbol, self.venue.market(symbol), features), features)
            history = await self.venue.fetch_ohlcv(
                symbol, self.settings.timeframe, limit=self.policy.feature_spec.min_history
            )
            for candle in history:
                self._feed(state, candle)
            if self.shadows is not None:
                self.shadows.warm(symbol, history)
            self._states[symbol] = state
            self._pricing = []
            self._log.info(
                "features_warmed", symbol=symbol, candles=len(history), bars_until_warm=features.bars_until_warm
            )
        pending = await self.orders.db(self.orders.ledger.orders, None)
        for order in pending:
            if not order.status.is_final and order.symbol in self._states:
                self._states[order.symbol].pending.add(order.client_order_id)
        self.state = "running"
        self.notifier.ready(self.status_line())
        self.emit_status("running")
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
                if self.timeout_check_s:
                    helpers.append(group.create_task(self._timeouts(self.timeout_check_s), name="engine:timeouts"))
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

    async def _timeouts(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.check_timeouts()

    async def check_timeouts(self) -> list[str]:
        """Cancel the orders open longer than `bot.order_timeout_s`; the next candle decides again without them.

        Return the client order ids that are final now."""
        done: list[str] = []
        try:
            touched = await self.orders.check_timeouts()
        except Exception:
            self._log.exception("order_timeout_check_failed")
            return done
        for order in touched:
            if not order.status.is_final:
                continue
            state = self._states.get(order.symbol)
            if state is not None:
                state.pending.discard(order.client_order_id)
            done.append(order.client_order_id)
        return done

    async def _heartbeats(self, interval_s: float) -> None:
        while True:
            self.beat()
            await asyncio.sleep(interval_s)

    async def _stop_when_asked(self, tasks: list[asyncio.Task[None]]) -> None:
        await self._stop.wait()
        for task in tasks:
            task.cancel()

    async def shutdown(self) -> None:
        """Stop trading: optionally cancel open orders, record a last equity snapshot, say so."""
        self.accepting = False
        self.state = "stopping"
        for symbol in list(self._pushed):
            state = self._states.get(symbol)
            pushed = self._pushed.pop(symbol)
            if state is not None:
                with contextlib.suppress(Exception):  # logged by the order manager; reconciliation catches up
                    await self._apply_pushed(state, pushed)
        self.notifier.stopping()
        self.emit_status("stopping")
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
            except DBAPIError as e:
                # The ledger cannot record (disk full, read-only, locked, corrupt): trading on would send orders
                # it cannot record. Stop the engine; the daemon exits 3 (a human must look).
                self._log.error("ledger_write_failed", symbol=symbol, error=str(e.orig))
                self.bus.publish(
                    AlertEvent(
                        ts=self.clock(),
                        bot_id=self.settings.bot_id,
                        level="critical",
                        code="ledger_unusable",
                        message=f"the ledger cannot record ({e.orig}); trading stopped",
                    )
                )
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
        guard = self._guards.get(symbol)
        async for candle in self.venue.candles(symbol, self.settings.timeframe):
            if not self.accepting:
                break
            if guard is not None and self._refused(symbol, guard, candle):
                continue
            await self.on_candle(state, candle)
            if self.max_candles is not None and self.stats.candles >= self.max_candles:
                self.request_stop()
                break

    def reanchor_candle_guards(self) -> list[str]:
        """After a human looked (`resume`): the next valid candle of each refusing symbol is its new reference.

        Return the symbols whose guard was refusing candles."""
        refusing = sorted(self._refusing)
        for guard in self._guards.values():
            guard.reanchor()
        if self._on_reanchor is not None:
            self._on_reanchor()
        self._refusing.clear()
        if refusing:
            self._log.warning("candle_guard_reanchored", symbols=refusing)
        return refusing

    def _refused(self, symbol: str, guard: CandleGuard, candle: Candle) -> bool:
        """Whether the guard refuses `candle` (never fed, decided or marked); count it, say so when the reason
        changes, and halt after `halt_after` refusals in a row."""
        refusal = guard.check(candle)
        if refusal is None:
            if self._refusing.pop(symbol, None) is not None:
                self._log.info("candles_accepted_again", symbol=symbol, candle=candle.open_time.isoformat())
            return False
        counts = self.stats.candles_refused
        counts[refusal.problem] = counts.get(refusal.problem, 0) + 1
        if self.metrics is not None:
            self.metrics.candle_refused(symbol, refusal.problem)
        if self._refusing.get(symbol) != refusal.problem:
            self._refusing[symbol] = refusal.problem
            self._log.warning(
                "candle_refused",
                symbol=symbol,
                problem=refusal.problem,
                detail=refusal.detail,
                refused=counts[refusal.problem],
            )
            self.bus.publish(
                AlertEvent(
                    ts=self.clock(),
                    bot_id=self.settings.bot_id,
                    level="warning",
                    code="candle_refused",
                    message=f"{symbol}: a {refusal.problem} candle was not traded on ({refusal.detail})",
                )
            )
        halt_after = guard.config.halt_after
        if halt_after and guard.refused_in_a_row == halt_after:
            reason = (
                f"{halt_after} candles of {symbol} refused in a row (last: {refusal.problem}, {refusal.detail}); "
                "check the feed, then resume"
            )
            self.risk.halt(reason, self.clock())
            alert = AlertEvent(
                ts=self.clock(), bot_id=self.settings.bot_id, level="critical", code="feed_halted", message=reason
            )
            self.bus.publish(alert)
        return True

    def _feed(self, state: SymbolState, candle: Candle) -> npt.NDArray[np.float64] | None:
        window = state.features.update_candle(candle)
        if self._observe_features is not None:
            self._observe_features(state.features.latest)
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
                shadows = self.shadows
                if shadows is None:
                    return await self._handle_candle(state, candle, received)
                # No shadow step inside a live decision; marked busy only once the lock is held, so that a
                # command holding the locks (promote waits for the shadows) cannot wait on a busy engine.
                shadows.live_busy()
                try:
                    return await self._handle_candle(state, candle, received)
                finally:
                    shadows.live_idle()
        finally:
            self._busy_since = None

    async def _handle_candle(self, state: SymbolState, candle: Candle, received: float) -> Decision | None:
        self.stats.candles += 1
        pushed = self._pushed.pop(state.core.symbol, None)
        if pushed:
            await self._apply_pushed(state, pushed)
        if state.pending and not self.pushes_fills:
            await self._refresh_pending(state)
        window = self._feed(state, candle)
        if self._on_candle_hook is not None:
            self._on_candle_hook(candle)
        if window is None and self._on_marked is None and self.shadows is None:
            return None
        symbol = state.core.symbol
        base, quote = split_symbol(symbol)
        book = self.book
        if book is not None:
            balances: Mapping[str, Balance] = book.balances()
            position = book.position(symbol)
            free_quote = book.free_quote(quote)
        else:
            balances = await self.venue.fetch_balances()
            position = balances[base].total if base in balances else ZERO
            free_quote = balances[quote].free if quote in balances else ZERO
        values = self._values(balances)
        equity, total_notional = mark_equity(balances, self.quote, values)
        if window is None:
            if self._on_marked is not None:
                self._on_marked(candle, equity, position, None)
            if self.shadows is not None:
                self._to_shadows(candle, equity, None)
            return None
        # Sizing is in the symbol's quote currency, the risk limits in the account's.
        quote_rate = values.get(quote, ZERO) if quote != self.quote else ONE
        now = self.clock()
        self.risk.update_equity(equity, now)
        assert state.last_candle_close is not None
        metrics = self.metrics
        if metrics is not None:
            metrics.set_staleness(symbol, (now - state.last_candle_close).total_seconds())
            metrics.set_position(symbol, position)
            metrics.set_risk_state(self.risk.state.value)
        blocked = self.orders.is_blocked(symbol)
        if (
            not blocked
            and position != 0
            and self.accepting
            and await self._protect(state, candle, position, now, quote_rate, total_notional)
        ):
            blocked = True
        decision = state.core.decide(
            now=now,
            close_time=state.last_candle_close,
            price=candle.close,
            window=window,
            position=position,
            free_quote=free_quote,
            equity=equity if quote_rate is ONE else equity / quote_rate if quote_rate > 0 else ZERO,
            total_notional=total_notional,
            has_pending=blocked or bool(state.pending) or not self.accepting or self.paused,
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
            order = await self.orders.submit(
                decision.request, model_sha=self.policy.sha256, reference_price=Decimal(repr(candle.close))
            )
            self.stats.decision_latency_s.append(time.perf_counter() - received)
            self.stats.orders_submitted += 1
            if not order.status.is_final:
                state.pending.add(order.client_order_id)
        if self._on_marked is not None:
            self._on_marked(candle, equity, position, decision)
        if self.shadows is not None:
            self._to_shadows(candle, equity, decision.target)
        # Marked at this close with the balances read before the order: off the decision's latency path. Built
        # only for a sink (a backtest without sinks builds no event at all).
        if self.bus.sinks:
            self.bus.publish(await self._equity_event(balances, now))
        if not isinstance(self.notifier, NullNotifier):
            self.notifier.status(self.status_line())
        return decision

    def _to_shadows(self, candle: Candle, equity: Decimal, target: float | None) -> None:
        """Hand the candle and the live decision to the shadow models (queued: they run after, off this path)."""
        if self.shadows is not None:
            self.shadows.submit(LiveDecision(candle, self.clock(), equity, target, self.policy.sha256))

    def install_policy(self, policy: OnnxPolicy, features: Mapping[str, FeatureSource] | None = None) -> None:
        """Trade with `policy` from the next candle (the caller holds every symbol's lock).

        Without `features` the live features stay (the same feature spec: `reload-model`); with them (a promoted
        shadow's, warmed on the same candles) each symbol's decision core is rebuilt for the new spec. The position
        state the policy observes carries over either way."""
        self.policy = policy
        for symbol, state in self._states.items():
            if features is None:
                state.core.policy = policy
                continue
            core = self._decision_core(symbol, state.core.market, features[symbol])
            core.tracker = state.core.tracker
            state.core = core
            state.features = features[symbol]
        if self._on_model_change is not None:
            self._on_model_change(policy)

    def _decision_core(self, symbol: str, market: Market, features: FeatureSource) -> DecisionCore:
        """The decision core of `symbol` for the current policy; over a precomputed history (a backtest) it reads
        its flat-position targets from batches computed ahead (`bot.model.ahead`)."""
        core = DecisionCore(symbol, market, self.policy, self.risk, self.costs, self.settings)
        if isinstance(features, PrecomputedFeatures):
            core.flat_targets = FlatTargets(self.policy, features)
        return core

    async def _protect(
        self,
        state: SymbolState,
        candle: Candle,
        position: Decimal,
        now: datetime,
        quote_rate: Decimal,
        total_notional: Decimal,
    ) -> bool:
        """Send the protective order of this candle, if any: flatten on a halt (`flatten_on_halt`), or the
        stop-loss exit. Return whether one was sent (the policy then waits for it)."""
        symbol = state.core.symbol
        if self.risk.should_flatten:
            if not self._halt_flattened:
                self._log.warning("flatten_on_halt", reason=self.risk.reason)
            self._halt_flattened = True
            result = await self.flatten_symbol(state, reason="flatten_on_halt")
            return result["order"] is not None
        if self.risk.state is not RiskState.HALTED:
            self._halt_flattened = False
        entry = self.book.entry_price(symbol) if self.book is not None else ZERO
        price = Decimal(repr(candle.close))
        assert state.last_candle_close is not None  # fed before any decision
        request = state.core.stop_exit(
            now=now,
            close_time=state.last_candle_close,
            price=price,
            position=position,
            entry=entry,
            total_notional=total_notional,
            quote_rate=quote_rate,
        )
        if request is None:
            return False
        await self._submit(state, request, price)
        return True

    def _context(
        self,
        state: SymbolState,
        now: datetime,
        price: Decimal,
        position: Decimal,
        total_notional: Decimal,
        quote_rate: Decimal = ONE,
    ) -> RiskContext:
        return RiskContext(
            now=now,
            last_price=price,
            position=position,
            total_notional=total_notional,
            last_candle_close=state.last_candle_close,
            timeframe_s=state.core.timeframe_s,
            market=state.core.market,
            reference_price=price,
            quote_rate=quote_rate,
        )

    async def _submit(self, state: SymbolState, request: OrderRequest, price: Decimal | None) -> str:
        order = await self.orders.submit(request, model_sha=self.policy.sha256, reference_price=price)
        self.stats.orders_submitted += 1
        if not order.status.is_final:
            state.pending.add(order.client_order_id)
        return order.status.value

    async def flatten_symbol(self, state: SymbolState, *, reason: str = "flatten command") -> dict[str, Any]:
        """Cancel the symbol's open orders and close the BOT's position (its book, never the account's other
        coins) with a market order that the risk manager checks as protective. The caller holds `state.lock`."""
        symbol = state.core.symbol
        cancelled = []
        for cid in sorted(state.pending):
            order = await self.orders.cancel(cid, reason=reason)
            if order.status.is_final:
                state.pending.discard(cid)
                cancelled.append(cid)
        balances = await self.balances()
        base = split_symbol(symbol)[0]
        position = (
            self.book.position(symbol)
            if self.book is not None
            else (balances[base].total if base in balances else ZERO)
        )
        market = state.core.market
        price = Decimal(repr(state.last_close)) if state.last_close is not None else None
        result: dict[str, Any] = {"position": str(position), "cancelled": cancelled, "order": None, "reason": None}
        cid = new_client_order_id(self.settings.bot_id, symbol, now=self.clock())
        if self.book is not None:
            request = self.book.flatten_request(symbol, market, cid, price=price)
        else:
            amount = market.round_amount(abs(position))
            ok = amount > 0 and amount >= market.min_amount and (price is None or amount * price >= market.min_notional)
            side = Side.SELL if position > 0 else Side.BUY
            request = OrderRequest(cid, symbol, side, OrderType.MARKET, amount) if ok else None
        if request is None:
            result["reason"] = "flat" if market.round_amount(abs(position)) <= 0 else "below_minimum"
            return result
        if self.orders.is_blocked(symbol):
            result["reason"] = "order_unresolved"
            return result
        if price is not None:
            _, total_notional = self._equity(balances)
            verdict = self.risk.check(
                request, self._context(state, self.clock(), price, position, total_notional), protective=True
            )
            if verdict.request is None:
                result["reason"] = verdict.refusal.reason.value if verdict.refusal is not None else "refused"
                return result
            request = verdict.request
        self._log.warning(
            "position_flattening", symbol=symbol, side=request.side.value, amount=str(request.amount), reason=reason
        )
        status = await self._submit(state, request, price)
        result.update(order=request.client_order_id, side=request.side.value, amount=str(request.amount), status=status)
        return result

    async def _apply_pushed(self, state: SymbolState, pushed: list[tuple[list[Fill], list[Order]]]) -> None:
        for fills, orders in pushed:
            for fill in fills:
                await self.orders.record_fill(fill)
            for order in orders:
                updated = await self.orders.apply(order, fills_pushed=True)
                if updated.status.is_final:
                    state.pending.discard(order.client_order_id)

    async def _refresh_pending(self, state: SymbolState) -> None:
        """Ask the venue about the symbol's open orders (when fills are not pushed); forget the final ones.

        An order whose outcome is being resolved in the background is left to that lookup, and one the venue's
        order lookup does not know is handed to it: the ledger, not this set, is the order's truth.
        """
        for cid in list(state.pending):
            order = await self.orders.db(self.orders.ledger.get_order, cid)
            if order is None or order.status.is_final:
                state.pending.discard(cid)
                self._refresh_errors.pop(cid, None)
                continue
            if self.orders.is_resolving(cid):
                continue
            try:
                updated = await self.orders.apply(await self.venue.fetch_order(order.symbol, cid))
            except OrderNotFound:
                updated = await self.orders.resolve_missing(order)
            except AdapterError as e:
                self.stats.order_refresh_failures += 1
                error = f"{type(e).__name__}: {e}"
                if self._refresh_errors.get(cid) != error:  # logged when it changes, counted every time
                    self._refresh_errors[cid] = error
                    self._log.warning(
                        "order_refresh_failed",
                        client_order_id=cid,
                        error=error,
                        failures=self.stats.order_refresh_failures,
                    )
                continue
            self._refresh_errors.pop(cid, None)
            if updated.status.is_final:
                state.pending.discard(cid)
