"""One wiring module: what the config implies, and the components each mode (backtest, paper, live) is built of.

- paper and live (`open_ledger`, `metrics_of`, `sinks_of`, `mqtt_config_of`, then `build_trading`): ledger →
  venue (the paper venue over the exchange's public feed, rebuilt from the ledger; or the exchange itself) → risk
  manager (state written off the event loop) → the bot's own book (`bot.capital`) → order manager → engine →
  model health → scheduled jobs (`bot.schedule`) → MQTT bridge. `bot.daemon` starts, runs and closes them.
- backtest (`backtest_market`, `trading_settings`, `sinks_of`, then `build_backtest`): the paper venue over a
  replay feed, the same order manager and engine, which `bot.backtest.run` drives candle by candle.

The start-up checks that refuse a start live in `bot.startup`; the errors in `bot.errors`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from adapters.costs import CostModel
from adapters.paper.config import PaperConfig
from adapters.paper.venue import CandleFeed, PaperVenue
from adapters.types import Market, OrderStatus, split_symbol
from adapters.venue import ExchangeAdapter
from bot.app_config import BotAppConfig
from bot.clock import MarketClock
from bot.engine.core import Engine, MarkListener
from bot.engine.decision import TradingSettings
from bot.engine.scheduler import Job, build_scheduler
from bot.engine.state import Notifier
from bot.engine.valuation import account_currency
from bot.errors import ConfigError
from bot.ledger.schema import default_ledger_url
from bot.ledger.store import Ledger
from bot.model.features import FeatureSource
from bot.model.health import ModelHealth
from bot.model.policy import OnnxPolicy
from bot.orders.book import Book, CapitalConfig
from bot.orders.manager import OrderManager
from bot.risk import RiskManager, StateWriter
from bot.shadow.model import ShadowModel
from bot.shadow.pool import ShadowPool
from bot.sinks.bus import EventBus, LogSink, MetricsSink
from bot.sinks.daily_report import DailyReportJob
from bot.sinks.mqtt import MqttBridge, MqttConfig, MqttConfigError
from bot.sinks.wandb_live import WandbLiveSink, wandb_run_factory
from bot.systemd import SystemdNotifier
from monitoring.metrics import BotMetrics
from monitoring.run_store import json_safe

if TYPE_CHECKING:
    from adapters.ccxt.config import CcxtConfig

log = structlog.get_logger()


def symbols_of(cfg: BotAppConfig) -> list[str]:
    """Return the traded symbols."""
    return list(cfg.bot.symbols) or [cfg.data.symbol]


def timeframe_of(cfg: BotAppConfig) -> str:
    """Return the traded timeframe."""
    return cfg.bot.timeframe or cfg.data.timeframe


def config_dict(cfg: BotAppConfig) -> dict[str, Any]:
    """Return the config as JSON-safe data (for run directories and W&B)."""
    result: dict[str, Any] = json_safe(dataclasses.asdict(cfg))
    return result


def trading_settings(cfg: BotAppConfig) -> TradingSettings:
    """Return the decision core's settings."""
    return TradingSettings(
        bot_id=cfg.bot.bot_id,
        timeframe=timeframe_of(cfg),
        allocation=1.0 / len(symbols_of(cfg)),
        allow_short=cfg.bot.allow_short,
        rebalance_band=cfg.bot.rebalance_band,
    )


def sinks_of(
    cfg: BotAppConfig, policy: OnnxPolicy, *, with_logs: bool = True, metrics: BotMetrics | None = None
) -> tuple[EventBus, WandbLiveSink | None]:
    """Return the event bus of the config's sinks (log, metrics, W&B) and the W&B sink to close, if any."""
    bus = EventBus([LogSink()] if with_logs else [])
    if metrics is not None:
        bus.add(MetricsSink(metrics))
    sink = None
    if cfg.wandb.enabled:
        factory = wandb_run_factory(cfg.wandb, run_config=config_dict(cfg), model_sha=policy.sha256, name=cfg.run_name)
        sink = WandbLiveSink(factory, queue_size=cfg.bot.wandb_queue_size, model_sha=policy.sha256)
        sink.start()
        bus.add(sink)
    return bus, sink


def backtest_market(cfg: BotAppConfig, symbol: str) -> Market:
    """Return the backtest market of `symbol` from `bot.market` (paper and live read it from the exchange)."""
    base, quote = split_symbol(symbol)
    rules = cfg.bot.market
    return Market(symbol, base, quote, rules.amount_step, rules.price_step, rules.min_amount, rules.min_notional)


