"""The daemon application: its config schema, the start-up checks, and the three modes (backtest, paper, live).

- ``backtest``: replay candles from ``data.path`` (any loader format) over ``[bot.start, bot.end)`` through the
  decision core and the paper venue (`bot.backtest`); writes a run directory (config, equity curve, trades,
  summary with the evaluation table) and prints the table and the candles/s to stdout.
- ``paper`` (default): live candles from the exchange's public endpoints (ccxt, no key), paper venue fills, a
  ledger of its own (``paper.db``); restarts rebuild the paper account from the ledger.
- ``live``: real orders. Refused unless ``bot.confirm_live=true`` (or ``AI_TRADING_CONFIRM_LIVE=1``) AND API keys
  are present; at start it logs what it trades and under which limits.

Start-up refuses, with a clear message, a missing/corrupt/mismatched model card (exit 1) and a bad config or an
unconfirmed live start (exit 2).

Sinks of paper and live (`_sinks`): every engine event goes to the log, and when enabled to W&B (``wandb.enabled``),
to MQTT (``mqtt.enabled``: `bot.mqtt.MqttBridge`, whose commands the engine answers) and to the Prometheus metrics
(``metrics.enabled``: `monitoring.metrics.BotMetrics`, served on ``metrics.host:metrics.port`` while the daemon
runs). Each sink takes events without waiting (bounded queues that drop and count); all are closed on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

import structlog

from adapters.costs import CostModel
from adapters.errors import FatalError
from adapters.paper import PaperConfig, PaperVenue
from adapters.secrets import Credentials, load_credentials
from adapters.types import Market, OrderStatus, utc_from_ms
from adapters.venue import ExchangeAdapter
from bot.config import DataConfig, WandbConfig
from bot.engine import Engine, EventBus, LogSink, Notifier, TradingSettings, utc_now
from bot.events import Event
from bot.ledger import Ledger, default_ledger_url, split_symbol
from bot.model_card import ModelCardError
from bot.mqtt import MqttBridge, MqttConfig, MqttConfigError
from bot.orders import OrderManager
from bot.policy import OnnxPolicy, describe
from bot.risk import RiskConfig, RiskManager
from bot.scheduler import ScheduleConfig, build_scheduler
from bot.systemd import SystemdNotifier
from bot.wandb_live import WandbLiveSink, wandb_run_factory
from monitoring.metrics import DEFAULT_METRICS_PORT, BotMetrics
from monitoring.run_store import json_safe

if TYPE_CHECKING:
    from adapters.ccxt_adapter import CcxtConfig
    from bot.backtest import BacktestResult

log = structlog.get_logger()

CONFIRM_LIVE_ENV = "AI_TRADING_CONFIRM_LIVE"
"""Environment variable that confirms a live start, like bot.confirm_live=true."""
WANDB_PREFIX = "wandb:"
PAPER_HISTORY_LIMIT = 1_000
"""Finished orders and fills the paper daemon's venue keeps in memory (the ledger keeps them all)."""


@dataclass(frozen=True)
class MarketRules:
    """Lot and tick rules of the backtest market (paper and live take them from the exchange)."""

    amount_step: Decimal = Decimal("0.00001")
    """Amounts are rounded down to this step."""
    price_step: Decimal = Decimal("0.01")
    """Prices are rounded to this tick."""
    min_amount: Decimal = Decimal("0.00001")
    """Smallest order amount."""
    min_notional: Decimal = Decimal("5")
    """Smallest order value in the quote currency."""


