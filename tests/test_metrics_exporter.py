"""Tests of monitoring/metrics.py: events to Prometheus metrics, the exporter, and a real Prometheus scraping it.

The events come from a short replay of real candles (the bundled BTC/USDT 1h sample) through the real
`PaperVenue` driven by a trivial moving-average rule; expected values are read back from the venue itself
(equity, position, orders, fills), not from the events the test emitted.
"""

from __future__ import annotations

import functools
import itertools
import re
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path

import pandas as pd
import pytest
import yaml
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

import monitoring.metrics as metrics_module
from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from adapters.paper.venue import PaperVenue
from adapters.types import Candle, ClientOrderId, OrderRequest, OrderStatus, OrderType, Side
from bot.events import (
    AlertEvent,
    EquityEvent,
    FillEvent,
    HeartbeatEvent,
    OrderEvent,
    RiskRefusalEvent,
    StatusEvent,
    TradeClosedEvent,
)
from bot.sinks.bus import observe_event
from monitoring.metrics import DEFAULT_METRICS_PORT, OTHER, BotMetrics
from tests.support.prometheus import PrometheusServer, sample_value

ROOT = Path(__file__).resolve().parents[1]
SYMBOL = "BTC/USDT"
ORDER_AMOUNT = Decimal("0.01")
SMA_BARS = 12
T0 = datetime(2025, 1, 1, tzinfo=UTC)


@cache
def _candles(bars: int) -> pd.DataFrame:
    return load_ohlcv(sample_path("BTC/USDT-1h")).iloc[-bars:]


@dataclass
class ReplayOutcome:
    """What the replay did, read back from the venue."""

    venue: PaperVenue
    bars: int
    orders_submitted: int
    orders_filled: int
    heartbeat_ts: datetime
    trades_closed: int


