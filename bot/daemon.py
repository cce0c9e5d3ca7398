"""The paper and live daemon: start the components `bot.wiring` builds (ledger, sinks, venue, risk, book, orders,
engine, scheduled jobs, MQTT bridge), run them with the signals until stopped, and close them in order.

- ``paper``: live candles from the exchange's public endpoints (ccxt, no key), paper venue fills, a ledger of
  its own (``paper.db``); restarts rebuild the paper account from the ledger.
- ``live``: real orders, on the ccxt exchange with API keys (`bot.startup.check_live_start` guards the start).

Scheduled jobs (`bot.engine.scheduler`, cron strings in ``bot.schedule``): equity snapshot, reconciliation, and the
daily report of the previous UTC day (`bot.sinks.daily_report`, into ``<output_dir>/reports/<bot_id>/<day>/``).

Sinks: every engine event goes to the log, and when enabled to W&B (``wandb.enabled``), to MQTT (``mqtt.enabled``:
`bot.sinks.mqtt.MqttBridge`, whose commands the engine answers) and to the Prometheus metrics (``metrics.enabled``:
`monitoring.metrics.BotMetrics`, served on ``metrics.host:metrics.port`` while the daemon runs). Each sink takes
events without waiting (bounded queues that drop and count); all are closed on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import structlog

from adapters.secrets import Credentials
from adapters.types import utc_from_ms
from adapters.venue import ExchangeAdapter
from bot.app_config import BotAppConfig, MetricsConfig
from bot.clock import utc_now
from bot.engine.core import Engine
from bot.engine.state import Notifier
from bot.errors import ConfigError, ModelRefused
from bot.events import AlertEvent
from bot.model.policy import OnnxPolicy
from bot.model.staleness import StaleModelError
from bot.orders.manager import OrderManager
from bot.risk import StateWriter
from bot.sinks.wandb_live import stop_stalled_wandb_service
from bot.startup import load_shadows, unkept_promotion
from bot.systemd import SystemdNotifier
from bot.wiring import (
    build_trading,
    ccxt_config_of,
    metrics_of,
    mqtt_config_of,
    open_ledger,
    sinks_of,
    symbols_of,
    timeframe_of,
)
from monitoring.metrics import BotMetrics
from monitoring.run_store import json_safe

log = structlog.get_logger()


IO_WORKERS = 4
"""Threads for the daemon's blocking calls (`asyncio.to_thread`: ledger writes, model loads, reports, closing)."""

_pooled_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def install_io_pool(loop: asyncio.AbstractEventLoop, workers: int = IO_WORKERS) -> None:
    """Give `loop` a default executor of `workers` threads, every one started now (once per loop).

    asyncio's own default pool starts a thread whenever a call finds none idle, up to cpu + 4: a daemon then gained
    a thread hours in, the first time two blocking calls overlapped, which a soak cannot tell from a leak. With
    the threads started up front, the daemon's thread count is fixed from READY on."""
    if loop in _pooled_loops:
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="daemon-io")
    started = threading.Barrier(workers + 1)
    for _ in range(workers):  # none is idle while all wait: each call starts a thread
        pool.submit(started.wait)
    started.wait()
    loop.set_default_executor(pool)  # asyncio.run shuts it down with the loop
    _pooled_loops.add(loop)


