"""Configuration of the ccxt venue: which exchange, how to talk to it, and where closed candles come from."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal
from urllib.parse import urlsplit

import ccxt

from adapters.ccxt.binance import BINANCE
from adapters.ccxt.profile import GENERIC, ExchangeProfile
from adapters.errors import FatalError

PROFILES: dict[str, ExchangeProfile] = {profile.exchange_id: profile for profile in (BINANCE,)}
"""The exchanges with a profile of their own (`adapters.ccxt.profile`); any other runs on `GENERIC`."""


def profile_for(exchange_id: str) -> ExchangeProfile:
    """Return the profile of a ccxt exchange id, or `GENERIC` when it has none."""
    return PROFILES.get(exchange_id, GENERIC)


@dataclass(frozen=True)
class RetryConfig:
    """Jittered exponential backoff for idempotent calls."""

    attempts: int = 4
    """Tries in all (1 = no retry)."""
    base_delay_s: float = 0.25
    """Upper bound of the first delay; doubles each retry."""
    max_delay_s: float = 10.0
    """Cap on any delay, including a venue's Retry-After."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retry.attempts must be >= 1, was {self.attempts}")
        if self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError(f"retry delays must be >= 0, were {self.base_delay_s}, {self.max_delay_s}")


@dataclass(frozen=True)
class CcxtConfig:
    """Which ccxt exchange to use and how to talk to it."""

    exchange_id: str = "binance"
    """A ccxt exchange id (`ccxt.exchanges`), e.g. binance, kraken, coinbase."""
    sandbox: bool = False
    """Use the exchange's testnet/sandbox URLs (ccxt `set_sandbox_mode`)."""
    timeout_ms: int = 10_000
    """ccxt's per-request timeout."""
    call_deadline_s: float = 60.0
    """Deadline of one adapter call, all its requests together (load_markets makes several)."""
    enable_rate_limit: bool = True
    """ccxt's built-in request throttling."""
    adjust_for_time_difference: bool = True
    """Sync to the exchange clock at load, and again after a timestamp (nonce) rejection."""
    options: dict[str, Any] = field(default_factory=dict)
    """Extra ccxt `options` (a profile's spot options: `adapters.ccxt.profile`)."""
    api_url_override: str | None = None
    """Send every API request to this base URL plus the original path (tests: a local exchange server)."""
    retry: RetryConfig = field(default_factory=RetryConfig)
    """Backoff for idempotent calls."""
    order_lookup_attempts: int = 4
    """Lookups by client order id after a submission with no answer, before giving up as unknown."""
    ohlcv_page_limit: int = 1000
    """Candles asked per fetch_ohlcv request."""
    poll_delay_s: float = 2.0
    """Candle polling: wait this long after a candle's close before asking for it."""
    poll_retry_s: float = 2.0
    """Candle polling: wait this long before asking again when the closed candle is not served yet."""
    stream: Literal["auto", "websocket", "poll"] = "poll"
    """Closed candles: `websocket` (ccxt.pro watch_ohlcv, an error where ccxt has none), `poll` (REST after each
    close) or `auto` (websocket where ccxt.pro offers watch_ohlcv for the exchange, else poll)."""
    stream_idle_s: float = 60.0
    """Websocket candles: with no update for this long, catch up over REST (and keep watching)."""

    def __post_init__(self) -> None:
        if self.timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be > 0, was {self.timeout_ms}")
        if not 1 <= self.ohlcv_page_limit <= 5000:
            raise ValueError(f"ohlcv_page_limit must be in 1..5000, was {self.ohlcv_page_limit}")
        if self.order_lookup_attempts < 1:
            raise ValueError(f"order_lookup_attempts must be >= 1, was {self.order_lookup_attempts}")
        if self.stream not in ("auto", "websocket", "poll"):
            raise ValueError(f"stream must be auto, websocket or poll, was {self.stream!r}")
        if self.stream_idle_s <= 0:
            raise ValueError(f"stream_idle_s must be > 0, was {self.stream_idle_s}")


CandleSource = Literal["websocket", "poll"]


def exchange_params(config: CcxtConfig) -> dict[str, Any]:
    """Return the constructor parameters a ccxt (or ccxt.pro) exchange gets from `config`, without keys."""
    options = dict(config.options)
    options.setdefault("adjustForTimeDifference", config.adjust_for_time_difference)
    return {"enableRateLimit": config.enable_rate_limit, "timeout": config.timeout_ms, "options": options}


def configure_urls(exchange: Any, config: CcxtConfig) -> None:
    """Point a ccxt exchange at its sandbox and/or `api_url_override`, as `config` asks."""
    if config.sandbox:
        if not exchange.urls.get("test"):
            raise FatalError(f"{config.exchange_id} has no sandbox/testnet URLs in ccxt: set sandbox=false")
        exchange.set_sandbox_mode(True)
    if config.api_url_override is not None:
        base = config.api_url_override.rstrip("/")
        exchange.urls["api"] = rewrite_urls(exchange.urls["api"], base)


def rewrite_urls(urls: Any, base: str) -> Any:
    """Point every URL in ccxt's `urls['api']` (nested dicts allowed) at `base`, keeping its path."""
    if isinstance(urls, str):
        return base + urlsplit(urls).path
    if isinstance(urls, dict):
        return {key: rewrite_urls(value, base) for key, value in urls.items()}
    return urls


def ccxt_pro() -> ModuleType:
    """Return the ccxt.pro module."""
    # Imported on first use: ccxt.pro's websocket classes cost ~6 MB that a polling daemon never needs (issue 6).
    return importlib.import_module("ccxt.pro")


def offers_watch_ohlcv(exchange_id: str) -> bool:
    """Return whether ccxt.pro streams candles (`watchOHLCV`) for an exchange."""
    pro = ccxt_pro()
    if exchange_id not in pro.exchanges:
        return False
    # `has` is filled in by the constructor; building an instance opens no connection.
    return bool(getattr(pro, exchange_id)().has.get("watchOHLCV"))


def candle_source(exchange_id: str, stream: str) -> CandleSource:
    """Return how `candles()` gets closed candles for a `stream` setting; raise FatalError if it cannot."""
    if stream == "poll":
        return "poll"
    offered = offers_watch_ohlcv(exchange_id)
    if stream == "websocket" and not offered:
        raise FatalError(
            f"stream=websocket: ccxt {ccxt.__version__} has no websocket candles (watchOHLCV) for {exchange_id}; "
            "use stream=auto or stream=poll"
        )
    return "websocket" if offered else "poll"