def replay_paper_bot(metrics: BotMetrics, bars: int = 300) -> ReplayOutcome:
    """Replay real candles through a PaperVenue with a moving-average rule, feeding `metrics` every event."""
    frame = _candles(bars)
    venue = PaperVenue()
    bot_id = metrics.bot_id
    emit = functools.partial(observe_event, metrics)
    closes: list[float] = []
    submitted: list[ClientOrderId] = []
    entry_cost = Decimal(0)
    realized = Decimal(0)
    trades_closed = 0
    entry_time: datetime | None = None
    heartbeat_ts = T0
    emit(
        StatusEvent(
            ts=frame.index[0].to_pydatetime(), bot_id=bot_id, state="running", risk_state="active", mode=metrics.mode
        )
    )
    for i, (ts, o, h, lo, c, v) in enumerate(frame.itertuples()):
        candle = Candle(SYMBOL, "1h", ts.to_pydatetime(), float(o), float(h), float(lo), float(c), float(v))
        now = candle.open_time + timedelta(hours=1)
        for fill in venue.book.on_candle(candle):
            order = venue.book.get_order(SYMBOL, fill.client_order_id)
            emit(
                FillEvent(
                    ts=now,
                    bot_id=bot_id,
                    trade_id=fill.trade_id,
                    client_order_id=fill.client_order_id,
                    symbol=SYMBOL,
                    side=fill.side,
                    amount=fill.amount,
                    price=fill.price,
                    fee=fill.fee,
                    fee_currency=fill.fee_currency,
                    requested_price=fill.requested_price,
                )
            )
            emit(
                OrderEvent(
                    ts=now,
                    bot_id=bot_id,
                    client_order_id=order.client_order_id,
                    symbol=SYMBOL,
                    side=order.side,
                    order_type=order.type,
                    amount=order.amount,
                    status=order.status,
                    filled=order.filled,
                    average_price=order.average_price,
                )
            )
            if fill.side is Side.BUY:
                entry_cost += fill.amount * fill.price + fill.fee
                entry_time = entry_time or now
            else:
                pnl = fill.amount * fill.price - fill.fee - entry_cost
                realized += pnl
                trades_closed += 1
                emit(
                    TradeClosedEvent(
                        ts=now,
                        bot_id=bot_id,
                        symbol=SYMBOL,
                        side=Side.BUY,
                        qty=fill.amount,
                        entry_price=entry_cost / fill.amount,
                        exit_price=fill.price,
                        realized_pnl=pnl,
                        fees=fill.fee,
                        duration_seconds=(now - (entry_time or now)).total_seconds(),
                    )
                )
                entry_cost, entry_time = Decimal(0), None
        closes.append(candle.close)
        started = time.perf_counter()
        position = venue.book.position(SYMBOL)
        want_long = len(closes) >= SMA_BARS and candle.close > sum(closes[-SMA_BARS:]) / SMA_BARS
        side = Side.BUY if want_long and position == 0 else Side.SELL if not want_long and position > 0 else None
        metrics.decision_latency.observe(time.perf_counter() - started)
        if side is not None and not venue.book.open_orders(SYMBOL):
            amount = ORDER_AMOUNT if side is Side.BUY else position
            request = OrderRequest(ClientOrderId(f"{bot_id}-{i}"), SYMBOL, side, OrderType.MARKET, amount)
            emit(
                OrderEvent(
                    ts=now,
                    bot_id=bot_id,
                    client_order_id=request.client_order_id,
                    symbol=SYMBOL,
                    side=side,
                    order_type=OrderType.MARKET,
                    amount=amount,
                    status=OrderStatus.NEW,
                )
            )
            order = venue.book.submit_order(request)
            submitted.append(request.client_order_id)
            emit(
                OrderEvent(
                    ts=now,
                    bot_id=bot_id,
                    client_order_id=order.client_order_id,
                    symbol=SYMBOL,
                    side=side,
                    order_type=order.type,
                    amount=order.amount,
                    status=order.status,
                )
            )
        equity = venue.book.equity()
        cash = venue.book.balances()["USDT"].total
        emit(
            EquityEvent(
                ts=now,
                bot_id=bot_id,
                equity=equity,
                cash=cash,
                positions_value=equity - cash,
                realized_pnl=realized,
                unrealized_pnl=equity - cash - entry_cost,
            )
        )
        metrics.set_staleness(SYMBOL, 0.0)
        if i % 10 == 0 or i == bars - 1:
            heartbeat_ts = now
            emit(HeartbeatEvent(ts=now, bot_id=bot_id, seq=i // 10, uptime_s=float(i * 3600)))
    filled = sum(venue.book.get_order(SYMBOL, c).status is OrderStatus.FILLED for c in submitted)
    return ReplayOutcome(venue, bars, len(submitted), filled, heartbeat_ts, trades_closed)


def _value(metrics: BotMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"bot_id": metrics.bot_id, "mode": metrics.mode, **labels})


# ----------------------------------------------------------------------------- in-process metrics


def test_replay_events_update_account_and_execution_metrics() -> None:
    metrics = BotMetrics(bot_id="unit-replay", mode="backtest")
    outcome = replay_paper_bot(metrics, bars=300)
    venue = outcome.venue
    fills = venue.book.fills
    assert outcome.orders_submitted >= 4 and fills, "the rule should trade on 300 real bars"

    assert _value(metrics, "aitrading_equity") == pytest.approx(float(venue.book.equity()), rel=1e-12)
    assert _value(metrics, "aitrading_position", symbol=SYMBOL) == pytest.approx(float(venue.book.position(SYMBOL)))
    new_total = sum(
        _value(metrics, "aitrading_orders_total", symbol=SYMBOL, side=s, status="new") or 0 for s in ("buy", "sell")
    )
    filled_total = sum(
        _value(metrics, "aitrading_orders_total", symbol=SYMBOL, side=s, status="filled") or 0 for s in ("buy", "sell")
    )
    assert new_total == outcome.orders_submitted
    assert filled_total == outcome.orders_filled
    assert _value(metrics, "aitrading_open_orders", symbol=SYMBOL) == len(venue.book.open_orders(SYMBOL))
    fills_by_side = Counter(f.side.value for f in fills)
    for side, count in fills_by_side.items():
        assert _value(metrics, "aitrading_fills_total", symbol=SYMBOL, side=side) == count
        notional = sum(float(f.amount * f.price) for f in fills if f.side.value == side)
        assert _value(metrics, "aitrading_fill_notional_total", symbol=SYMBOL, side=side) == pytest.approx(notional)
    # The paper venue charges slippage against the reference open on every market fill: all adverse, > 0 bps.
    slippage_count = sum(
        _value(metrics, "aitrading_slippage_bps_count", symbol=SYMBOL, side=s) or 0 for s in fills_by_side
    )
    assert slippage_count == len(fills)
    assert (_value(metrics, "aitrading_slippage_bps_bucket", symbol=SYMBOL, side="buy", le="0.0") or 0) == 0
    assert _value(metrics, "aitrading_decision_latency_seconds_count") == outcome.bars
    assert _value(metrics, "aitrading_heartbeat_timestamp_seconds") == outcome.heartbeat_ts.timestamp()
    closed = sum(
        _value(metrics, "aitrading_trades_closed_total", symbol=SYMBOL, side="buy", outcome=o) or 0
        for o in ("win", "loss", "flat")
    )
    assert closed == outcome.trades_closed
    assert _value(metrics, "aitrading_bot_state", state="running") == 1
    assert _value(metrics, "aitrading_events_total", type="equity") == outcome.bars


def test_order_transitions_are_counted_once_and_open_orders_follow_them() -> None:
    metrics = BotMetrics(bot_id="unit-orders", mode="paper")

    def order(cid: str, status: OrderStatus, symbol: str = SYMBOL) -> OrderEvent:
        return OrderEvent(
            ts=T0,
            bot_id="unit-orders",
            client_order_id=cid,
            symbol=symbol,
            side=Side.SELL,
            order_type=OrderType.LIMIT,
            amount=Decimal("0.5"),
            status=status,
            price=Decimal("100"),
        )

    for event in (
        order("a", OrderStatus.NEW),
        order("a", OrderStatus.OPEN),
        order("a", OrderStatus.OPEN),
        order("b", OrderStatus.NEW),
        order("c", OrderStatus.NEW, "ETH/BTC"),
    ):
        observe_event(metrics, event)
    assert _value(metrics, "aitrading_orders_total", symbol=SYMBOL, side="sell", status="open") == 1
    assert _value(metrics, "aitrading_open_orders", symbol=SYMBOL) == 2
    assert _value(metrics, "aitrading_open_orders", symbol="ETH/BTC") == 1

    for event in (order("a", OrderStatus.FILLED), order("a", OrderStatus.FILLED), order("b", OrderStatus.REJECTED)):
        observe_event(metrics, event)
    assert _value(metrics, "aitrading_orders_total", symbol=SYMBOL, side="sell", status="filled") == 1
    assert _value(metrics, "aitrading_orders_total", symbol=SYMBOL, side="sell", status="rejected") == 1
    assert _value(metrics, "aitrading_open_orders", symbol=SYMBOL) == 0
    assert _value(metrics, "aitrading_open_orders", symbol="ETH/BTC") == 1


def test_risk_halts_count_transitions_from_status_alert_and_refusal_events() -> None:
    metrics = BotMetrics(bot_id="unit-risk", mode="live")
    assert _value(metrics, "aitrading_risk_halts_total") == 0
    assert _value(metrics, "aitrading_risk_state", state="halted") == 0

    observe_event(metrics, StatusEvent(ts=T0, bot_id="unit-risk", state="running", risk_state="active", mode="live"))
    observe_event(
        metrics,
        AlertEvent(
            ts=T0,
            bot_id="unit-risk",
            level="critical",
            code="risk_halted",
            message="drawdown 0.21 reached the limit 0.20",
        ),
    )
    # The engine also reports the halted state in its status: the same halt, not a second one.
    observe_event(metrics, StatusEvent(ts=T0, bot_id="unit-risk", state="running", risk_state="halted", mode="live"))
    observe_event(
        metrics,
        RiskRefusalEvent(
            ts=T0, bot_id="unit-risk", symbol=SYMBOL, reason="halted", message="trading halted", risk_state="halted"
        ),
    )
    assert _value(metrics, "aitrading_risk_halts_total") == 1
    assert _value(metrics, "aitrading_risk_state", state="halted") == 1
    assert _value(metrics, "aitrading_risk_state", state="active") == 0
    assert _value(metrics, "aitrading_risk_refusals_total", symbol=SYMBOL, reason="halted") == 1
    assert _value(metrics, "aitrading_alerts_total", level="critical", code="risk_halted") == 1

    observe_event(metrics, AlertEvent(ts=T0, bot_id="unit-risk", level="info", code="risk_active", message="resumed"))
    metrics.set_risk_state("halted")
    assert _value(metrics, "aitrading_risk_halts_total") == 2


def test_direct_helpers_set_latency_staleness_sinks_and_reconciliation() -> None:
    metrics = BotMetrics(bot_id="unit-helpers", mode="paper")
    metrics.inference_latency.observe(0.00012)
    metrics.inference_latency.observe(0.003)
    metrics.decision_latency.observe(0.0004)
    metrics.set_staleness(SYMBOL, 75.5)
    metrics.sink_queue_depth("wandb", 17)
    metrics.sink_dropped("mqtt")
    metrics.sink_dropped("mqtt", 4)
    metrics.reconciliation_discrepancy("missing_order")
    metrics.set_position(SYMBOL, Decimal("-0.25"))

    assert _value(metrics, "aitrading_inference_latency_seconds_count") == 2
    assert _value(metrics, "aitrading_inference_latency_seconds_bucket", le="0.00025") == 1  # µs resolution
    assert _value(metrics, "aitrading_inference_latency_seconds_bucket", le="0.0025") == 1
    assert _value(metrics, "aitrading_inference_latency_seconds_bucket", le="0.005") == 2
    assert _value(metrics, "aitrading_decision_latency_seconds_bucket", le="0.0005") == 1
    assert _value(metrics, "aitrading_data_staleness_seconds", symbol=SYMBOL) == 75.5
    assert _value(metrics, "aitrading_sink_queue_depth", sink="wandb") == 17
    assert _value(metrics, "aitrading_sink_dropped_total", sink="mqtt") == 5
    assert _value(metrics, "aitrading_reconciliation_discrepancies_total", kind="missing_order") == 1
    assert _value(metrics, "aitrading_position", symbol=SYMBOL) == -0.25
    # A fill after reconciliation moves the reconciled position.
    observe_event(
        metrics,
        FillEvent(
            ts=T0,
            bot_id="unit-helpers",
            trade_id="7",
            client_order_id="x",
            symbol=SYMBOL,
            side=Side.BUY,
            amount=Decimal("0.05"),
            price=Decimal("100"),
            fee=Decimal("0"),
            fee_currency="USDT",
            slippage_bps=-1.5,
        ),
    )
    assert _value(metrics, "aitrading_position", symbol=SYMBOL) == pytest.approx(-0.2)
    assert _value(metrics, "aitrading_slippage_bps_bucket", symbol=SYMBOL, side="buy", le="-1.0") == 1
    assert _value(metrics, "aitrading_slippage_bps_bucket", symbol=SYMBOL, side="buy", le="-2.0") == 0


def test_account_gauges_are_absent_until_the_first_equity_event() -> None:
    metrics = BotMetrics(bot_id="unit-empty", mode="paper")
    assert _value(metrics, "aitrading_equity") is None
    assert _value(metrics, "aitrading_heartbeat_timestamp_seconds") is None
    observe_event(
        metrics,
        EquityEvent(
            ts=T0,
            bot_id="unit-empty",
            equity=Decimal("10000.5"),
            cash=Decimal("10000.5"),
            positions_value=Decimal(0),
            realized_pnl=Decimal("0.5"),
            unrealized_pnl=Decimal(0),
            drawdown=0.0,
        ),
    )
    assert _value(metrics, "aitrading_equity") == 10000.5
    assert _value(metrics, "aitrading_realized_pnl") == 0.5


def test_label_values_are_bounded_and_the_overflow_is_logged_once() -> None:
    metrics = BotMetrics(bot_id="unit-cardinality", mode="paper")
    with capture_logs() as logs:
        for i in range(100):
            metrics.set_staleness(f"COIN{i}/USDT", float(i))
    series = {
        s.labels["symbol"]
        for m in metrics.registry.collect()
        if m.name == "aitrading_data_staleness_seconds"
        for s in m.samples
    }
    assert len(series) == 65 and OTHER in series
    assert "COIN63/USDT" in series and "COIN64/USDT" not in series
    assert [e["event"] for e in logs].count("metric_label_overflow") == 1
    metrics.set_staleness("COIN3/USDT", 1.0)  # a value seen before the bound keeps its own series
    assert _value(metrics, "aitrading_data_staleness_seconds", symbol="COIN3/USDT") == 1.0


def test_bad_construction_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="bot_id"):
        BotMetrics(bot_id="", mode="paper")
    with pytest.raises(ValueError, match="mode"):
        BotMetrics(bot_id="x", mode="")
    registry = CollectorRegistry()
    BotMetrics(registry, bot_id="x", mode="paper")
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        BotMetrics(registry, bot_id="y", mode="paper")


