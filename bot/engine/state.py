"""The engine's state records: per-symbol state, counters, and the service-manager notifier it reports to."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from adapters.types import ClientOrderId
from bot.engine.decision import DecisionCore
from bot.model.features import FeatureSource


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
    features: FeatureSource
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
    order_refresh_failures: int = 0
    candles_refused: dict[str, int] = field(default_factory=dict)
    """Live candles refused by the candle guard, by problem (adapters.candle_guard); none is traded on."""
    """Failed venue lookups of open orders (logged only when an order's error changes)."""
    """Decisions while paused at which the policy's target was away from the held position (an order withheld)."""
