"""The shadow models of a daemon, run after each live decision and off the order path.

The engine hands each traded candle, with the live decision's target and the bot's equity, to `ShadowPool.submit`,
which only queues it (bounded; a full queue drops the candle for the shadows and counts it): the live policy never
waits for a shadow. The pool's task steps every shadow on the candle (`bot.shadow.model.ShadowModel.step`), never
while the engine is handling a candle (`live_busy`/`live_idle`) and yielding to the event loop between shadows, so
a shadow's work never lands inside a live decision; then it writes the candle's rows to the ledger in one
transaction from a worker thread (`bot.ledger.shadows.record_shadow`: the live and shadow marks, would-be orders and
round trips), and publishes ``shadow_order``, ``shadow_trade_closed`` and ``shadow_equity`` events to the bus (MQTT, W&B
``shadow/<name>/...``, Prometheus with a ``model`` label).

A shadow that raises is dropped (logged once, alerted, counted); the others and the live policy carry on. A ledger
write that fails is counted and logged when its error changes, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

import structlog

from adapters.types import Candle
from bot.events import AlertEvent, Event, ShadowEquityEvent, ShadowOrderEvent
from bot.ledger.shadows import LIVE_MODEL, ModelMark, ShadowRecords, record_shadow
from bot.ledger.store import Ledger
from bot.shadow.model import ShadowModel, ShadowStep

log = structlog.get_logger()

DEFAULT_QUEUE_SIZE = 1024


class ShadowGauges(Protocol):
    """The metrics the pool sets directly (`monitoring.metrics.BotMetrics`)."""

    def shadow_failed(self, model: str) -> None:
        """Count a shadow dropped at run time."""
        ...

    def sink_dropped(self, sink: str, count: int = 1) -> None:
        """Count candles the full queue dropped."""
        ...


@dataclass(frozen=True, slots=True)
class LiveDecision:
    """One candle the live engine traded on, as the shadows see it."""

    candle: Candle
    now: datetime
    equity: Decimal
    """The bot's book equity at the close (account currency)."""
    target: float | None
    """The live policy's target (None while its features warm up)."""
    sha256: str
    """The live model."""