def test_every_metric_is_documented_in_the_module_docstring() -> None:
    registered = {m.name for m in BotMetrics(bot_id="doc", mode="paper").registry.collect()}
    # prometheus_client reports counters without their _total suffix.
    names = re.findall(r"``(aitrading_[a-z_]+)``", metrics_module.__doc__ or "")
    documented = {re.sub(r"_total$", "", name) for name in names}
    assert registered == documented


# ----------------------------------------------------------------------------- exporter


def test_exporter_binds_an_ephemeral_port_serves_metrics_and_stops() -> None:
    metrics = BotMetrics(bot_id="unit-http", mode="paper")
    metrics.set_staleness(SYMBOL, 3.0)
    port = metrics.start_http_server(0)
    try:
        assert port > 0
        with pytest.raises(RuntimeError, match="already running"):
            metrics.start_http_server(0)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'aitrading_data_staleness_seconds{bot_id="unit-http",mode="paper",symbol="BTC/USDT"} 3.0' in body
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            BotMetrics(bot_id="other", mode="paper").start_http_server(port)
    finally:
        metrics.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    with socket.socket() as sock:  # the port is released (the client's connection may linger in TIME_WAIT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def test_deploy_scrape_config_targets_the_default_exporter_port() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["ai-trading-bot"]["static_configs"] for t in sc["targets"]]
    assert targets == [f"localhost:{DEFAULT_METRICS_PORT}"]
    assert metrics_module.BotMetrics.start_http_server.__defaults__ == (DEFAULT_METRICS_PORT, "127.0.0.1")


