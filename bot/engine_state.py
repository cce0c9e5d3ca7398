"""The engine's wiring and state: per-symbol state, counters, notifier, and what it reports (equity, status,
heartbeat).

After each decision the engine publishes an `equity` event (marked at the close; the scheduled snapshot also
writes one to the ledger), and every `heartbeat_interval_s` a `heartbeat` event. `bot.engine_commands` and
`bot.engine` build the control plane and the trading loop on `EngineBase`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from adapters.costs import CostModel
from adapters.types import Candle, ClientOrderId
from adapters.venue import ExchangeAdapter
from bot.clock import utc_now
from bot.decision import DecisionCore, TradingSettings
from bot.event_bus import EventBus
from bot.events import EquityEvent, HeartbeatEvent, StatusEvent
from bot.features import IncrementalFeatures
from bot.orders import OrderManager
from bot.policy import OnnxPolicy
from bot.risk import RiskManager
from bot.valuation import account_currency, mark_equity, unit_values

if TYPE_CHECKING:
    from monitoring.metrics import BotMetrics

log = structlog.get_logger()

ZERO = Decimal(0)


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


class EngineBase:
    """The engine's wiring, state and reports (equity, status, heartbeat); `bot.engine.Engine` trades on it."""

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

    def _values(self) -> dict[str, Decimal]:
        """Return the account-currency value of one unit of each currency priced by the last closes."""
        return unit_values(self.quote, self._states)

    def _equity(self, balances: Mapping[str, Any]) -> tuple[Decimal, Decimal]:
        """Return (equity, total absolute position value) in the account currency, marked at the last closes."""
        return mark_equity(balances, self.quote, self._values())

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