def paper_account(market: Market, initial_quote: Decimal, costs: CostModel, settings: TradingSettings) -> PaperConfig:
    """The simulated account a backtest trades: `initial_quote` of the market's quote, the run's costs."""
    return PaperConfig(
        initial_balances={market.quote: initial_quote},
        markets=(market,),
        costs=costs,
        allow_short=settings.allow_short,
    )


@dataclass
class BacktestParts:
    """The components of a backtest, wired: the paper venue over the replay feed, the order manager, the engine."""

    venue: PaperVenue
    orders: OrderManager
    engine: Engine


def build_backtest(
    feed: CandleFeed,
    ledger: Ledger,
    *,
    symbol: str,
    policy: OnnxPolicy,
    market: Market,
    risk: RiskManager,
    costs: CostModel,
    settings: TradingSettings,
    initial_quote: Decimal,
    clock: MarketClock,
    bus: EventBus,
    features: FeatureSource,
    on_marked: MarkListener,
) -> BacktestParts:
    """Build the paper venue, order manager and engine a backtest replays `feed` through (`bot.backtest.run`).

    The same order manager and engine as paper and live, over `ledger`; the bot's book holds `initial_quote`.
    Events are built only when `bus` has a sink. Ledger calls run inline (no worker thread: nothing else waits),
    and the engine keeps market time (`clock` follows the candles); orders never time out on the wall clock.
    """
    venue = PaperVenue(paper_account(market, initial_quote, costs, settings), feed=feed)
    publishing = bool(bus.sinks)
    orders = OrderManager(
        ledger,
        venue,
        bot_id=settings.bot_id,
        book=Book(CapitalConfig(quote=initial_quote), market.quote),
        clock=clock,
        emit=bus.publish if publishing else None,
        on_trade_closed=lambda t: risk.on_trade_closed(t.symbol, t.realized_pnl, t.closed_at),
        inline_db=True,
        quiet=True,
    )
    engine = Engine(
        venue=venue,
        orders=orders,
        policy=policy,
        risk=risk,
        costs=costs,
        settings=settings,
        symbols=[symbol],
        bus=bus,
        clock=clock,
        mode="backtest",
        on_candle=clock.follow,
        features=lambda _: features,
        on_marked=on_marked,
    )
    engine.timeout_check_s = 0  # market orders fill at the next candle; no wall-clock timeout task
    return BacktestParts(venue, orders, engine)


PAPER_HISTORY_LIMIT = 1_000
"""Finished orders and fills the paper daemon's venue keeps in memory (the ledger keeps them all)."""


def restore_paper_account(
    ledger: Ledger, cfg: BotAppConfig, markets: Mapping[str, Market], clock: datetime
) -> PaperConfig:
    """Return the paper venue's config, its balances rebuilt from the ledger's fills after a restart.

    Orders the ledger still holds open died with the previous process's in-memory venue: they are closed as
    cancelled (never filled further), so reconciliation finds ledger and venue in agreement.
    """
    for order in ledger.orders():
        if not order.status.is_final:
            ledger.update_order(
                order.client_order_id,
                OrderStatus.CANCELLED,
                ts=clock,
                expected_from=order.status,
                reason="paper venue restarted: resting orders are lost with it",
            )
            log.warning(
                "paper_order_closed_on_restart", client_order_id=order.client_order_id, status=order.status.value
            )
    # Fill ids are the ledger's idempotency key: a new in-memory venue must not reuse the old one's.
    fills = ledger.fills()
    last_trade = max((int(f.trade_id) for f in fills if f.trade_id.isdigit()), default=0)
    last_order = max(
        (int(o.venue_order_id) for o in ledger.orders() if o.venue_order_id is not None and o.venue_order_id.isdigit()),
        default=0,
    )
    quote = split_symbol(symbols_of(cfg)[0])[1]
    balances: dict[str, Decimal] = {quote: cfg.bot.initial_balance}
    for currency, flow in ledger.currency_flows().items():
        balances[currency] = balances.get(currency, Decimal(0)) + flow
    balances = {c: max(v, Decimal(0)) for c, v in balances.items()}
    return PaperConfig(
        initial_balances=balances,
        markets=tuple(markets.values()),
        costs=cfg.costs,
        allow_short=cfg.bot.allow_short,
        name="paper",
        first_trade_id=last_trade + 1,
        first_order_id=last_order + 1,
        history_limit=PAPER_HISTORY_LIMIT,
    )