@dataclass(frozen=True)
class BotConfig:
    """The trading daemon (config/bot/default.yaml)."""

    mode: Literal["backtest", "paper", "live"] = "paper"
    """backtest (replay + paper venue), paper (live data + paper venue) or live (real orders)."""
    model_path: str = "models/best_model.onnx"
    """Exported policy (card `<name>.json` beside it), or a W&B artifact `wandb:entity/project/name:alias`."""
    confirm_live: bool = False
    """Required (or AI_TRADING_CONFIRM_LIVE=1) for mode=live."""
    bot_id: str = "ai-trading"
    """Bot id in client order ids, events and logs."""
    symbols: tuple[str, ...] = ()
    """Symbols to trade; empty means data.symbol."""
    timeframe: str | None = None
    """Candle timeframe; null means data.timeframe."""
    start: str | None = None
    """Backtest: first candle (ISO date, UTC); null means data.start. Earlier candles warm the features up."""
    end: str | None = None
    """Backtest: candle to stop before (ISO date, UTC); null means data.end."""
    initial_balance: Decimal = Decimal("10000")
    """Paper and backtest: starting quote balance."""
    allow_short: bool = False
    """Let negative targets open shorts (spot venues cannot: clipped to flat)."""
    rebalance_band: float = 0.05
    """Re-trade an unchanged target only when the held fraction drifted more than this."""
    market: MarketRules = field(default_factory=MarketRules)
    """Backtest market rules."""
    risk: RiskConfig = field(default_factory=RiskConfig)
    """Risk limits (bot.risk.RiskConfig)."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Cron strings of the scheduled jobs."""
    ledger_url: str | None = None
    """Ledger database URL; null means <ledger_dir>/<mode>.db (backtests: in memory)."""
    ledger_dir: str = "state"
    """Directory of the default SQLite ledgers."""
    ledger_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    """SQLite durability: NORMAL survives kill -9; FULL also survives power loss (slower)."""
    backtest_ledger: bool = False
    """Write orders and fills of a backtest to a ledger too (slower; in memory unless ledger_url is set)."""
    order_timeout_s: float = 60.0
    """Cancel open orders older than this."""
    submit_timeout_s: float = 10.0
    """Deadline of one order submission."""
    cancel_on_exit: bool = False
    """Cancel open orders on SIGTERM/SIGINT."""
    shutdown_timeout_s: float = 10.0
    """Longest graceful shutdown before the engine is cancelled."""
    wandb_queue_size: int = 1000
    """Rows the W&B live sink buffers before dropping (and counting) new ones."""
    max_candles: int | None = None
    """Stop after this many candles (smoke tests, benchmarks); null runs until stopped."""
    stuck_after_s: float = 120.0
    """A candle handled for longer than this stops the systemd watchdog pings (systemd then restarts us)."""
    symbol_retry_s: float = 1.0
    """A symbol whose feed or orders fail is retried after this (doubling up to 60 s); other symbols trade on."""
    heartbeat_interval_s: float = 30.0
    """Seconds between heartbeat events (to MQTT `heartbeat` and the metrics); 0 turns them off."""

    def __post_init__(self) -> None:
        if self.heartbeat_interval_s < 0:
            raise ValueError(f"bot.heartbeat_interval_s: must be >= 0, was {self.heartbeat_interval_s}")


_BRIDGE_HEARTBEAT_S = MqttConfig.heartbeat_interval_s


@dataclass(frozen=True)
class MqttSinkConfig(MqttConfig):
    """The MQTT sink and control plane (config/mqtt/default.yaml): bot.mqtt.MqttConfig's keys plus `enabled`.

    The broker password is never a config value: it comes from $AI_TRADING_MQTT_PASSWORD or `password_file`. The
    daemon's own heartbeat (bot.heartbeat_interval_s) reaches the `heartbeat` topic through the event bus, so
    `heartbeat_interval_s` is not a key here.
    """

    bot_id: str = ""
    """Topic segment of this bot; empty means bot.bot_id."""
    enabled: bool = False
    """Publish every event to the broker and answer commands from it."""

    def __post_init__(self) -> None:
        if self.heartbeat_interval_s != _BRIDGE_HEARTBEAT_S:
            raise ValueError("mqtt.heartbeat_interval_s: not used by the daemon; set bot.heartbeat_interval_s")
        if self.bot_id:
            super().__post_init__()
        else:  # check every other key now; bot.bot_id fills in at start (and is checked then)
            dataclasses.replace(self, bot_id="bot")

    def bridge_config(self, bot_id: str) -> MqttConfig:
        """Return the bridge's config, with bot.bot_id when `bot_id` is empty and the bridge's heartbeat off."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(MqttConfig)}
        values.update(bot_id=self.bot_id or bot_id, heartbeat_interval_s=0.0)
        return MqttConfig(**values)


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus exporter (config/metrics/default.yaml); deploy/prometheus.yml scrapes 127.0.0.1:9108."""

    enabled: bool = False
    """Serve /metrics while paper or live trading runs."""
    host: str = "127.0.0.1"
    """Address the exporter binds to (keep it on loopback unless a firewall guards the port)."""
    port: int = DEFAULT_METRICS_PORT
    """Port of the exporter; 0 picks a free one."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"metrics.port: must be in 0..65535, was {self.port}")
        if not self.host:
            raise ValueError("metrics.host: must not be empty")


@dataclass(frozen=True)
class ExchangeConfig:
    """The ccxt exchange for market data (paper) and orders (live) (config/exchange/)."""

    exchange_id: str = "binance"
    """ccxt exchange id."""
    sandbox: bool = False
    """Use the exchange's testnet."""
    timeout_ms: int = 10_000
    """Per-request timeout."""
    api_url_override: str | None = None
    """Send API requests to this base URL (a local exchange server in tests)."""
    enable_rate_limit: bool = True
    """ccxt's request throttling."""
    spot_only: bool = True
    """Binance: load spot markets only (no futures/margin endpoints)."""
    poll_delay_s: float = 2.0
    """Ask for a candle this long after its close."""
    stream: Literal["auto", "websocket", "poll"] = "auto"
    """Closed candles by `websocket` (ccxt.pro), `poll` (REST) or `auto` (websocket where ccxt.pro offers it)."""
    secrets_file: str | None = None
    """TOML file with API keys (else AI_TRADING_<EXCHANGE>_API_KEY / _SECRET)."""


