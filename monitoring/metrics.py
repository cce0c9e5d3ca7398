"""Prometheus metrics of the trading daemon (prefix ``aitrading_``) and the HTTP exporter that serves them.

The engine owns one :class:`BotMetrics`, feeds it every event it publishes (`bot.sinks.bus.observe_event` turns each
into typed updates, so this module knows nothing of bot.events) and calls a few direct helpers for what is not an
event (latencies, staleness, sink queues, reconciliation). Every update is in memory (a lock-protected float per
series), so nothing here can delay an order; the exporter serves ``/metrics`` from a daemon thread. Grafana
dashboards (``monitoring/grafana.py``) query only these names.

Every series carries the labels ``bot_id`` and ``mode`` (backtest, paper, live). Label values that come from
the outside world are bounded: each label keeps at most a fixed number of distinct values (``symbol`` 64,
``sink`` 32, ``kind`` 32, ``reason`` 32, ``code`` 64, ``state`` 16); later values are reported as ``other`` and
logged once, so a misbehaving caller cannot blow up the series count.

Metrics (name, type, extra labels: meaning):

Account (from ``equity`` events)
    - ``aitrading_equity`` gauge: account value in the quote currency.
    - ``aitrading_cash`` gauge: quote currency held.
    - ``aitrading_positions_value`` gauge: value of the open positions in the quote currency.
    - ``aitrading_realized_pnl`` gauge: realized profit after fees since start of the account.
    - ``aitrading_unrealized_pnl`` gauge: profit of the open positions if closed at the mark.
    - ``aitrading_drawdown_ratio`` gauge: fall from the peak equity as a fraction (0.1 = 10 %).
    - ``aitrading_position`` gauge, ``symbol``: signed position in the base currency (net of fills, or as set
      by :meth:`BotMetrics.set_position` after reconciliation).

Orders and execution (from ``order``, ``fill``, ``trade_closed`` events)
    - ``aitrading_orders_total`` counter, ``symbol, side, status``: orders that entered ``status`` (a repeated
      event for the same order and status is counted once).
    - ``aitrading_open_orders`` gauge, ``symbol``: orders not yet in a final state.
    - ``aitrading_fills_total`` counter, ``symbol, side``: executions.
    - ``aitrading_fill_notional_total`` counter, ``symbol, side``: traded notional (amount x price, quote).
    - ``aitrading_slippage_bps`` histogram, ``symbol, side``: adverse slippage of fills against the decision
      price, in basis points (negative = price improvement).
    - ``aitrading_trades_closed_total`` counter, ``symbol, side, outcome``: round trips, ``outcome`` win, loss or
      flat (realized PnL after fees > 0, < 0, = 0).

Latency (direct helpers)
    - ``aitrading_decision_latency_seconds`` histogram: candle received -> order decided (features, policy, risk).
    - ``aitrading_inference_latency_seconds`` histogram: one ONNX policy run.

Data, risk, reconciliation
    - ``aitrading_data_staleness_seconds`` gauge, ``symbol``: age of the latest candle when last checked.
    - ``aitrading_risk_state`` gauge, ``state``: 1 for the current risk state (active, reducing, halted), else 0.
    - ``aitrading_risk_halts_total`` counter: transitions of the risk manager into ``halted``.
    - ``aitrading_risk_refusals_total`` counter, ``symbol, reason``: orders the risk manager refused.
    - ``aitrading_reconciliation_discrepancies_total`` counter, ``kind``: ledger/venue mismatches found.
    - ``aitrading_candles_refused_total`` counter, ``symbol, problem``: live candles the candle guard refused
      (invalid, duplicate, out_of_order, spike); never traded on.

Model (direct helpers, from the drift monitor and the staleness check)
    - ``aitrading_feature_drift_psi`` gauge, ``feature``: population stability index of the live window of a
      feature against its training distribution (> 0.25: shifted).
    - ``aitrading_feature_drift_ks`` gauge, ``feature``: Kolmogorov-Smirnov statistic of the same.
    - ``aitrading_model_age_days`` gauge: days since the live model's training data ended.

Shadow models (from ``shadow_*`` events; ``model`` is the shadow's name, at most 16 distinct)
    - ``aitrading_shadow_equity`` gauge, ``model``: the shadow's virtual book value (account currency).
    - ``aitrading_shadow_realized_pnl`` gauge, ``model``: its realized profit after fees since the daemon started.
    - ``aitrading_shadow_agreement_ratio`` gauge, ``model``: share of decisions whose target equalled the live one.
    - ``aitrading_shadow_orders_total`` counter, ``model, status``: would-be orders that entered ``status``.
    - ``aitrading_shadow_trades_closed_total`` counter, ``model, outcome``: its round trips (win, loss, flat).
    - ``aitrading_shadow_failures_total`` counter, ``model``: shadows dropped at run time (an alert says why).

Sinks and liveness
    - ``aitrading_sink_queue_depth`` gauge, ``sink``: events waiting in a sink's queue (W&B, MQTT, ledger).
    - ``aitrading_sink_dropped_total`` counter, ``sink``: events a slow or dead sink dropped.
    - ``aitrading_sink_connected`` gauge, ``sink``: 1 while a networked sink (MQTT) holds its connection, else 0.
    - ``aitrading_sink_connect_failures_total`` counter, ``sink``: failed connection attempts and lost
      connections (logged when an outage begins, when its error changes and when it ends; counted here).
    - ``aitrading_heartbeat_timestamp_seconds`` gauge: Unix time of the latest heartbeat (panel: its age).
    - ``aitrading_heartbeats_total`` counter: heartbeats emitted.
    - ``aitrading_uptime_seconds`` gauge: seconds since the daemon started.
    - ``aitrading_bot_state`` gauge, ``state``: 1 for the engine's current state (running, paused, ...), else 0.
    - ``aitrading_alerts_total`` counter, ``level, code``: alerts raised.
    - ``aitrading_events_total`` counter, ``type``: events observed, by event type.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import Final, Self
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import start_http_server as _prometheus_start_http_server

from adapters.types import OrderStatus

log = structlog.get_logger()

DEFAULT_METRICS_PORT: Final = 9108
"""Port of the metrics exporter; deploy/prometheus.yml scrapes localhost:9108."""

PREFIX: Final = "aitrading_"
"""Prefix of every metric name."""

EVENT_KINDS: Final = frozenset(
    {
        "order",
        "fill",
        "trade_closed",
        "equity",
        "status",
        "heartbeat",
        "alert",
        "risk_refusal",
        "shadow_order",
        "shadow_trade_closed",
        "shadow_equity",
        "model_promoted",
    }
)
"""Event types counted by name (bot.events' schema; a test keeps the two in step)."""

OTHER: Final = "other"
"""Label value that stands for every value past a label's cardinality bound."""

LATENCY_BUCKETS_S: Final = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
"""Histogram buckets for decision and inference latency: 50 µs to 2.5 s (a small ONNX policy runs in µs-ms)."""

SLIPPAGE_BUCKETS_BPS: Final = (-20.0, -10.0, -5.0, -2.0, -1.0, 0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0)
"""Histogram buckets for fill slippage in basis points (negative = price improvement)."""

RISK_STATES: Final = ("active", "reducing", "halted")
"""Risk manager states (bot.risk.RiskState values), exported from the start so panels have data."""

_OPEN_ORDER_LIMIT = 10_000
_FINISHED_ORDER_MEMORY = 2_000


class _BoundedLabel:
    """Map label values to themselves until `limit` distinct values were seen, then to ``other``."""

    def __init__(self, name: str, limit: int, preset: tuple[str, ...] = ()) -> None:
        self.name = name
        self.limit = limit
        self._seen: set[str] = set(preset)
        self._warned = False
        self._lock = threading.Lock()

    def __call__(self, value: object) -> str:
        text = str(value)[:100] or "none"
        if text in self._seen:
            return text
        with self._lock:
            if text in self._seen:
                return text
            if len(self._seen) < self.limit:
                self._seen.add(text)
                return text
            if not self._warned:
                self._warned = True
                log.warning("metric_label_overflow", label=self.name, limit=self.limit, value=text)
        return OTHER


class MetricsServer:
    """A running ``/metrics`` HTTP exporter; close it (or use it as a context manager) to stop it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._closed = False

    @property
    def port(self) -> int:
        """Return the TCP port the exporter is bound to."""
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        """Return the address the exporter is bound to."""
        return str(self._server.server_address[0])

    def close(self) -> None:
        """Stop serving, release the socket and join the server thread."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)
        log.info("metrics_server_stopped", port=self.port)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def serve_metrics(
    registry: CollectorRegistry, port: int = DEFAULT_METRICS_PORT, addr: str = "127.0.0.1"
) -> MetricsServer:
    """Serve `registry` on http://addr:port/metrics from a daemon thread; port 0 picks a free port."""
    if not 0 <= port <= 65535:
        raise ValueError(f"metrics port must be in 0..65535, was {port}")
    try:
        server, thread = _prometheus_start_http_server(port, addr=addr, registry=registry)
    except OSError as e:
        raise OSError(e.errno, f"metrics exporter cannot listen on {addr}:{port}: {e.strerror or e}") from e
    running = MetricsServer(server, thread)
    log.info("metrics_server_started", address=running.address, port=running.port)
    return running


def _float(value: Decimal | float) -> float:
    return float(value)


@dataclass
class SinkStats:
    """What one sink did, in the same counters for every sink: the W&B live run (`bot.sinks.wandb_live`), the MQTT
    bridge (`bot.sinks.mqtt`) and the W&B log bridge (`monitoring.wandb_bridge`, which keeps a second one for
    its alerts). Counters only grow and may be read from any thread; one a sink has no use for stays 0.
    """

    accepted: int = 0
    """Items handed to the sink and queued (W&B rows, MQTT events)."""
    delivered: int = 0
    """Items the destination took: `run.log`/`run.alert` calls that returned, messages the broker acknowledged
    (events, status and heartbeats)."""
    dropped: int = 0
    """Items given up: the queue was full (destination slow or away), the sink closed, or a rate limit."""
    failures: int = 0
    """Delivery calls that raised, errors inside the sink, and for a networked sink failed connection attempts
    and lost connections."""
    connects: int = 0
    """Successful connections (MQTT)."""
    commands: int = 0
    """Command messages received (MQTT)."""
    charts: int = 0
    """Times the trading charts were rebuilt and logged (W&B live)."""
    init_failed: bool = False
    """Whether creating the destination failed, so every item is dropped (W&B live)."""


class BotMetrics:
    """Every Prometheus metric of one bot, updated from its events and a few direct helpers."""

    def __init__(self, registry: CollectorRegistry | None = None, *, bot_id: str, mode: str) -> None:
        """Register the metrics in `registry` (a new private registry when None) for `bot_id` in `mode`."""
        if not bot_id:
            raise ValueError("BotMetrics: bot_id must be a non-empty string")
        if not mode:
            raise ValueError("BotMetrics: mode must be a non-empty string (backtest, paper or live)")
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.bot_id = bot_id
        self.mode = mode
        self._base = (bot_id, mode)
        self._server: MetricsServer | None = None
        self._lock = threading.Lock()

        self._symbol = _BoundedLabel("symbol", 64)
        self._sink = _BoundedLabel("sink", 32)
        self._kind = _BoundedLabel("kind", 32)
        self._reason = _BoundedLabel("reason", 32)
        self._problem = _BoundedLabel("problem", 16)
        self._code = _BoundedLabel("code", 64)
        self._feature = _BoundedLabel("feature", 64)
        self._model = _BoundedLabel("model", 16)
        self._risk_state_label = _BoundedLabel("risk_state", 8, RISK_STATES)
        self._bot_state_label = _BoundedLabel("state", 16)

        base = ("bot_id", "mode")
        reg = self.registry

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(PREFIX + name, doc, (*base, *labels), registry=reg)

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(PREFIX + name, doc, (*base, *labels), registry=reg)

        # Account and liveness gauges appear with their first event: a 0 before that would read as a real value.
        self._equity = gauge("equity", "Account value in the quote currency.")
        self._cash = gauge("cash", "Quote currency held.")
        self._positions_value = gauge("positions_value", "Value of the open positions (quote).")
        self._realized = gauge("realized_pnl", "Realized profit after fees (quote).")
        self._unrealized = gauge("unrealized_pnl", "Profit of open positions at the mark (quote).")
        self._drawdown = gauge("drawdown_ratio", "Fall from the peak equity, as a fraction.")
        self._position = gauge("position", "Signed position in the base currency.", "symbol")

        self._orders = counter("orders_total", "Orders that entered a status.", "symbol", "side", "status")
        self._open_orders = gauge("open_orders", "Orders not yet in a final state.", "symbol")
        self._fills = counter("fills_total", "Fills (executions).", "symbol", "side")
        self._fill_notional = counter("fill_notional_total", "Traded notional (quote).", "symbol", "side")
        self._slippage = Histogram(
            PREFIX + "slippage_bps",
            "Adverse fill slippage against the decision price, in bps.",
            (*base, "symbol", "side"),
            buckets=SLIPPAGE_BUCKETS_BPS,
            registry=reg,
        )
        self._trades_closed = counter("trades_closed_total", "Closed round trips.", "symbol", "side", "outcome")

        self.decision_latency = Histogram(
            PREFIX + "decision_latency_seconds",
            "Candle received to order decided, in seconds.",
            base,
            buckets=LATENCY_BUCKETS_S,
            registry=reg,
        ).labels(*self._base)
        """Decision latency histogram: call ``.observe(seconds)`` (or use ``.time()``)."""
        self.inference_latency = Histogram(
            PREFIX + "inference_latency_seconds",
            "One ONNX policy run, in seconds.",
            base,
            buckets=LATENCY_BUCKETS_S,
            registry=reg,
        ).labels(*self._base)
        """Inference latency histogram: call ``.observe(seconds)`` (or use ``.time()``)."""

        self._staleness = gauge("data_staleness_seconds", "Age of the latest candle, in seconds.", "symbol")
        self._risk_state = gauge("risk_state", "1 for the current risk state, else 0.", "state")
        self._risk_halts = counter("risk_halts_total", "Transitions of the risk manager into halted.").labels(
            *self._base
        )
        self._risk_refusals = counter("risk_refusals_total", "Orders the risk manager refused.", "symbol", "reason")
        self._candles_refused = counter(
            "candles_refused_total", "Live candles the candle guard refused (never traded on).", "symbol", "problem"
        )
        self._discrepancies = counter(
            "reconciliation_discrepancies_total", "Ledger/venue mismatches found by reconciliation.", "kind"
        )

        self._drift_psi = gauge("feature_drift_psi", "PSI of a feature's live window against training.", "feature")
        self._drift_ks = gauge(
            "feature_drift_ks", "KS statistic of a feature's live window against training.", "feature"
        )
        self._model_age = gauge("model_age_days", "Days since the live model's training data ended.")

        self._shadow_equity = gauge("shadow_equity", "A shadow model's virtual book value.", "model")
        self._shadow_realized = gauge("shadow_realized_pnl", "A shadow model's realized profit after fees.", "model")
        self._shadow_agreement = gauge(
            "shadow_agreement_ratio", "Share of a shadow's decisions whose target equalled the live one.", "model"
        )
        self._shadow_orders = counter("shadow_orders_total", "Shadow would-be orders by status.", "model", "status")
        self._shadow_trades = counter(
            "shadow_trades_closed_total", "Shadow round trips by outcome.", "model", "outcome"
        )
        self._shadow_failures = counter("shadow_failures_total", "Shadow models dropped at run time.", "model")

        self._sink_depth = gauge("sink_queue_depth", "Events waiting in a sink's queue.", "sink")
        self._sink_dropped = counter("sink_dropped_total", "Events a slow or dead sink dropped.", "sink")
        self._sink_connected = gauge("sink_connected", "1 while a networked sink holds its connection.", "sink")
        self._sink_connect_failures = counter(
            "sink_connect_failures_total", "Failed connection attempts and lost connections of a sink.", "sink"
        )
        self._heartbeat_ts = gauge("heartbeat_timestamp_seconds", "Unix time of the latest heartbeat.")
        self._heartbeats = counter("heartbeats_total", "Heartbeats emitted.").labels(*self._base)
        self._uptime = gauge("uptime_seconds", "Seconds since the daemon started.")
        self._bot_state = gauge("bot_state", "1 for the engine's current state, else 0.", "state")
        self._alerts = counter("alerts_total", "Alerts raised.", "level", "code")
        self._events = counter("events_total", "Events observed, by type.", "type")

        self._positions: dict[str, Decimal] = {}
        self._open: dict[str, tuple[str, OrderStatus]] = {}
        self._open_counts: dict[str, int] = {}
        self._finished: OrderedDict[str, OrderStatus] = OrderedDict()
        self._current_risk_state: str | None = None
        self._current_bot_state: str | None = None
        for state in RISK_STATES:
            self._risk_state.labels(*self._base, state).set(0)
        # Counters with no event yet still export 0, so rate() panels show a flat line rather than "no data".
        self._risk_halts.inc(0)
        self._heartbeats.inc(0)

    # ----------------------------------------------------------------- events

    def count_event(self, kind: str) -> None:
        """Count one published event of type `kind` (bot.events' type names; anything else counts as other)."""
        self._events.labels(*self._base, kind if kind in EVENT_KINDS else OTHER).inc()

    def heartbeat(self, ts_s: float, uptime_s: float) -> None:
        """Record a heartbeat at Unix time `ts_s`."""
        self._heartbeat_ts.labels(*self._base).set(ts_s)
        self._heartbeats.inc()
        self._uptime.labels(*self._base).set(uptime_s)

    def status(self, state: str, risk_state: str, uptime_s: float) -> None:
        """Record the engine's state, its risk state and its uptime."""
        self._set_bot_state(state)
        self.set_risk_state(risk_state)
        self._uptime.labels(*self._base).set(uptime_s)

    def alert(self, level: str, code: str) -> None:
        """Count an alert; a `risk_<state>` alert also moves the risk state."""
        self._alerts.labels(*self._base, level, self._code(code)).inc()
        if code.startswith("risk_") and code[5:] in RISK_STATES:
            self.set_risk_state(code[5:])

    def risk_refusal(self, symbol: str, reason: str, risk_state: str) -> None:
        """Count an order the risk manager refused."""
        self._risk_refusals.labels(*self._base, self._symbol(symbol), self._reason(reason)).inc()
        self.set_risk_state(risk_state)

    def candle_refused(self, symbol: str, problem: str) -> None:
        """Count a live candle the candle guard refused (`adapters.candle_guard`), by its problem."""
        self._candles_refused.labels(*self._base, self._symbol(symbol), self._problem(problem)).inc()

    def order_update(self, client_order_id: str, symbol: str, side: str, status: OrderStatus) -> None:
        """Record an order's new status (the same transition seen twice counts once)."""
        order_id = client_order_id
        symbol = self._symbol(symbol)
        with self._lock:
            known = self._open.get(order_id)
            previous = known[1] if known is not None else self._finished.get(order_id)
            if previous is status:
                return  # the same transition published twice: count it once
            if status.is_final:
                if self._open.pop(order_id, None) is not None:
                    self._open_counts[symbol] -= 1
                self._finished[order_id] = status
                self._finished.move_to_end(order_id)
                while len(self._finished) > _FINISHED_ORDER_MEMORY:
                    self._finished.popitem(last=False)
            elif known is not None or len(self._open) < _OPEN_ORDER_LIMIT:
                self._open[order_id] = (symbol, status)
                if known is None:
                    self._open_counts[symbol] = self._open_counts.get(symbol, 0) + 1
            open_count = self._open_counts.get(symbol, 0)
        self._orders.labels(*self._base, symbol, side, status.value).inc()
        self._open_orders.labels(*self._base, symbol).set(open_count)

    def fill(
        self, symbol: str, side: str, signed_amount: Decimal, notional: Decimal, slippage_bps: float | None
    ) -> None:
        """Record a fill: `signed_amount` is + for a buy, − for a sell; slippage against the asked price."""
        symbol = self._symbol(symbol)
        self._fills.labels(*self._base, symbol, side).inc()
        self._fill_notional.labels(*self._base, symbol, side).inc(_float(notional))
        if slippage_bps is not None:
            self._slippage.labels(*self._base, symbol, side).observe(slippage_bps)
        with self._lock:
            position = self._positions.get(symbol, Decimal(0)) + signed_amount
            self._positions[symbol] = position
        self._position.labels(*self._base, symbol).set(_float(position))

    def equity(
        self,
        *,
        equity: Decimal,
        cash: Decimal,
        positions_value: Decimal,
        realized_pnl: Decimal,
        unrealized_pnl: Decimal,
        drawdown: float,
    ) -> None:
        """Record an equity snapshot."""
        base = self._base
        self._equity.labels(*base).set(_float(equity))
        self._cash.labels(*base).set(_float(cash))
        self._positions_value.labels(*base).set(_float(positions_value))
        self._realized.labels(*base).set(_float(realized_pnl))
        self._unrealized.labels(*base).set(_float(unrealized_pnl))
        self._drawdown.labels(*base).set(drawdown)

    def trade_closed(self, symbol: str, side: str, realized_pnl: Decimal) -> None:
        """Count a closed round trip by outcome."""
        outcome = "win" if realized_pnl > 0 else "loss" if realized_pnl < 0 else "flat"
        self._trades_closed.labels(*self._base, self._symbol(symbol), side, outcome).inc()

    def shadow_equity(self, model: str, equity: Decimal, realized_pnl: Decimal, agreement: float | None) -> None:
        """Record a shadow model's mark."""
        label = self._model(model)
        self._shadow_equity.labels(*self._base, label).set(_float(equity))
        self._shadow_realized.labels(*self._base, label).set(_float(realized_pnl))
        if agreement is not None:
            self._shadow_agreement.labels(*self._base, label).set(agreement)

    def shadow_order(self, model: str, status: str) -> None:
        """Count a shadow's would-be order entering `status`."""
        self._shadow_orders.labels(*self._base, self._model(model), status).inc()

    def shadow_trade_closed(self, model: str, realized_pnl: Decimal) -> None:
        """Count a shadow's closed round trip by outcome."""
        outcome = "win" if realized_pnl > 0 else "loss" if realized_pnl < 0 else "flat"
        self._shadow_trades.labels(*self._base, self._model(model), outcome).inc()

    def shadow_failed(self, model: str) -> None:
        """Count a shadow model dropped at run time."""
        self._shadow_failures.labels(*self._base, self._model(model)).inc()

    def _set_bot_state(self, state: str) -> None:
        label = self._bot_state_label(state)
        with self._lock:
            previous, self._current_bot_state = self._current_bot_state, label
        if previous is not None and previous != label:
            self._bot_state.labels(*self._base, previous).set(0)
        self._bot_state.labels(*self._base, label).set(1)

    # ----------------------------------------------------------------- direct helpers

    def set_risk_state(self, state: str) -> None:
        """Record the risk manager's state (active, reducing, halted); count each entry into halted."""
        label = self._risk_state_label(state)
        with self._lock:
            previous, self._current_risk_state = self._current_risk_state, label
        if previous == label:
            return
        if previous is not None:
            self._risk_state.labels(*self._base, previous).set(0)
        self._risk_state.labels(*self._base, label).set(1)
        if label == "halted":
            self._risk_halts.inc()

    def set_position(self, symbol: str, amount: Decimal | float) -> None:
        """Set the position of `symbol` (base currency, signed), e.g. after reconciling with the venue."""
        label = self._symbol(symbol)
        with self._lock:
            self._positions[label] = Decimal(str(amount)) if isinstance(amount, float) else amount
        self._position.labels(*self._base, label).set(_float(amount))

    def set_staleness(self, symbol: str, seconds: float) -> None:
        """Record how old the latest candle of `symbol` is, in seconds."""
        self._staleness.labels(*self._base, self._symbol(symbol)).set(seconds)

    def set_feature_drift(self, drift: Mapping[str, tuple[float, float]]) -> None:
        """Record each feature's drift figures, {feature: (psi, ks)} (bot.model.drift.DriftReport.gauges())."""
        for feature, (psi, ks) in drift.items():
            label = self._feature(feature)
            self._drift_psi.labels(*self._base, label).set(psi)
            self._drift_ks.labels(*self._base, label).set(ks)

    def set_model_age(self, days: float) -> None:
        """Record how many days ago the live model's training data ended."""
        self._model_age.labels(*self._base).set(days)

    def sink_queue_depth(self, sink: str, depth: int) -> None:
        """Record how many events wait in `sink`'s queue."""
        self._sink_depth.labels(*self._base, self._sink(sink)).set(depth)

    def sink_dropped(self, sink: str, count: int = 1) -> None:
        """Count events `sink` dropped because it was slow or dead."""
        self._sink_dropped.labels(*self._base, self._sink(sink)).inc(count)

    def sink_connected(self, sink: str, connected: bool) -> None:
        """Record whether `sink` holds its connection."""
        self._sink_connected.labels(*self._base, self._sink(sink)).set(1 if connected else 0)

    def sink_connect_failed(self, sink: str) -> None:
        """Count one failed connection attempt or lost connection of `sink`."""
        self._sink_connect_failures.labels(*self._base, self._sink(sink)).inc()

    def reconciliation_discrepancy(self, kind: str, count: int = 1) -> None:
        """Count ledger/venue mismatches of `kind` (e.g. missing_order, balance, position) found on reconcile."""
        self._discrepancies.labels(*self._base, self._kind(kind)).inc(count)

    # ----------------------------------------------------------------- exporter

    def start_http_server(self, port: int = DEFAULT_METRICS_PORT, addr: str = "127.0.0.1") -> int:
        """Serve these metrics on http://addr:port/metrics and return the bound port (0 picks a free one)."""
        if self._server is not None:
            raise RuntimeError(f"metrics exporter already running on port {self._server.port}")
        self._server = serve_metrics(self.registry, port, addr)
        return self._server.port

    def close(self) -> None:
        """Stop the exporter, if running."""
        server, self._server = self._server, None
        if server is not None:
            server.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