@dataclass
class TradingParts:
    """The components of a paper or live daemon, wired."""

    venue: ExchangeAdapter
    risk: RiskManager
    writer: StateWriter
    book: Book
    orders: OrderManager
    engine: Engine
    health: ModelHealth
    scheduler: AsyncIOScheduler
    """The scheduled jobs (bot.schedule), not started."""
    bridge: MqttBridge | None
    """The MQTT bridge answering commands with the engine (mqtt.enabled), not connected."""


async def build_trading(
    cfg: BotAppConfig,
    policy: OnnxPolicy,
    feed: ExchangeAdapter,
    ledger: Ledger,
    markets: Mapping[str, Market],
    *,
    bus: EventBus,
    clock: Callable[[], datetime],
    notifier: Notifier,
    metrics: BotMetrics | None,
    wandb_sink: WandbLiveSink | None = None,
    shadows: Sequence[tuple[str, OnnxPolicy]] = (),
    mqtt: MqttConfig | None = None,
) -> TradingParts:
    """Build venue, risk, book, order manager, engine, model health, scheduled jobs and the MQTT bridge (with
    `mqtt`) of a paper (`feed` gives candles, paper fills) or live (`feed` is the exchange) daemon over `ledger`."""
    symbols = symbols_of(cfg)
    venue: ExchangeAdapter
    if cfg.bot.mode == "paper":
        paper = await asyncio.to_thread(restore_paper_account, ledger, cfg, markets, clock())
        venue = PaperVenue(paper, feed=feed, candle_guard=cfg.bot.candle_guard)
    else:
        venue = feed
    # Risk state is written to SQLite by a worker thread, never on the event loop.
    writer = StateWriter(ledger)
    risk = RiskManager(cfg.bot.risk, ledger, bot_id=cfg.bot.bot_id, emit=bus.publish, writer=writer)
    # The bot trades its allocation (bot.capital): its position is its own fills, never the account's coins.
    book = await asyncio.to_thread(Book.from_ledger, ledger, cfg.bot.capital, account_currency(symbols))
    orders = OrderManager(
        ledger,
        venue,
        bot_id=cfg.bot.bot_id,
        book=book,
        clock=clock,
        order_timeout_s=cfg.bot.order_timeout_s,
        submit_timeout_s=cfg.bot.submit_timeout_s,
        lookup=cfg.bot.order_lookup,
        emit=bus.publish,
        on_trade_closed=lambda t: risk.on_trade_closed(t.symbol, t.realized_pnl, t.closed_at),
    )
    # Drift of the live features against the card's training distribution, and the model's age (bot.drift.*).
    health = ModelHealth(
        policy.card,
        cfg.bot.drift,
        bot_id=cfg.bot.bot_id,
        emit=bus.publish,
        max_age_days=cfg.bot.model_max_age_days,
        stale_action=cfg.bot.model_stale_action,
        reduce_only=risk.reduce_only,
        gauges=metrics,
        record=None if wandb_sink is None else wandb_sink.log_metrics,
        clock=clock,
    )
    interval = notifier.watchdog_interval_s if isinstance(notifier, SystemdNotifier) else None
    pool = shadow_pool(cfg, shadows, markets, ledger=ledger, bus=bus, clock=clock, metrics=metrics) if shadows else None
    engine = Engine(
        venue=venue,
        orders=orders,
        policy=policy,
        risk=risk,
        costs=cfg.costs,
        settings=trading_settings(cfg),
        symbols=symbols,
        bus=bus,
        notifier=notifier,
        clock=clock,
        mode=cfg.bot.mode,
        cancel_on_exit=cfg.bot.cancel_on_exit,
        max_candles=cfg.bot.max_candles,
        watchdog_interval_s=interval,
        stuck_after_s=cfg.bot.stuck_after_s,
        symbol_retry_s=cfg.bot.symbol_retry_s,
        metrics=metrics,
        heartbeat_interval_s=cfg.bot.heartbeat_interval_s or None,
        observe_features=health.observe,
        candle_guard=cfg.bot.candle_guard,
        on_reanchor=venue.reanchor_candle_guards if isinstance(venue, PaperVenue) else None,
        shadows=pool,
        promote_position=cfg.bot.promote_position,
        on_model_change=lambda p: health.use_card(p.card),
    )
    scheduler = scheduled_jobs(cfg, engine, health, feed, ledger, bus=bus, clock=clock)
    bridge = None
    if mqtt is not None:
        try:
            bridge = MqttBridge(mqtt, engine.commands, metrics=metrics, clock=clock)
        except MqttConfigError as e:
            raise ConfigError(f"bad configuration: {e}") from e
    return TradingParts(venue, risk, writer, book, orders, engine, health, scheduler, bridge)