@dataclass(frozen=True)
class BotAppConfig:
    """Everything `ai-trading bot` reads from the composed config."""

    bot: BotConfig = field(default_factory=BotConfig)
    """The daemon."""
    exchange: ExchangeConfig = field(default_factory=ExchangeConfig)
    """The exchange."""
    data: DataConfig = field(default_factory=DataConfig)
    """Candles (backtest) and the default symbol/timeframe."""
    costs: CostModel = field(default_factory=CostModel)
    """Fees and slippage of the paper venue (the training env's)."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """W&B live logging."""
    mqtt: MqttSinkConfig = field(default_factory=MqttSinkConfig)
    """MQTT events and commands (paper and live)."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """Prometheus exporter (paper and live)."""
    output_dir: str = "outputs"
    """Run directories (backtest reports)."""
    run_name: str | None = None
    """Run directory name; a timestamped one when null."""
    log_level: str = "INFO"
    """Log level."""
    seed: int = 42
    """Unused by the daemon (kept so the shared root config converts)."""


class StartupError(Exception):
    """The daemon refuses to start; `exit_code` is 2 for configuration problems, 1 otherwise."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --------------------------------------------------------------------------------------------- start-up checks


def symbols_of(cfg: BotAppConfig) -> list[str]:
    """Return the traded symbols."""
    return list(cfg.bot.symbols) or [cfg.data.symbol]


def timeframe_of(cfg: BotAppConfig) -> str:
    """Return the traded timeframe."""
    return cfg.bot.timeframe or cfg.data.timeframe


def is_live_confirmed(cfg: BotAppConfig, env: Mapping[str, str]) -> bool:
    """Return whether a live start is confirmed by config or environment."""
    return cfg.bot.confirm_live or env.get(CONFIRM_LIVE_ENV, "").strip().lower() in ("1", "true", "yes")


def check_live_start(cfg: BotAppConfig, env: Mapping[str, str] | None = None) -> Credentials:
    """Refuse a live start without explicit confirmation and API keys; return the credentials."""
    environ = os.environ if env is None else env
    if not is_live_confirmed(cfg, environ):
        raise StartupError(
            "mode=live sends real orders: confirm with bot.confirm_live=true or "
            f"{CONFIRM_LIVE_ENV}=1 (use mode=paper to trade on paper)",
            exit_code=2,
        )
    secrets = Path(cfg.exchange.secrets_file) if cfg.exchange.secrets_file else None
    try:
        credentials = load_credentials(cfg.exchange.exchange_id, env=environ, secrets_file=secrets)
    except FatalError as e:
        raise StartupError(f"mode=live needs API keys: {e}", exit_code=2) from e
    assert credentials is not None
    return credentials