# ----------------------------------------------------------------------------- real Prometheus


@pytest.mark.integration
def test_prometheus_scrapes_a_replayed_paper_bot(prometheus: PrometheusServer) -> None:
    bot = "it-replay"
    sel = f'bot_id="{bot}",mode="paper"'
    with BotMetrics(bot_id=bot, mode="paper") as metrics:
        outcome = replay_paper_bot(metrics, bars=200)
        venue = outcome.venue
        metrics.start_http_server(prometheus.target_port)

        equity = prometheus.wait_for(f"aitrading_equity{{{sel}}}")
        assert sample_value(equity) == pytest.approx(float(venue.book.equity()), rel=1e-12)
        position = prometheus.query(f'aitrading_position{{{sel},symbol="{SYMBOL}"}}')
        assert sample_value(position) == pytest.approx(float(venue.book.position(SYMBOL)))
        by_status = {
            r["metric"]["status"]: float(r["value"][1])
            for r in prometheus.query(f"sum by (status) (aitrading_orders_total{{{sel}}})")
        }
        assert by_status["new"] == outcome.orders_submitted
        assert by_status["filled"] == outcome.orders_filled
        assert sample_value(prometheus.query(f"sum(aitrading_fills_total{{{sel}}})")) == len(venue.book.fills)
        buckets = prometheus.query(f"aitrading_decision_latency_seconds_bucket{{{sel}}}")
        counts = sorted((float(r["metric"]["le"]), float(r["value"][1])) for r in buckets)
        assert len(counts) == len(metrics_module.LATENCY_BUCKETS_S) + 1
        assert counts[-1] == (float("inf"), outcome.bars)
        assert all(a[1] <= b[1] for a, b in itertools.pairwise(counts))  # cumulative buckets
        heartbeat = prometheus.query(f"aitrading_heartbeat_timestamp_seconds{{{sel}}}")
        assert sample_value(heartbeat) == outcome.heartbeat_ts.timestamp()
        up = prometheus.query(f'up{{instance="127.0.0.1:{prometheus.target_port}"}}')
        assert sample_value(up) == 1


def test_the_metrics_count_every_event_type_of_the_schema_by_name() -> None:
    from bot.events import EVENT_TYPES
    from monitoring.metrics import EVENT_KINDS

    assert set(EVENT_TYPES) == set(EVENT_KINDS)
