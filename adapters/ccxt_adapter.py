"""The ccxt venue: any ccxt exchange behind the ExchangeAdapter protocol, with errors mapped at the boundary.

ccxt's dicts and exceptions stop here: everything leaving this module is a domain type from adapters.types or
an error from adapters.errors. Retries (jittered exponential backoff) apply to idempotent calls only; an order
whose submission times out is resolved by looking it up by client order id, never by sending it again.
Closed candles come from REST polling or, with `stream`, from ccxt.pro's `watch_ohlcv`, REST filling what a
disconnect made the stream miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import partial
from types import ModuleType, TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import urlsplit

import ccxt
import ccxt.async_support as ccxt_async
import structlog

from adapters.errors import (
    AdapterError,
    DataError,
    FatalError,
    InsufficientFunds,
    InvalidOrder,
    OrderNotFound,
    OrderRejected,
    OrderStateUnknown,
    TransientError,
)
from adapters.secrets import Credentials, env_names
from adapters.types import (
    Balance,
    Candle,
    ClientOrderId,
    Fill,
    Market,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    VenueOrderId,
    utc_from_ms,
)

log = structlog.get_logger()

T = TypeVar("T")

# Binance spot without the calls a spot bot does not need: with the defaults and a key, load_markets also
# calls signed /sapi/v1/capital/config/getall and the futures exchangeInfo endpoints.
BINANCE_SPOT_OPTIONS: dict[str, Any] = {
    "defaultType": "spot",
    "fetchMarkets": {"types": ["spot"]},
    "fetchCurrencies": False,
    "fetchMargins": False,
    "warnOnFetchOpenOrdersWithoutSymbol": False,
}


class OrderNotPlaced(TransientError):
    """An order whose submission failed is confirmed absent at the venue: resend it with the same client order id."""


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
    """Extra ccxt `options` (e.g. BINANCE_SPOT_OPTIONS)."""
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


def _ccxt_pro() -> ModuleType:
    # Imported on first use: ccxt.pro's websocket classes cost ~6 MB that a polling daemon never needs (issue 6).
    return importlib.import_module("ccxt.pro")


def offers_watch_ohlcv(exchange_id: str) -> bool:
    """Return whether ccxt.pro streams candles (`watchOHLCV`) for an exchange."""
    ccxt_pro = _ccxt_pro()
    if exchange_id not in ccxt_pro.exchanges:
        return False
    # `has` is filled in by the constructor; building an instance opens no connection.
    return bool(getattr(ccxt_pro, exchange_id)().has.get("watchOHLCV"))


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


def _is_order_action(action: str) -> bool:
    return action.startswith(("create_order", "cancel_order"))


def map_ccxt_error(e: Exception, action: str) -> AdapterError:
    """Translate a ccxt exception into the adapter error that says what the caller should do."""
    message = f"{action} failed: {type(e).__name__}: {e}"
    # Narrowest first: ccxt's OrderNotFound is an InvalidOrder, InsufficientFunds and BadSymbol are ExchangeErrors,
    # InvalidNonce and the rate-limit errors are NetworkErrors.
    if isinstance(e, ccxt.OrderNotFound):
        return OrderNotFound(message)
    if isinstance(e, ccxt.InsufficientFunds):
        return InsufficientFunds(message)
    if isinstance(e, ccxt.InvalidOrder | ccxt.BadSymbol):
        return InvalidOrder(message)
    if isinstance(e, ccxt.AuthenticationError | ccxt.AccountNotEnabled | ccxt.NotSupported):
        return FatalError(message)
    if isinstance(e, ccxt.InvalidNonce):
        return TransientError(message + " (clock skew: the adapter re-syncs with the exchange clock)")
    if isinstance(e, ccxt.OperationFailed | TimeoutError):
        # NetworkError (timeouts, 5xx, 429/418, maintenance), BadResponse, CancelPending.
        return TransientError(message)
    if isinstance(e, ccxt.BadRequest | ccxt.OperationRejected):
        return OrderRejected(message) if _is_order_action(action) else FatalError(message)
    if isinstance(e, ccxt.ExchangeError) and _is_order_action(action):
        return OrderRejected(message)
    return FatalError(message)


def _dec(value: Any, what: str) -> Decimal:
    """Decimal from a ccxt number: floats via their shortest repr, so 0.1 stays 0.1."""
    if isinstance(value, bool) or value is None:
        raise DataError(f"{what}: expected a number, got {value!r}")
    try:
        result = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
    except InvalidOperation:
        raise DataError(f"{what}: not a number: {value!r}") from None
    if not result.is_finite():
        raise DataError(f"{what}: not a finite number: {value!r}")
    return result


def _dec_or_none(value: Any, what: str) -> Decimal | None:
    return None if value is None else _dec(value, what)


def timeframe_ms(timeframe: str) -> int:
    """Length of a ccxt timeframe (`1m`, `1h`, `1d`, ...) in milliseconds."""
    try:
        seconds = int(ccxt.Exchange.parse_timeframe(timeframe))
    except (ValueError, TypeError, KeyError, IndexError, ccxt.NotSupported) as e:
        raise DataError(f"unknown timeframe {timeframe!r}: use e.g. 1m, 5m, 1h, 1d") from e
    if seconds <= 0:
        raise DataError(f"unknown timeframe {timeframe!r}: use e.g. 1m, 5m, 1h, 1d")
    return seconds * 1000


_CCXT_STATUS = {
    "closed": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELLED,
    "cancelled": OrderStatus.CANCELLED,
    "expired": OrderStatus.CANCELLED,
    "rejected": OrderStatus.REJECTED,
}
_CCXT_ORDER_TYPE = {"market": OrderType.MARKET, "limit": OrderType.LIMIT, "limit_maker": OrderType.LIMIT}


def order_from_ccxt(raw: Mapping[str, Any], *, client_order_id: ClientOrderId | None = None) -> Order:
    """Convert a ccxt order structure to an Order."""
    ident = raw.get("clientOrderId") or client_order_id
    what = f"order {ident or raw.get('id')}"
    if not ident:
        raise DataError(f"{what}: the venue reported no client order id")
    try:
        side = Side(str(raw.get("side")).lower())
        order_type = _CCXT_ORDER_TYPE[str(raw.get("type")).lower()]
    except (ValueError, KeyError):
        raise DataError(f"{what}: unsupported side/type {raw.get('side')!r}/{raw.get('type')!r}") from None
    filled = _dec(raw.get("filled") or 0, f"{what} filled")
    ccxt_status = raw.get("status")
    if ccxt_status == "open":
        status = OrderStatus.PARTIALLY_FILLED if filled > 0 else OrderStatus.OPEN
    else:
        status = _CCXT_STATUS.get(str(ccxt_status), OrderStatus.UNKNOWN)
    fee = Decimal(0)
    fee_currency: str | None = None
    fees = raw.get("fees") or ([raw["fee"]] if raw.get("fee") else [])
    for item in fees:
        if item and item.get("cost") is not None:
            fee += _dec(item["cost"], f"{what} fee")
            fee_currency = item.get("currency") or fee_currency
    timestamp = raw.get("timestamp")
    updated = raw.get("lastUpdateTimestamp") or raw.get("lastTradeTimestamp") or timestamp
    average = raw.get("average")
    return Order(
        client_order_id=ClientOrderId(str(ident)),
        symbol=str(raw.get("symbol")),
        side=side,
        type=order_type,
        amount=_dec(raw.get("amount"), f"{what} amount"),
        status=status,
        price=_dec_or_none(raw.get("price"), f"{what} price") if order_type is OrderType.LIMIT else None,
        venue_order_id=VenueOrderId(str(raw["id"])) if raw.get("id") is not None else None,
        filled=filled,
        average_price=_dec(average, f"{what} average") if average else None,
        fee=fee,
        fee_currency=fee_currency,
        created_at=utc_from_ms(int(timestamp)) if timestamp else None,
        updated_at=utc_from_ms(int(updated)) if updated else None,
    )


def fill_from_ccxt(raw: Mapping[str, Any], client_order_id: ClientOrderId) -> Fill:
    """Convert a ccxt trade structure to a Fill."""
    what = f"trade {raw.get('id')}"
    fee = raw.get("fee") or {}
    timestamp = raw.get("timestamp")
    if timestamp is None:
        raise DataError(f"{what}: the venue reported no timestamp")
    try:
        side = Side(str(raw.get("side")).lower())
    except ValueError:
        raise DataError(f"{what}: unsupported side {raw.get('side')!r}") from None
    try:
        return Fill(
            trade_id=str(raw["id"]),
            client_order_id=client_order_id,
            symbol=str(raw.get("symbol")),
            side=side,
            amount=_dec(raw.get("amount"), f"{what} amount"),
            price=_dec(raw.get("price"), f"{what} price"),
            fee=_dec(fee.get("cost") or 0, f"{what} fee"),
            fee_currency=str(fee.get("currency") or ""),
            timestamp=utc_from_ms(int(timestamp)),
            venue_order_id=VenueOrderId(str(raw["order"])) if raw.get("order") is not None else None,
            is_maker=raw.get("takerOrMaker") == "maker",
        )
    except ValueError as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{what}: {e}") from e


class CcxtAdapter:
    """A ccxt exchange as an ExchangeAdapter: `async with CcxtAdapter(config, credentials) as venue: ...`."""

    def __init__(
        self,
        config: CcxtConfig,
        credentials: Credentials | None = None,
        *,
        clock_ms: Callable[[], int] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if config.exchange_id not in ccxt.exchanges:
            raise FatalError(
                f"unknown exchange id {config.exchange_id!r}: not a ccxt exchange "
                f"(ccxt {ccxt.__version__} knows {len(ccxt.exchanges)}, e.g. binance, kraken, coinbase, okx)"
            )
        self.name = config.exchange_id
        self._config = config
        self._credentials = credentials
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._sleep = sleep or asyncio.sleep
        self._rng = rng or random.Random()
        self._exchange: Any = None
        self._markets: dict[str, Market] = {}
        self._cid_by_venue_id: dict[str, ClientOrderId] = {}
        self._log = log.bind(venue=self.name)
        self.candle_source: CandleSource = candle_source(config.exchange_id, config.stream)
        """Where `candles()` gets closed candles: ccxt.pro websockets or REST polling."""
        self._ws_exchange: Any = None
        self._ws_closed: dict[tuple[str, str], set[int]] = {}

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._exchange = self._make_exchange()
        try:
            self._configure_urls(self._exchange)
            await self.load_markets()
            if self.candle_source == "websocket":
                self._ws_exchange = self._make_ws_exchange()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        try:
            if self._ws_exchange is not None:
                ws_exchange, self._ws_exchange = self._ws_exchange, None
                await ws_exchange.close()
        finally:
            if self._exchange is not None:
                exchange, self._exchange = self._exchange, None
                await exchange.close()

    def _make_exchange(self) -> Any:
        cfg = self._config
        options = dict(cfg.options)
        options.setdefault("adjustForTimeDifference", cfg.adjust_for_time_difference)
        params: dict[str, Any] = {
            "enableRateLimit": cfg.enable_rate_limit,
            "timeout": cfg.timeout_ms,
            "options": options,
        }
        if self._credentials is not None:
            params |= {"apiKey": self._credentials.api_key, "secret": self._credentials.secret}
            if self._credentials.password:
                params["password"] = self._credentials.password
        return getattr(ccxt_async, cfg.exchange_id)(params)

    def _configure_urls(self, exchange: Any) -> None:
        cfg = self._config
        if cfg.sandbox:
            if not exchange.urls.get("test"):
                raise FatalError(f"{cfg.exchange_id} has no sandbox/testnet URLs in ccxt: set sandbox=false")
            exchange.set_sandbox_mode(True)
        if cfg.api_url_override is not None:
            base = cfg.api_url_override.rstrip("/")
            exchange.urls["api"] = _rewrite_urls(exchange.urls["api"], base)

    def _make_ws_exchange(self) -> Any:
        """A ccxt.pro instance for public candle streams only (no keys), sharing the loaded markets."""
        cfg = self._config
        options = dict(cfg.options)
        options.setdefault("adjustForTimeDifference", cfg.adjust_for_time_difference)
        ws = getattr(_ccxt_pro(), cfg.exchange_id)(
            {"enableRateLimit": cfg.enable_rate_limit, "timeout": cfg.timeout_ms, "options": options}
        )
        self._configure_urls(ws)
        if cfg.api_url_override is not None and ws.urls["api"].get("ws") is not None:
            parts = urlsplit(cfg.api_url_override.rstrip("/"))
            scheme = "wss" if parts.scheme == "https" else "ws"
            ws.urls["api"]["ws"] = _rewrite_urls(ws.urls["api"]["ws"], f"{scheme}://{parts.netloc}{parts.path}")
        ws.set_markets(list(self.exchange.markets.values()), self.exchange.currencies)
        self._hook_closed_flag(ws)
        return ws

    def _hook_closed_flag(self, ws: Any) -> None:
        """Record the exchange's own "candle closed" flag, which ccxt's watch_ohlcv drops.

        Binance marks the last update of a kline with `k.x = true`; ccxt keeps only OHLCV. Without the flag a candle
        counts as closed once a newer one appears, which for a quiet market can be a while after the close.
        """
        handle_ohlcv = getattr(ws, "handle_ohlcv", None)
        if handle_ohlcv is None:
            return

        def handle_ohlcv_with_flag(client: Any, message: Any) -> Any:
            kline = message.get("k") if isinstance(message, dict) else None
            if isinstance(kline, dict) and kline.get("x") is True and kline.get("t") is not None:
                key = (str(kline.get("s")), str(kline.get("i")))
                self._ws_closed.setdefault(key, set()).add(int(kline["t"]))
            return handle_ohlcv(client, message)

        ws.handle_ohlcv = handle_ohlcv_with_flag

    @property
    def exchange(self) -> Any:
        """The underlying ccxt exchange (for the few calls the protocol lacks); only inside `async with`."""
        if self._exchange is None:
            raise FatalError(f"{self.name}: use the adapter inside `async with` before calling it")
        return self._exchange

    # --- the one place where ccxt is called ----------------------------------------------------------------

    def _backoff_s(self, attempt: int, error: BaseException | None = None) -> float:
        retry = self._config.retry
        cap = min(retry.max_delay_s, retry.base_delay_s * (2**attempt))
        delay = self._rng.uniform(0, cap)
        if isinstance(error, ccxt.DDoSProtection | ccxt.RateLimitExceeded):
            # ccxt keeps the headers of the last response only; they belong to this error for a 429/418.
            headers = getattr(self._exchange, "last_response_headers", None) or {}
            retry_after = headers.get("Retry-After")
        else:
            retry_after = None
        if retry_after is not None:
            with contextlib.suppress(ValueError):
                delay = max(delay, min(float(retry_after), retry.max_delay_s))
        return delay

    async def _call(self, action: str, fn: Callable[[], Awaitable[T]], *, idempotent: bool) -> T:
        """Run one ccxt call with a deadline; map its errors; retry transient ones if the call is idempotent."""
        attempts = self._config.retry.attempts if idempotent else 1
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(self._config.call_deadline_s):
                    return await fn()
            except (ccxt.BaseError, TimeoutError) as e:
                error = map_ccxt_error(e, action)
                if isinstance(e, ccxt.InvalidNonce) and self._config.adjust_for_time_difference:
                    await self._resync_clock()
                    if not idempotent and attempt == 0:
                        # The venue checks the timestamp before anything else: nothing was done, so one resend
                        # of the same request (same client order id) is safe.
                        attempts = 2
                if not isinstance(error, TransientError) or attempt + 1 >= attempts:
                    raise error from e
                delay = self._backoff_s(attempt, e)
                self._log.warning(
                    "venue_call_retrying",
                    action=action,
                    attempt=attempt + 1,
                    delay_s=round(delay, 3),
                    error=type(e).__name__,
                )
                await self._sleep(delay)
                attempt += 1

    async def _resync_clock(self) -> None:
        try:
            await self.exchange.load_time_difference()
            self._log.info("venue_clock_resynced", offset_ms=self.exchange.options.get("timeDifference"))
        except ccxt.BaseError as e:
            self._log.warning("venue_clock_resync_failed", error=str(e))

    def _require_credentials(self, action: str) -> None:
        if self._credentials is None:
            names = env_names(self.name)
            raise FatalError(
                f"{action} on {self.name} needs API credentials: set {names['api_key']} and {names['secret']} "
                "(or use a secrets file); without them only market data is available"
            )

    # --- markets -------------------------------------------------------------------------------------------

    async def load_markets(self) -> Mapping[str, Market]:
        """Return markets by symbol (precision, limits, fees); cached after the first call."""
        if self._markets:
            return self._markets
        raw = await self._call("load_markets", lambda: self.exchange.load_markets(), idempotent=True)
        tick_size = self.exchange.precisionMode == ccxt.TICK_SIZE
        markets: dict[str, Market] = {}
        for symbol, m in raw.items():
            try:
                markets[symbol] = _market_from_ccxt(m, tick_size=tick_size)
            except (DataError, ValueError) as e:
                self._log.warning("market_skipped", symbol=symbol, reason=str(e))
        self._markets = markets
        self._log.info("markets_loaded", count=len(markets))
        return markets

    def market(self, symbol: str) -> Market:
        """Return one loaded market; raise InvalidOrder for an unknown symbol."""
        try:
            return self._markets[symbol]
        except KeyError:
            close = [s for s in self._markets if s.split("/")[0] == symbol.split("/")[0]][:5]
            hint = f"; did you mean {', '.join(close)}" if close else ""
            raise InvalidOrder(f"unknown symbol {symbol!r} on {self.name}{hint}") from None

    # --- market data ---------------------------------------------------------------------------------------

    def _check_timeframe(self, timeframe: str) -> int:
        offered = getattr(self.exchange, "timeframes", None) or {}
        if offered and timeframe not in offered:
            raise DataError(f"timeframe {timeframe!r} is not offered by {self.name}; offered: {', '.join(offered)}")
        return timeframe_ms(timeframe)

    async def fetch_ohlcv(
        self, symbol: str, timeframe: str, since_ms: int | None = None, limit: int | None = None
    ) -> list[Candle]:
        """Return closed candles from `since_ms` (paged internally up to `limit`)."""
        self.market(symbol)
        tf_ms = self._check_timeframe(timeframe)
        if limit is not None and limit <= 0:
            raise ValueError(f"fetch_ohlcv limit must be > 0, was {limit}")
        last_closed_open = (self._clock_ms() // tf_ms) * tf_ms - tf_ms
        if since_ms is None:
            since_ms = last_closed_open - ((limit or self._config.ohlcv_page_limit) - 1) * tf_ms
        candles: list[Candle] = []
        cursor = since_ms
        while cursor <= last_closed_open and (limit is None or len(candles) < limit):
            want = (
                self._config.ohlcv_page_limit
                if limit is None
                else min(self._config.ohlcv_page_limit, limit - len(candles))
            )
            rows = await self._call(
                f"fetch_ohlcv {symbol} {timeframe} since={cursor}",
                partial(self.exchange.fetch_ohlcv, symbol, timeframe, cursor, want),
                idempotent=True,
            )
            page = [
                _candle_from_row(row, symbol, timeframe)
                for row in rows
                if row and cursor <= int(row[0]) <= last_closed_open
            ]
            if not page:
                break
            candles.extend(page)
            cursor = int(candles[-1].open_time.timestamp() * 1000) + tf_ms
        return candles[:limit] if limit is not None else candles

    async def candles(self, symbol: str, timeframe: str) -> AsyncIterator[Candle]:
        """Yield each candle once it has closed, in order, once, forever (websocket or polling: `candle_source`)."""
        self.market(symbol)
        tf_ms = self._check_timeframe(timeframe)
        feed = self._stream_candles if self._ws_exchange is not None else self._poll_candles
        async for candle in feed(symbol, timeframe, tf_ms):
            yield candle

    async def _stream_candles(self, symbol: str, timeframe: str, tf_ms: int) -> AsyncIterator[Candle]:
        """Closed candles from ccxt.pro's watch_ohlcv; REST fills whatever the stream missed (disconnects)."""
        ws = self._ws_exchange
        feed_log = self._log.bind(symbol=symbol, timeframe=timeframe, source="websocket")
        market_id = str(ws.market(symbol)["id"])
        interval = str((getattr(ws, "timeframes", None) or {}).get(timeframe, timeframe))
        flagged = self._ws_closed.setdefault((market_id, interval), set())
        # The candle in progress at subscription is the first one yielded, once it closes.
        state = _StreamState(tf_ms=tf_ms, last_open_ms=(self._clock_ms() // tf_ms) * tf_ms - tf_ms)
        failures = 0
        while True:
            reconnecting = False
            try:
                async with asyncio.timeout(self._config.stream_idle_s):
                    rows = await ws.watch_ohlcv(symbol, timeframe)
            except TimeoutError:
                # No update at all: the venue may only push on trades. Whatever the clock says is closed comes by REST.
                feed_log.info("feed_stream_idle", idle_s=self._config.stream_idle_s)
                top = max(state.last_open_ms, self._last_closed_open_ms(tf_ms))
            except ccxt.BaseError as e:
                error = map_ccxt_error(e, f"watch_ohlcv {symbol} {timeframe}")
                if not isinstance(error, TransientError):
                    raise error from e
                failures += 1
                reconnecting = True
                feed_log.warning("feed_reconnecting", attempt=failures, error=str(e))
                # Updates were lost with the connection: the candles closed meanwhile come from REST.
                state.pending.clear()
                flagged.clear()
                top = max(state.last_open_ms, self._last_closed_open_ms(tf_ms))
            else:
                if failures:
                    feed_log.info("feed_reconnected", attempts=failures)
                failures = 0
                for row in rows:
                    candle = _candle_from_row(row, symbol, timeframe)
                    open_ms = int(row[0])
                    if open_ms > state.last_open_ms:
                        state.pending[open_ms] = candle
                top = state.closed_through(flagged)
            for candle in await self._closed_candles(state, top, symbol, timeframe, feed_log):
                yield candle
            flagged.difference_update([t for t in flagged if t <= state.last_open_ms])
            if reconnecting:
                await self._sleep(self._backoff_s(min(failures - 1, 16)))

    def _last_closed_open_ms(self, tf_ms: int) -> int:
        return (self._clock_ms() // tf_ms) * tf_ms - tf_ms

    async def _closed_candles(
        self, state: _StreamState, top: int, symbol: str, timeframe: str, feed_log: Any
    ) -> list[Candle]:
        """Take the candles after the last yielded one up to `top` off the stream state, REST filling its holes."""
        tf_ms = state.tf_ms
        opens = range(state.last_open_ms + tf_ms, top + 1, tf_ms)
        fetched: dict[int, Candle] = {}
        loop_now = asyncio.get_running_loop().time()
        if any(o not in state.pending for o in opens) and loop_now >= state.next_fetch_at:
            try:
                rest = await self.fetch_ohlcv(symbol, timeframe, since_ms=opens.start)
            except TransientError as e:
                feed_log.warning("feed_backfill_failed", error=str(e))
                rest = []
            fetched = {int(c.open_time.timestamp() * 1000): c for c in rest}
            feed_log.info("feed_backfilled", since_ms=opens.start, count=len(fetched))
        out: list[Candle] = []
        for open_ms in opens:
            candle = state.pending.get(open_ms) or fetched.get(open_ms)
            if candle is None:
                if any(t > open_ms for t in fetched):
                    # REST serves later candles but not this one: the venue has none (no trades), not a lag.
                    feed_log.warning("feed_candle_missing", open_ms=open_ms)
                    continue
                # Not served yet: keep the later ones back (never out of order) and ask again shortly.
                state.next_fetch_at = loop_now + self._config.poll_retry_s
                break
            out.append(candle)
        if out:
            state.last_open_ms = int(out[-1].open_time.timestamp() * 1000)
            for open_ms in [t for t in state.pending if t <= state.last_open_ms]:
                del state.pending[open_ms]
        return out

    async def _poll_candles(self, symbol: str, timeframe: str, tf_ms: int) -> AsyncIterator[Candle]:
        """Closed candles by REST, asked for right after each close."""
        feed_log = self._log.bind(symbol=symbol, timeframe=timeframe)
        # The candle in progress at subscription is the first one yielded, once it closes.
        last_open_ms = (self._clock_ms() // tf_ms) * tf_ms - tf_ms
        while True:
            now = self._clock_ms()
            latest_closed_open_ms = (now // tf_ms) * tf_ms - tf_ms
            if latest_closed_open_ms <= last_open_ms:
                next_close = latest_closed_open_ms + 2 * tf_ms
                await self._sleep((next_close - now) / 1000 + self._config.poll_delay_s)
                continue
            try:
                fresh = await self.fetch_ohlcv(symbol, timeframe, since_ms=last_open_ms + tf_ms)
            except TransientError as e:
                feed_log.warning("feed_poll_failed", error=str(e))
                fresh = []
            for candle in fresh:
                open_ms = int(candle.open_time.timestamp() * 1000)
                if open_ms > last_open_ms:
                    last_open_ms = open_ms
                    yield candle
            if last_open_ms < (self._clock_ms() // tf_ms) * tf_ms - tf_ms:
                # The venue has not published the closed candle yet (or the poll failed): ask again shortly.
                feed_log.info("feed_candle_pending", due_open_ms=last_open_ms + tf_ms)
                await self._sleep(self._config.poll_retry_s)

    # --- account -------------------------------------------------------------------------------------------

    async def fetch_balances(self) -> dict[str, Balance]:
        """Return balances by currency."""
        self._require_credentials("fetch_balances")
        raw = await self._call("fetch_balances", lambda: self.exchange.fetch_balance(), idempotent=True)
        free, used = raw.get("free") or {}, raw.get("used") or {}
        balances: dict[str, Balance] = {}
        for currency in sorted(set(free) | set(used)):
            balances[currency] = Balance(
                currency=currency,
                free=_dec(free.get(currency) or 0, f"balance {currency} free"),
                used=_dec(used.get(currency) or 0, f"balance {currency} used"),
            )
        return balances

    # --- orders --------------------------------------------------------------------------------------------

    async def _reference_price(self, symbol: str) -> Decimal:
        ticker = await self._call(f"fetch_ticker {symbol}", lambda: self.exchange.fetch_ticker(symbol), idempotent=True)
        price = ticker.get("last") or ticker.get("close") or ticker.get("ask")
        if not price:
            raise TransientError(f"create_order {symbol}: no last price to check the minimum notional against")
        return _dec(price, f"ticker {symbol} last")

    async def create_order(self, request: OrderRequest) -> Order:
        """Round, check and send an order; raise OrderStateUnknown if the outcome is unknown."""
        self._require_credentials("create_order")
        market = self.market(request.symbol)
        cid = request.client_order_id
        amount = market.round_amount(request.amount)
        price: Decimal | None = None
        if request.type is OrderType.LIMIT:
            assert request.price is not None  # OrderRequest guarantees it for limit orders
            price = market.round_price(request.price)
            if price <= 0:
                raise InvalidOrder(f"order {cid} {request.symbol}: price {request.price} rounds to {price}")
            check_price = price
        else:
            check_price = await self._reference_price(request.symbol) if market.min_notional > 0 else Decimal(1)
        try:
            market.check_order(amount, check_price)
        except InvalidOrder as e:
            raise InvalidOrder(f"order {cid} refused before sending: {e}") from e
        order_log = self._log.bind(client_order_id=cid, symbol=request.symbol)
        action = f"create_order {request.symbol} client_order_id={cid}"
        try:
            raw = await self._call(
                action,
                lambda: self.exchange.create_order(
                    request.symbol,
                    request.type.value,
                    request.side.value,
                    float(amount),
                    float(price) if price is not None else None,
                    {"newClientOrderId": cid},
                ),
                idempotent=False,
            )
        except TransientError as e:
            # Timeout, lost connection, 5xx: the venue may or may not have the order.
            order_log.warning("order_submit_outcome_unknown", error=str(e))
            return await self._resolve_unknown(request, e)
        order = order_from_ccxt(raw, client_order_id=cid)
        self._remember(order)
        order_log.info(
            "order_submitted",
            venue_order_id=order.venue_order_id,
            status=order.status.value,
            amount=str(amount),
            price=str(price) if price is not None else None,
        )
        return order

    async def _resolve_unknown(self, request: OrderRequest, cause: Exception) -> Order:
        """Find out by client order id whether an order whose submission failed exists at the venue."""
        cid = request.client_order_id
        last_error: Exception = cause
        not_found = 0
        for attempt in range(self._config.order_lookup_attempts):
            try:
                order = await self._fetch_order_once(request.symbol, cid)
            except OrderNotFound as e:
                not_found += 1
                last_error = e
            except TransientError as e:
                last_error = e
            else:
                self._log.info("order_state_resolved", client_order_id=cid, status=order.status.value)
                return order
            if attempt + 1 < self._config.order_lookup_attempts:
                await self._sleep(self._backoff_s(attempt))
        if not_found == self._config.order_lookup_attempts:
            raise OrderNotPlaced(
                f"create_order {request.symbol} client_order_id={cid}: submission failed ({cause}) and the venue "
                f"does not know the order after {not_found} lookups; resend it with the same client order id"
            ) from cause
        raise OrderStateUnknown(
            f"create_order {request.symbol} client_order_id={cid}: outcome unknown, lookups failed "
            f"({last_error}); resolve by client order id before sending anything for this symbol"
        ) from cause

    async def _fetch_order_once(self, symbol: str, client_order_id: ClientOrderId) -> Order:
        raw = await self._call(
            f"fetch_order {symbol} client_order_id={client_order_id}",
            lambda: self.exchange.fetch_order(None, symbol, {"origClientOrderId": client_order_id}),
            idempotent=False,
        )
        order = order_from_ccxt(raw, client_order_id=client_order_id)
        self._remember(order)
        return order

    def _remember(self, order: Order) -> None:
        if order.venue_order_id is not None:
            self._cid_by_venue_id[order.venue_order_id] = order.client_order_id

    async def cancel_order(self, symbol: str, client_order_id: ClientOrderId) -> Order:
        """Cancel an open order by our client order id; an order already final is returned as it is."""
        self._require_credentials("cancel_order")
        self.market(symbol)
        try:
            raw = await self._call(
                f"cancel_order {symbol} client_order_id={client_order_id}",
                lambda: self.exchange.cancel_order(None, symbol, {"origClientOrderId": client_order_id}),
                idempotent=True,
            )
        except OrderNotFound:
            # Unknown to cancel: already filled, already cancelled (perhaps by our own timed-out first try),
            # or never placed. Only the last is an error.
            order = await self.fetch_order(symbol, client_order_id)
            if not order.status.is_final:
                raise
            return order
        order = order_from_ccxt(raw, client_order_id=client_order_id)
        self._remember(order)
        self._log.info("order_cancelled", client_order_id=client_order_id, symbol=symbol, status=order.status.value)
        return order

    async def fetch_order(self, symbol: str, client_order_id: ClientOrderId) -> Order:
        """Look an order up by our client order id."""
        self._require_credentials("fetch_order")
        self.market(symbol)
        raw = await self._call(
            f"fetch_order {symbol} client_order_id={client_order_id}",
            lambda: self.exchange.fetch_order(None, symbol, {"origClientOrderId": client_order_id}),
            idempotent=True,
        )
        order = order_from_ccxt(raw, client_order_id=client_order_id)
        self._remember(order)
        return order

    async def fetch_open_orders(self, symbol: str | None = None) -> list[Order]:
        """Return orders still open."""
        self._require_credentials("fetch_open_orders")
        if symbol is not None:
            self.market(symbol)
        raws = await self._call(
            f"fetch_open_orders {symbol or '*'}", lambda: self.exchange.fetch_open_orders(symbol), idempotent=True
        )
        orders = [order_from_ccxt(raw) for raw in raws]
        for order in orders:
            self._remember(order)
        return orders

    async def fetch_my_trades(self, symbol: str, since_ms: int | None = None) -> list[Fill]:
        """Return our fills since `since_ms`."""
        self._require_credentials("fetch_my_trades")
        self.market(symbol)
        raws = await self._call(
            f"fetch_my_trades {symbol}", lambda: self.exchange.fetch_my_trades(symbol, since_ms), idempotent=True
        )
        fills: list[Fill] = []
        for raw in raws:
            venue_id = raw.get("order")
            cid = raw.get("clientOrderId") or (self._cid_by_venue_id.get(str(venue_id)) if venue_id else None)
            if cid is None and venue_id is not None:
                # Many venues (Binance among them) leave our id out of trades: ask for the order once.
                cid = await self._client_order_id_of(symbol, str(venue_id))
            if cid is None:
                raise DataError(f"trade {raw.get('id')} on {symbol}: no order id to match it to our orders")
            fills.append(fill_from_ccxt(raw, ClientOrderId(str(cid))))
        return fills

    async def _client_order_id_of(self, symbol: str, venue_order_id: str) -> ClientOrderId:
        raw = await self._call(
            f"fetch_order {symbol} id={venue_order_id}",
            lambda: self.exchange.fetch_order(venue_order_id, symbol),
            idempotent=True,
        )
        cid = order_from_ccxt(raw).client_order_id
        self._cid_by_venue_id[venue_order_id] = cid
        return cid


@dataclass
class _StreamState:
    """What a websocket candle stream knows between updates."""

    tf_ms: int
    last_open_ms: int
    """Open time of the newest candle yielded (at start: the one before the candle in progress)."""
    pending: dict[int, Candle] = field(default_factory=dict)
    """Newer candles seen on the stream since the last (re)connect, latest update of each."""
    next_fetch_at: float = 0.0
    """Event-loop time before which a hole is not asked for again over REST."""

    def closed_through(self, flagged: set[int]) -> int:
        """Open time of the newest candle known closed: one before the newest seen, or flagged closed."""
        top = self.last_open_ms
        if self.pending:
            top = max(top, max(self.pending) - self.tf_ms)
            top = max([top, *(t for t in flagged if t in self.pending)])
        return top


def _rewrite_urls(urls: Any, base: str) -> Any:
    """Point every URL in ccxt's `urls['api']` (nested dicts allowed) at `base`, keeping its path."""
    if isinstance(urls, str):
        return base + urlsplit(urls).path
    if isinstance(urls, dict):
        return {key: _rewrite_urls(value, base) for key, value in urls.items()}
    return urls


def _market_from_ccxt(m: Mapping[str, Any], *, tick_size: bool) -> Market:
    symbol = str(m["symbol"])
    precision = m.get("precision") or {}
    limits = m.get("limits") or {}

    def step(value: Any, what: str) -> Decimal:
        if value is None:
            return Decimal(0)
        number = _dec(value, f"market {symbol} {what}")
        # Exchanges in DECIMAL_PLACES mode give a digit count, not a step.
        return number if tick_size else Decimal(1).scaleb(-int(number))

    def limit(kind: str) -> Decimal:
        value = (limits.get(kind) or {}).get("min")
        return _dec(value, f"market {symbol} min {kind}") if value is not None else Decimal(0)

    return Market(
        symbol=symbol,
        base=str(m["base"]),
        quote=str(m["quote"]),
        amount_step=step(precision.get("amount"), "amount precision"),
        price_step=step(precision.get("price"), "price precision"),
        min_amount=limit("amount"),
        min_notional=limit("cost"),
        maker_fee=_dec(m["maker"], f"market {symbol} maker fee") if m.get("maker") is not None else Decimal("0.001"),
        taker_fee=_dec(m["taker"], f"market {symbol} taker fee") if m.get("taker") is not None else Decimal("0.001"),
    )


def _candle_from_row(row: list[Any], symbol: str, timeframe: str) -> Candle:
    try:
        open_ms, o, h, low, c, v = (row[0], *(float(x) for x in row[1:6]))
        return Candle(
            symbol=symbol,
            timeframe=timeframe,
            open_time=utc_from_ms(int(open_ms)),
            open=o,
            high=h,
            low=low,
            close=c,
            volume=v,
        )
    except (TypeError, ValueError, IndexError) as e:
        raise DataError(f"candle {symbol} {timeframe} row {row!r}: {e}") from e