def resolve_model_path(cfg: BotAppConfig) -> Path:
    """Return the local ONNX path of bot.model_path, downloading a `wandb:` artifact reference first."""
    ref = cfg.bot.model_path
    if not ref.startswith(WANDB_PREFIX):
        return Path(ref)
    name = ref[len(WANDB_PREFIX) :]
    if name.count("/") != 2 or ":" not in name.rsplit("/", 1)[1]:
        raise StartupError(
            f"bot.model_path {ref!r}: a W&B reference looks like wandb:entity/project/name:alias", exit_code=2
        )
    from monitoring.wandb_server import server_status

    usable, why = server_status()
    if not usable:
        raise StartupError(f"bot.model_path {ref!r} needs a W&B server: {why}; or point bot.model_path at a file")
    try:
        import wandb

        artifact = wandb.Api().artifact(name)
        root = Path(artifact.download(root=str(Path(cfg.output_dir) / "artifacts" / name.replace(":", "-"))))
    except Exception as e:  # wandb raises many kinds (network, auth, missing artifact)
        raise StartupError(f"cannot fetch model artifact {name!r} from W&B: {e}") from e
    models = sorted(root.rglob("*.onnx"))
    if len(models) != 1:
        raise StartupError(f"W&B artifact {name!r} holds {len(models)} .onnx files under {root}; expected one")
    return models[0]


def load_policy(cfg: BotAppConfig) -> OnnxPolicy:
    """Load the policy with its card; a missing, corrupt or mismatched card stops the start."""
    path = resolve_model_path(cfg)
    try:
        return OnnxPolicy.load(path)
    except ModelCardError as e:
        raise StartupError(f"model refused: {e}") from e


def config_dict(cfg: BotAppConfig) -> dict[str, Any]:
    """Return the config as JSON-safe data (for run directories and W&B)."""
    result: dict[str, Any] = json_safe(dataclasses.asdict(cfg))
    return result


def _timestamp(value: str | None, key: str) -> datetime | None:
    if value is None:
        return None
    import pandas as pd  # backtest only: the paper and live daemon do without pandas (issue 6)

    try:
        stamp = pd.Timestamp(value)
    except ValueError as e:
        raise StartupError(f"{key}: not a date: {value!r} ({e})", exit_code=2) from None
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    result: datetime = stamp.to_pydatetime()
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


# --------------------------------------------------------------------------------------------- backtest


def run_backtest_mode(cfg: BotAppConfig, out: TextIO = sys.stdout) -> BacktestResult:
    """Run the backtest of the config, write its run directory, print the table and candles/s to `out`."""
    # Backtest only: pandas and the evaluation code stay out of the paper and live daemon (issue 6).
    import pandas as pd

    from adapters.ohlcv import load_ohlcv
    from adapters.sample_data import sample_path
    from bot.backtest import run_backtest
    from bot.metrics import format_table
    from monitoring.run_store import RunWriter, new_run_id

    symbols = symbols_of(cfg)
    if len(symbols) != 1:
        raise StartupError(f"bot.symbols: a backtest replays one symbol's candles, got {symbols}", exit_code=2)
    symbol = symbols[0]
    policy = load_policy(cfg)
    path = Path(cfg.data.path) if cfg.data.path else sample_path()
    try:
        frame = load_ohlcv(path, gaps=cfg.data.gaps)
    except (ValueError, OSError) as e:
        raise StartupError(f"data.path {path}: {e}") from e
    start = _timestamp(cfg.bot.start or cfg.data.start, "bot.start")
    end = _timestamp(cfg.bot.end or cfg.data.end, "bot.end")
    base, quote = split_symbol(symbol)
    rules = cfg.bot.market
    market = Market(symbol, base, quote, rules.amount_step, rules.price_step, rules.min_amount, rules.min_notional)
    ledger = None
    if cfg.bot.backtest_ledger:
        ledger = Ledger(cfg.bot.ledger_url or default_ledger_url("backtest", cfg.bot.ledger_dir))
    bus, sink = _sinks(cfg, policy, with_logs=False)
    try:
        result = run_backtest(
            frame,
            symbol=symbol,
            policy=policy,
            market=market,
            risk=RiskManager(cfg.bot.risk, bot_id=cfg.bot.bot_id),
            costs=cfg.costs,
            settings=trading_settings(cfg),
            initial_quote=cfg.bot.initial_balance,
            start=start,
            end=end,
            ledger=ledger,
            bus=bus,
        )
    finally:
        if sink is not None:
            sink.close()
        if ledger is not None:
            ledger.close()
    reports = result.baselines(cfg.costs, timeframe_of(cfg), float(cfg.bot.initial_balance))
    writer = RunWriter(cfg.output_dir, cfg.run_name or new_run_id("backtest"), config=config_dict(cfg))
    writer.write_trades(result.trade_records(), split="backtest")
    writer.write_frame(
        "equity-backtest",
        pd.DataFrame(
            {"equity": result.equity, "position": result.positions, "target": result.targets},
            index=result.frame.index,
        ),
    )
    writer.write_summary(
        {
            "mode": "backtest",
            "symbol": symbol,
            "timeframe": timeframe_of(cfg),
            "window": {"start": str(result.frame.index[0]), "end": str(result.frame.index[-1])},
            "model": describe(policy),
            "evaluation": {"backtest": {name: report.to_dict() for name, report in reports.items()}},
            "candles": result.candles,
            "candles_per_s": result.candles_per_s,
            "orders": len(result.orders),
            "fills": len(result.fills),
        }
    )
    writer.close()
    out.write(format_table(reports) + "\n")
    out.write(f"run directory: {writer.dir}\n")
    out.write(
        f"backtest: {result.candles} candles in {result.elapsed_s:.3f} s = {result.candles_per_s:,.0f} candles/s\n"
    )
    out.flush()
    return result