def open_ledger(cfg: BotAppConfig) -> tuple[Ledger, str]:
    """Open (creating and migrating) the mode's ledger; return it and its URL."""
    url = cfg.bot.ledger_url or default_ledger_url(cfg.bot.mode, cfg.bot.ledger_dir)
    return Ledger(url, synchronous=cfg.bot.ledger_synchronous), url


def metrics_of(cfg: BotAppConfig) -> BotMetrics | None:
    """Return the Prometheus metrics of the daemon (metrics.enabled), not yet served."""
    return BotMetrics(bot_id=cfg.bot.bot_id, mode=cfg.bot.mode) if cfg.metrics.enabled else None


def mqtt_config_of(cfg: BotAppConfig) -> MqttConfig | None:
    """Return the MQTT bridge's config (mqtt.enabled), checked before anything is opened."""
    if not cfg.mqtt.enabled:
        return None
    try:
        return cfg.mqtt.bridge_config(cfg.bot.bot_id)
    except MqttConfigError as e:
        raise ConfigError(f"bad configuration: {e}") from e


def scheduled_jobs(
    cfg: BotAppConfig,
    engine: Engine,
    health: ModelHealth,
    feed: ExchangeAdapter,
    ledger: Ledger,
    *,
    bus: EventBus,
    clock: Callable[[], datetime],
) -> AsyncIOScheduler:
    """Return the (unstarted) scheduler of the daemon's jobs, each on its cron string of bot.schedule."""
    scheduler, _ = build_scheduler(
        {
            "equity_snapshot": (cfg.bot.schedule.equity_snapshot, engine.snapshot_equity),
            "reconciliation": (cfg.bot.schedule.reconciliation, engine.reconcile),
            "feature_drift": (cfg.bot.drift.schedule, health.check_drift),
            "model_staleness": (cfg.bot.schedule.model_staleness, health.check_staleness),
            "clock_sync": _clock_sync_job(cfg.bot.schedule.clock_sync, feed),
            "daily_report": (
                cfg.bot.schedule.daily_report,
                DailyReportJob(ledger, bot_id=cfg.bot.bot_id, output_dir=cfg.output_dir, bus=bus, clock=clock),
            ),
        }
    )
    return scheduler


@runtime_checkable
class ClockSynced(Protocol):
    """A venue that measures its clock against ours (`CcxtAdapter`): the engine runs on the venue's time."""

    async def sync_clock(self) -> int:
        """Measure again; return local minus venue in ms."""
        ...


def _clock_sync_job(schedule: str, feed: ExchangeAdapter) -> tuple[str, Job]:
    """`bot.schedule.clock_sync` for a venue that measures its clock (ccxt); off for one that cannot (paper)."""
    if isinstance(feed, ClockSynced):
        return schedule, feed.sync_clock
    return "", _no_job


async def _no_job() -> None:
    """The job of a schedule entry that is off."""


def shadow_pool(
    cfg: BotAppConfig,
    shadows: Sequence[tuple[str, OnnxPolicy]],
    markets: Mapping[str, Market],
    *,
    ledger: Ledger | None,
    bus: EventBus,
    clock: Callable[[], datetime],
    metrics: BotMetrics | None,
) -> ShadowPool:
    """Return the pool of `shadows`, each deciding like the live engine (its settings, risk limits and costs) on
    a virtual book of the paper venue's fill model."""
    symbols = symbols_of(cfg)
    models = [
        ShadowModel(
            name,
            policy,
            markets={s: markets[s] for s in symbols},
            costs=cfg.costs,
            settings=trading_settings(cfg),
            risk=cfg.bot.risk,
            account=account_currency(symbols),
        )
        for name, policy in shadows
    ]
    return ShadowPool(
        models,
        ledger=ledger,
        bot_id=cfg.bot.bot_id,
        emit=bus.publish,
        session=clock(),
        gauges=metrics,
        queue_size=cfg.bot.shadow_queue_size,
    )


def ccxt_config_of(cfg: BotAppConfig) -> CcxtConfig:
    """Return the ccxt adapter's config for the configured exchange."""
    from adapters.ccxt.config import CcxtConfig, profile_for

    ex = cfg.exchange
    options = profile_for(ex.exchange_id).options(spot_only=ex.spot_only)
    return CcxtConfig(
        exchange_id=ex.exchange_id,
        sandbox=ex.sandbox,
        timeout_ms=ex.timeout_ms,
        enable_rate_limit=ex.enable_rate_limit,
        options=options,
        api_url_override=ex.api_url_override,
        poll_delay_s=ex.poll_delay_s,
        stream=ex.stream,
    )