class ShadowPool:
    """Run shadow models beside the live policy (see the module docstring)."""

    def __init__(
        self,
        shadows: Sequence[ShadowModel],
        *,
        ledger: Ledger | None,
        bot_id: str,
        emit: Callable[[Event], None],
        session: datetime,
        gauges: ShadowGauges | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        write: Callable[[Ledger, ShadowRecords], None] = record_shadow,
    ) -> None:
        """Run `shadows`, writing to `ledger` (None: no rows) and publishing with `emit`; `session` is the start."""
        names = [s.name for s in shadows]
        if len(set(names)) != len(names) or LIVE_MODEL in names:
            raise ValueError(f"shadow model names must be unique and not {LIVE_MODEL!r}: {names}")
        self._shadows = {s.name: s for s in shadows}
        self._ledger = ledger
        self.bot_id = bot_id
        self._emit = emit
        self.session = session
        self._gauges = gauges
        self._write = write
        self._queue: asyncio.Queue[LiveDecision] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        """Candles the full queue dropped (the shadows missed them)."""
        self.failed: dict[str, str] = {}
        """Shadows dropped at run time, with their error."""
        self.write_failures = 0
        self._write_error: str | None = None
        self.steps = 0
        """Candles the shadows handled."""
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def names(self) -> list[str]:
        """The running shadows' names."""
        return list(self._shadows)

    def get(self, name: str) -> ShadowModel:
        """Return the running shadow `name`; raise ValueError naming the running ones."""
        shadow = self._shadows.get(name)
        if shadow is None:
            running = ", ".join(self._shadows) or "none"
            raise ValueError(f"no shadow model named {name!r} is running (shadows: {running})")
        return shadow

    def remove(self, name: str) -> ShadowModel:
        """Stop running the shadow `name` (it was promoted); return it."""
        shadow = self.get(name)
        del self._shadows[name]
        return shadow

    def add(self, shadow: ShadowModel) -> None:
        """Run one more shadow from the next candle (the live model a promotion replaced)."""
        if shadow.name in self._shadows or shadow.name == LIVE_MODEL:
            raise ValueError(f"a shadow model named {shadow.name!r} is already running")
        self._shadows[shadow.name] = shadow

    def free_name(self, wanted: str) -> str:
        """Return `wanted`, or `wanted-previous` (then -2, -3...) when a running shadow or the live policy has it."""
        taken = {LIVE_MODEL, *self._shadows}
        if wanted not in taken:
            return wanted
        candidate, n = f"{wanted}-previous", 2
        while candidate in taken:
            candidate, n = f"{wanted}-previous-{n}", n + 1
        return candidate

    def warm(self, symbol: str, candles: Sequence[Candle]) -> None:
        """Feed every shadow the warm-up history the live engine started from."""
        for shadow in self._shadows.values():
            shadow.warm(symbol, candles)

    def submit(self, decision: LiveDecision) -> None:
        """Queue a traded candle for the shadows; never waits (a full queue drops it and counts)."""
        if not self._shadows:
            return
        try:
            self._queue.put_nowait(decision)
        except asyncio.QueueFull:
            self.dropped += 1
            for shadow in self._shadows.values():
                shadow.missed += 1
            if self._gauges is not None:
                self._gauges.sink_dropped("shadows")
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("shadow_candles_dropped", dropped=self.dropped, queue_size=self._queue.maxsize)

    def live_busy(self) -> None:
        """The live engine began a candle: no shadow step starts until it is done (`live_idle`)."""
        self._busy += 1
        self._idle.clear()

    def live_idle(self) -> None:
        """The live engine finished a candle."""
        self._busy = max(0, self._busy - 1)
        if not self._busy:
            self._idle.set()

    def start(self) -> None:
        """Start the pool's task (on the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="shadows")

    async def join(self) -> None:
        """Wait until every queued candle was handled (the shadows caught up with the live engine)."""
        if self._task is not None and not self._task.done():
            await self._queue.join()

    async def aclose(self) -> None:
        """Handle what is queued, then stop the task."""
        if self._task is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                await self.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            decision = await self._queue.get()
            try:
                await self.handle(decision)
            except Exception:  # the pool must outlive any one candle
                log.exception("shadow_step_failed")
            finally:
                self._queue.task_done()

    async def handle(self, decision: LiveDecision) -> ShadowRecords:
        """Step every shadow on one traded candle; write and publish what they did; return the rows."""
        candle = decision.candle
        records = ShadowRecords()
        events: list[Event] = []
        for shadow in list(self._shadows.values()):
            # Never inside a live decision: a step waits while the engine handles a candle (its awaits on the
            # ledger would otherwise let a shadow run in the middle of the live path).
            await self._idle.wait()
            try:
                step = shadow.step(
                    candle,
                    now=decision.now,
                    session=self.session,
                    live_equity=decision.equity,
                    live_target=decision.target,
                )
            except Exception as e:
                self._drop(shadow, e, decision.now)
                continue
            records.extend(step.records)
            events += self._events(shadow, step, decision.now)
            await asyncio.sleep(0)  # a candle that arrived meanwhile goes first
        marks = records.marks
        if marks:
            # The live mark at the same close as the shadows' (the report compares models on these rows).
            marks.insert(
                0,
                ModelMark(
                    marks[0].ts,
                    self.session,
                    LIVE_MODEL,
                    "live",
                    candle.symbol,
                    decision.sha256,
                    decision.target,
                    decision.equity,
                ),
            )
        self.steps += 1
        if records and self._ledger is not None:
            try:
                await asyncio.to_thread(self._write, self._ledger, records)
                self._write_error = None
            except Exception as e:
                self.write_failures += 1
                error = f"{type(e).__name__}: {e}"
                if error != self._write_error:
                    self._write_error = error
                    log.error("shadow_ledger_write_failed", error=error, failures=self.write_failures)
        for event in events:
            self._emit(event)
        return records

    def _events(self, shadow: ShadowModel, step: ShadowStep, now: datetime) -> list[Event]:
        events: list[Event] = []
        for item in step.records.orders:
            order = item.order
            events.append(
                ShadowOrderEvent.of(
                    order, ts=order.updated_at or now, bot_id=self.bot_id, model=shadow.name, model_sha=item.model_sha
                )
            )
        events += [t.trade.to_shadow_event(self.bot_id, shadow.name) for t in step.records.trades]
        if step.equity is not None and step.records.marks:
            events.append(
                ShadowEquityEvent(
                    ts=step.records.marks[-1].ts,
                    bot_id=self.bot_id,
                    model=shadow.name,
                    equity=step.equity,
                    cash=step.cash,
                    positions_value=step.positions_value,
                    realized_pnl=shadow.realized_pnl,
                    trades=shadow.trades,
                    agreement=shadow.agreement,
                )
            )
        return events

    def _drop(self, shadow: ShadowModel, error: Exception, now: datetime) -> None:
        """Stop running a shadow that failed; say so once (log, alert, metric)."""
        self._shadows.pop(shadow.name, None)
        message = f"{type(error).__name__}: {error}"
        self.failed[shadow.name] = message
        log.error("shadow_model_dropped", model=shadow.name, error=message, exc_info=error)
        if self._gauges is not None:
            self._gauges.shadow_failed(shadow.name)
        self._emit(
            AlertEvent(
                ts=now,
                bot_id=self.bot_id,
                level="error",
                code="shadow_dropped",
                message=f"shadow model {shadow.name} failed and was dropped ({message}); the live policy trades on",
            )
        )
