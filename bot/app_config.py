"""The daemon's config schema: `BotAppConfig` and its sections (bot, exchange, MQTT sink, metrics exporter).

The YAML lives in `config/`; `bot.__main__` converts the composed config to `BotAppConfig` once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from adapters.candle_guard import CandleGuardConfig
from adapters.costs import CostModel
from adapters.types import split_symbol, timeframe_seconds
from bot.config import DataConfig, WandbConfig, check_named
from bot.engine.scheduler import ScheduleConfig
from bot.model.drift import DriftConfig
from bot.orders.book import CapitalConfig
from bot.orders.manager import LookupConfig
from bot.risk import RiskConfig
from bot.sinks.mqtt import MqttConfig
from monitoring.metrics import DEFAULT_METRICS_PORT


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

    def __post_init__(self) -> None:
        for name in ("amount_step", "price_step", "min_amount", "min_notional"):
            value = getattr(self, name)
            if not (value.is_finite() and value >= 0):
                raise ValueError(f"bot.market.{name}: must be >= 0, was {value}")


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
    capital: CapitalConfig = field(default_factory=CapitalConfig)
    """The allocation the bot trades: quote budget and base already assigned to it (bot.orders.book.CapitalConfig)."""
    order_lookup: LookupConfig = field(default_factory=LookupConfig)
    """How an order whose outcome is unknown is looked for before it counts as never placed (bot.orders.manager)."""
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
    drift: DriftConfig = field(default_factory=DriftConfig)
    """Feature drift monitoring against the model card's training distribution (bot.model.drift.DriftConfig)."""
    candle_guard: CandleGuardConfig = field(default_factory=CandleGuardConfig)
    """Live candles refused and never traded on: invalid, duplicate, out of order, spikes (adapters.candle_guard)."""
    model_max_age_days: float | None = None
    """Days after the end of the model's training data past which it is stale (an alert); null: never."""
    model_stale_action: Literal["alert", "reduce", "refuse"] = "alert"
    """A stale model: alert only, also move risk to REDUCING (reduce), or refuse to start (refuse, exit 2)."""
    shadow_models: tuple[str, ...] = ()
    """Paper and live: models (paths or `wandb:` references) run beside the live policy on virtual books."""
    promote_position: Literal["keep", "flatten"] = "keep"
    """What `promote` does with the live position: keep it for the new policy, or flatten it first."""
    shadow_queue_size: int = 1024
    """Traded candles waiting for the shadow models; a full queue drops (and counts) them."""

    def __post_init__(self) -> None:
        for symbol in self.symbols:
            check_named("bot.symbols", split_symbol, symbol)
        if self.timeframe is not None:
            check_named("bot.timeframe", timeframe_seconds, self.timeframe)
        if not 0 <= self.rebalance_band < 1:
            raise ValueError(f"bot.rebalance_band: must be in [0, 1), was {self.rebalance_band}")
        if not (self.initial_balance.is_finite() and self.initial_balance > 0):
            raise ValueError(f"bot.initial_balance: must be a finite number > 0, was {self.initial_balance}")
        for name in ("order_timeout_s", "submit_timeout_s", "shutdown_timeout_s", "stuck_after_s", "symbol_retry_s"):
            value = getattr(self, name)
            if not value > 0:  # NaN too
                raise ValueError(f"bot.{name}: must be > 0 seconds, was {value}")
        if self.wandb_queue_size < 1:
            raise ValueError(f"bot.wandb_queue_size: must be >= 1, was {self.wandb_queue_size}")
        if self.max_candles is not None and self.max_candles < 1:
            raise ValueError(f"bot.max_candles: must be >= 1 or null, was {self.max_candles}")
        if self.shadow_queue_size < 1:
            raise ValueError(f"bot.shadow_queue_size: must be >= 1, was {self.shadow_queue_size}")
        if self.model_max_age_days is not None and not self.model_max_age_days >= 0:
            raise ValueError(f"bot.model_max_age_days: must be >= 0 or null, was {self.model_max_age_days}")
        if self.heartbeat_interval_s < 0:
            raise ValueError(f"bot.heartbeat_interval_s: must be >= 0, was {self.heartbeat_interval_s}")


_BRIDGE_HEARTBEAT_S = MqttConfig.heartbeat_interval_s


@dataclass(frozen=True)
class MqttSinkConfig(MqttConfig):
    """The MQTT sink and control plane (config/mqtt/default.yaml): bot.sinks.mqtt.MqttConfig's keys plus `enabled`.

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