# --------------------------------------------------------------------------------------------- paper and live


class MetricsSink:
    """Feed every event to the Prometheus metrics (in-memory updates: never waits)."""

    def __init__(self, metrics: BotMetrics) -> None:
        """Update `metrics` from each published event."""
        self.metrics = metrics

    def publish(self, event: Event) -> None:
        """Update the metrics from `event`."""
        self.metrics.observe_event(event)


def _sinks(
    cfg: BotAppConfig, policy: OnnxPolicy, *, with_logs: bool = True, metrics: BotMetrics | None = None
) -> tuple[EventBus, WandbLiveSink | None]:
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


async def run_daemon(
    cfg: BotAppConfig,
    policy: OnnxPolicy,
    feed: ExchangeAdapter,
    *,
    clock: Callable[[], datetime] = utc_now,
    notifier: Notifier | None = None,
    install_signals: bool = True,
) -> Engine:
    """Trade until stopped: `feed` gives candles (and, live, takes orders); return the stopped engine."""
    mode = cfg.bot.mode
    symbols = symbols_of(cfg)
    mqtt_config: MqttConfig | None = None
    if cfg.mqtt.enabled:
        try:
            mqtt_config = cfg.mqtt.bridge_config(cfg.bot.bot_id)
        except MqttConfigError as e:
            raise StartupError(f"bad configuration: {e}", exit_code=2) from e
    url = cfg.bot.ledger_url or default_ledger_url(mode, cfg.bot.ledger_dir)
    ledger = await asyncio.to_thread(Ledger, url, synchronous=cfg.bot.ledger_synchronous)
    metrics = BotMetrics(bot_id=cfg.bot.bot_id, mode=mode) if cfg.metrics.enabled else None
    bus, sink = _sinks(cfg, policy, metrics=metrics)
    notifier = notifier or SystemdNotifier.from_env()
    try:
        all_markets = await feed.load_markets()
        missing = [s for s in symbols if s not in all_markets]
        if missing:
            raise StartupError(f"bot.symbols {missing} are not traded on {feed.name}", exit_code=2)
        venue: ExchangeAdapter
        if mode == "paper":
            paper = await asyncio.to_thread(
                restore_paper_account, ledger, cfg, {s: all_markets[s] for s in symbols}, clock()
            )
            venue = PaperVenue(paper, feed=feed)
        else:
            venue = feed
        risk = RiskManager(cfg.bot.risk, ledger, bot_id=cfg.bot.bot_id, emit=bus.publish)
        orders = OrderManager(
            ledger,
            venue,
            bot_id=cfg.bot.bot_id,
            clock=clock,
            order_timeout_s=cfg.bot.order_timeout_s,
            submit_timeout_s=cfg.bot.submit_timeout_s,
            emit=bus.publish,
        )
        interval = notifier.watchdog_interval_s if isinstance(notifier, SystemdNotifier) else None
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
            mode=mode,
            cancel_on_exit=cfg.bot.cancel_on_exit,
            max_candles=cfg.bot.max_candles,
            watchdog_interval_s=interval,
            stuck_after_s=cfg.bot.stuck_after_s,
            symbol_retry_s=cfg.bot.symbol_retry_s,
            metrics=metrics,
            heartbeat_interval_s=cfg.bot.heartbeat_interval_s or None,
        )
        log.info(
            "daemon_starting",
            mode=mode,
            venue=venue.name,
            symbols=symbols,
            timeframe=timeframe_of(cfg),
            model=str(policy.onnx_path),
            model_sha=policy.sha256,
            ledger=url,
            limits=json_safe(dataclasses.asdict(cfg.bot.risk)),
        )
        scheduler, _ = build_scheduler(
            {
                "equity_snapshot": (cfg.bot.schedule.equity_snapshot, engine.snapshot_equity),
                "reconciliation": (cfg.bot.schedule.reconciliation, engine.reconcile),
            }
        )
        loop = asyncio.get_running_loop()
        runner = asyncio.current_task()
        async with contextlib.AsyncExitStack() as stack:
            if metrics is not None:
                metrics.set_risk_state(risk.state.value)
                _start_exporter(metrics, cfg.metrics)
            if mqtt_config is not None:
                try:
                    bridge = MqttBridge(mqtt_config, engine, metrics=metrics, clock=clock)
                except MqttConfigError as e:
                    raise StartupError(f"bad configuration: {e}", exit_code=2) from e
                # Left after the engine stopped: the bridge flushes the last events, then marks the bot offline.
                await stack.enter_async_context(bridge)
                bus.add(bridge)
            if install_signals:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(signum, _on_signal, engine, runner, cfg.bot.shutdown_timeout_s, loop)
            scheduler.start()
            try:
                await engine.run()
            finally:
                scheduler.shutdown(wait=False)
                if install_signals:
                    for signum in (signal.SIGTERM, signal.SIGINT):
                        loop.remove_signal_handler(signum)
        return engine
    finally:
        if sink is not None:
            await asyncio.to_thread(sink.close, cfg.bot.shutdown_timeout_s / 2)
        if metrics is not None:
            # Stopping the HTTP server waits for its serve loop to notice: off the event loop.
            await asyncio.to_thread(metrics.close)
        await asyncio.to_thread(ledger.close)


