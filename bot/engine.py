"""The trading engine: one decision core (features → policy → target → risk → order) driven by a candle stream.

Per closed candle of a symbol the engine:

1. brings the orders it is waiting on up to date (`OrderManager.apply` of the venue's view, which records new
   fills in the ledger and emits `fill` / `trade_closed` events);
2. feeds the candle to the symbol's `IncrementalFeatures` (the shared feature pipeline);
3. reads the account (position, free quote, equity marked at the last closes) from the venue;
4. runs the `DecisionCore`: position state as the training env encodes it, `OnnxPolicy.target_position`, order
   sizing (`plan_order`, capped to the free quote a buy can pay after fee and slippage), `RiskManager.check`;
5. hands an approved order to `OrderManager.submit` (durable ledger write, then the venue).

Backtest, paper and live share this core (`bot.decision`); the backtest (`bot.backtest`) drives it synchronously
for speed.

The conventions the backtest's equality with training's evaluation rests on are in `bot.decision`.

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

import numpy as np
import numpy.typing as npt
import structlog

from adapters.errors import AdapterError, FatalError
from adapters.types import Candle
from bot.decision import Decision, DecisionCore
from bot.engine_commands import EngineCommands
from bot.engine_state import SymbolState
from bot.events import AlertEvent
from bot.features import IncrementalFeatures
from bot.ledger_types import split_symbol
from bot.valuation import ONE, ZERO

log = structlog.get_logger()


class Engine(EngineCommands):
    """Trade symbols on a venue from its closed-candle streams until stopped; see the module docstring."""

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
