"""The event bus: fan each event out to the sinks (log, W&B, MQTT, Prometheus) without ever blocking trading.

`EventBus.publish` calls each sink's non-blocking `publish`; a failing sink is counted and logged, never raised
into the trading loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import structlog

from adapters.types import slippage_bps
from bot.events import (
    AlertEvent,
    EquityEvent,
    Event,
    FillEvent,
    HeartbeatEvent,
    OrderEvent,
    RiskRefusalEvent,
    ShadowEquityEvent,
    ShadowOrderEvent,
    ShadowTradeClosedEvent,
    StatusEvent,
    TradeClosedEvent,
)

if TYPE_CHECKING:
    from monitoring.metrics import BotMetrics

log = structlog.get_logger()


class EventSink(Protocol):
    """Something that receives events; `publish` must return at once (queue, drop, never wait)."""

    def publish(self, event: Event) -> None:
        """Take one event without blocking."""
        ...


QUIET_EVENTS = frozenset({"equity", "risk_refusal", "heartbeat", "shadow_equity", "shadow_order"})
"""Event types that come once per candle or timer (the metrics and the other sinks count them; the risk manager
logs a refusal when its reason changes): never one log line each."""


class LogSink:
    """Write every event but the per-candle ones (`QUIET_EVENTS`) as one structured log line (`event_published`)."""

    def publish(self, event: Event) -> None:
        """Log the event's fields."""
        if event.type in QUIET_EVENTS:
            return
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


class MetricsSink:
    """Feed every event to the Prometheus metrics (in-memory updates: never waits)."""

    def __init__(self, metrics: BotMetrics) -> None:
        """Update `metrics` from each published event."""
        self.metrics = metrics

    def publish(self, event: Event) -> None:
        """Update the metrics from `event`."""
        observe_event(self.metrics, event)


def observe_event(metrics: BotMetrics, event: Event) -> None:
    """Turn one event into the metrics' typed updates (monitoring.metrics knows nothing of bot.events)."""
    metrics.count_event(event.type)
    if isinstance(event, OrderEvent):
        metrics.order_update(event.client_order_id, event.symbol, event.side.value, event.status)
    elif isinstance(event, FillEvent):
        slippage = event.slippage_bps
        if slippage is None:
            slippage = slippage_bps(event.side, event.price, event.requested_price)
        metrics.fill(
            event.symbol, event.side.value, event.side.sign * event.amount, event.amount * event.price, slippage
        )
    elif isinstance(event, EquityEvent):
        metrics.equity(
            equity=event.equity,
            cash=event.cash,
            positions_value=event.positions_value,
            realized_pnl=event.realized_pnl,
            unrealized_pnl=event.unrealized_pnl,
            drawdown=event.drawdown,
        )
    elif isinstance(event, TradeClosedEvent):
        metrics.trade_closed(event.symbol, event.side.value, event.realized_pnl)
    elif isinstance(event, HeartbeatEvent):
        metrics.heartbeat(event.ts.timestamp(), event.uptime_s)
    elif isinstance(event, StatusEvent):
        metrics.status(event.state, event.risk_state, event.uptime_s)
    elif isinstance(event, AlertEvent):
        metrics.alert(event.level, event.code)
    elif isinstance(event, RiskRefusalEvent):
        metrics.risk_refusal(event.symbol, event.reason, event.risk_state)
    elif isinstance(event, ShadowEquityEvent):
        metrics.shadow_equity(event.model, event.equity, event.realized_pnl, event.agreement)
    elif isinstance(event, ShadowOrderEvent):
        metrics.shadow_order(event.model, event.status.value)
    elif isinstance(event, ShadowTradeClosedEvent):
        metrics.shadow_trade_closed(event.model, event.realized_pnl)