async def run_daemon(
    cfg: BotAppConfig,
    policy: OnnxPolicy,
    feed: ExchangeAdapter,
    *,
    clock: Callable[[], datetime] = utc_now,
    notifier: Notifier | None = None,
    install_signals: bool = True,
    shadows: Sequence[tuple[str, OnnxPolicy]] | None = None,
) -> Engine:
    """Trade until stopped: `feed` gives candles (and, live, takes orders); return the stopped engine.

    `shadows` are the loaded bot.shadow_models (`bot.startup.load_shadows`); None loads them here."""
    install_io_pool(asyncio.get_running_loop())
    mode = cfg.bot.mode
    symbols = symbols_of(cfg)
    mqtt_config = mqtt_config_of(cfg)
    if shadows is None:
        # A shadow model that cannot run refuses the start here, before the ledger or any sink is opened.
        shadows = await asyncio.to_thread(load_shadows, cfg, policy, timeframe=timeframe_of(cfg))
    ledger, url = await asyncio.to_thread(open_ledger, cfg)
    metrics = metrics_of(cfg)
    bus, sink = sinks_of(cfg, policy, metrics=metrics)
    notifier = notifier or SystemdNotifier.from_env()
    writer: StateWriter | None = None
    orders: OrderManager | None = None
    try:
        all_markets = await feed.load_markets()
        missing = [s for s in symbols if s not in all_markets]
        if missing:
            raise ConfigError(f"bot.symbols {missing} are not traded on {feed.name}")
        parts = await build_trading(
            cfg,
            policy,
            feed,
            ledger,
            {s: all_markets[s] for s in symbols},
            bus=bus,
            clock=clock,
            notifier=notifier,
            metrics=metrics,
            wandb_sink=sink,
            shadows=shadows,
            mqtt=mqtt_config,
        )
        writer, orders, engine, venue, risk = parts.writer, parts.orders, parts.engine, parts.venue, parts.risk
        try:
            parts.health.start()
        except StaleModelError as e:
            raise ModelRefused(str(e)) from None
        unkept = await asyncio.to_thread(unkept_promotion, ledger, policy)
        if unkept is not None:
            log.warning("promotion_not_configured", detail=unkept)
            bus.publish(
                AlertEvent(
                    ts=clock(), bot_id=cfg.bot.bot_id, level="warning", code="promotion_not_configured", message=unkept
                )
            )
        log.info(
            "daemon_starting",
            mode=mode,
            venue=venue.name,
            symbols=symbols,
            timeframe=timeframe_of(cfg),
            model=str(policy.onnx_path),
            model_sha=policy.sha256,
            model_run_id=policy.card.run_id,
            shadow_models={name: str(p.onnx_path) for name, p in shadows},
            ledger=url,
            limits=json_safe(dataclasses.asdict(cfg.bot.risk)),
        )
        scheduler = parts.scheduler
        loop = asyncio.get_running_loop()
        runner = asyncio.current_task()
        async with contextlib.AsyncExitStack() as stack:
            if metrics is not None:
                metrics.set_risk_state(risk.state.value)
                _start_exporter(metrics, cfg.metrics)
            if parts.bridge is not None:
                # Left after the engine stopped: the bridge flushes the last events, then marks the bot offline.
                await stack.enter_async_context(parts.bridge)
                bus.add(parts.bridge)
            if install_signals:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(signum, _on_signal, engine, runner, cfg.bot.shutdown_timeout_s, loop)
            scheduler.start()
            if engine.shadows is not None:
                engine.shadows.start()
                stack.push_async_callback(engine.shadows.aclose)
            try:
                await engine.run()
            finally:
                scheduler.shutdown(wait=False)
                if install_signals:
                    for signum in (signal.SIGTERM, signal.SIGINT):
                        loop.remove_signal_handler(signum)
        return engine
    finally:
        if orders is not None:
            await orders.aclose()
        if writer is not None:
            await asyncio.to_thread(writer.close)
        if sink is not None and not await asyncio.to_thread(sink.close, cfg.bot.shutdown_timeout_s / 2):
            # W&B's own exit hook would wait for its stalled service with no deadline (wandb 0.31): stop it.
            stop_stalled_wandb_service()
        if metrics is not None:
            # Stopping the HTTP server waits for its serve loop to notice: off the event loop.
            await asyncio.to_thread(metrics.close)
        await asyncio.to_thread(ledger.close)


def _start_exporter(metrics: BotMetrics, config: MetricsConfig) -> None:
    try:
        port = metrics.start_http_server(config.port, config.host)
    except OSError as e:
        raise ConfigError(f"metrics: {e}") from e
    log.info("metrics_exporter_serving", url=f"http://{config.host}:{port}/metrics")


def _on_signal(
    engine: Engine, runner: asyncio.Task[Any] | None, timeout_s: float, loop: asyncio.AbstractEventLoop
) -> None:
    log.info("signal_received", state=engine.state)
    engine.request_stop()
    if runner is not None:
        # A graceful stop has `timeout_s`; then the run is cancelled (its finally blocks still flush).
        loop.call_later(timeout_s, runner.cancel)


async def run_exchange_daemon(
    cfg: BotAppConfig,
    policy: OnnxPolicy,
    credentials: Credentials | None,
    *,
    clock_ms: Callable[[], int] | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    shadows: Sequence[tuple[str, OnnxPolicy]] | None = None,
) -> Engine:
    """Open the configured ccxt exchange (keys only live) and run the daemon on it.

    `clock_ms`/`sleep` replace the market clock of feed and engine (an accelerated market in benchmarks).
    """
    from adapters.ccxt.adapter import CcxtAdapter

    async with CcxtAdapter(ccxt_config_of(cfg), credentials, clock_ms=clock_ms, sleep=sleep) as adapter:
        # The engine keeps the venue's time (the adapter's measure of it), as the candle feed does: a skewed
        # machine clock must not make a fresh candle look stale, nor move the daily loss reset.
        return await run_daemon(cfg, policy, adapter, clock=_datetime_clock(adapter.venue_time_ms), shadows=shadows)


def _datetime_clock(clock_ms: Callable[[], int]) -> Callable[[], datetime]:
    return lambda: utc_from_ms(clock_ms())