def _start_exporter(metrics: BotMetrics, config: MetricsConfig) -> None:
    try:
        port = metrics.start_http_server(config.port, config.host)
    except OSError as e:
        raise StartupError(f"metrics: {e}") from e
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
) -> Engine:
    """Open the configured ccxt exchange (keys only live) and run the daemon on it.

    `clock_ms`/`sleep` replace the market clock of feed and engine (an accelerated market in benchmarks).
    """
    from adapters.ccxt_adapter import CcxtAdapter

    clock = utc_now if clock_ms is None else _datetime_clock(clock_ms)
    async with CcxtAdapter(ccxt_config_of(cfg), credentials, clock_ms=clock_ms, sleep=sleep) as adapter:
        return await run_daemon(cfg, policy, adapter, clock=clock)


def _datetime_clock(clock_ms: Callable[[], int]) -> Callable[[], datetime]:
    return lambda: utc_from_ms(clock_ms())


def ccxt_config_of(cfg: BotAppConfig) -> CcxtConfig:
    """Return the ccxt adapter's config for the configured exchange."""
    from adapters.ccxt_adapter import BINANCE_SPOT_OPTIONS, CcxtConfig

    ex = cfg.exchange
    options = dict(BINANCE_SPOT_OPTIONS) if ex.spot_only and ex.exchange_id == "binance" else {}
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


def run_mode(cfg: BotAppConfig, out: TextIO = sys.stdout) -> None:
    """Run the configured mode to its end; raise StartupError (or the failure) when it cannot."""
    if cfg.bot.mode == "backtest":
        run_backtest_mode(cfg, out)
        return
    credentials = None
    if cfg.bot.mode == "live":
        credentials = check_live_start(cfg)
        from monitoring.logging import register_secret

        for value in credentials.secret_values():
            register_secret(value)
    policy = load_policy(cfg)
    if cfg.bot.mode == "live":
        log.warning(
            "live_trading_start",
            exchange=cfg.exchange.exchange_id,
            symbols=symbols_of(cfg),
            limits=json_safe(dataclasses.asdict(cfg.bot.risk)),
            model_sha=policy.sha256,
        )
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(run_exchange_daemon(cfg, policy, credentials))
