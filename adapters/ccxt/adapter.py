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
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from decimal import Decimal
from functools import partial
from types import TracebackType
from typing import Any, Self, TypeVar

import ccxt
import ccxt.async_support as ccxt_async
import structlog

from adapters.ccxt.candles import CandleFeed, make_ws_exchange
from adapters.ccxt.config import (
    CandleSource,
    CcxtConfig,
    candle_source,
    configure_urls,
    exchange_params,
    profile_for,
)
from adapters.ccxt.convert import (
    candle_from_row,
    decimal_from_ccxt,
    fill_from_ccxt,
    market_from_ccxt,
    order_from_ccxt,
    timeframe_ms,
)
from adapters.ccxt.errors import OrderNotPlaced, map_ccxt_error
from adapters.ccxt.profile import ClosedFlags
from adapters.errors import (
    DataError,
    FatalError,
    InvalidOrder,
    OrderNotFound,
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
    OrderType,
)

log = structlog.get_logger()

T = TypeVar("T")
CLOCK_OFFSET_WARN_MS = 1_000
"""A machine clock this far from the venue's gets one warning at start."""
CLOCK_RESYNC_LOG_MS = 100
"""A new measure of the venue's clock that moved this much is logged."""


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
        self._clock_ms = clock_ms or self._venue_time_ms
        self._sleep = sleep or asyncio.sleep
        self._rng = rng or random.Random()
        self._exchange: Any = None
        self._markets: dict[str, Market] = {}
        self._cid_by_venue_id: dict[str, ClientOrderId] = {}
        self._profile = profile_for(config.exchange_id)
        self._log = log.bind(venue=self.name)
        self.candle_source: CandleSource = candle_source(config.exchange_id, config.stream)
        """Where `candles()` gets closed candles: ccxt.pro websockets or REST polling."""
        self._ws_exchange: Any = None
        self._ws_closed: ClosedFlags = {}

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._exchange = self._make_exchange()
        try:
            configure_urls(self._exchange, self._config)
            await self.load_markets()
            self._report_clock_offset()
            if self.candle_source == "websocket":
                self._ws_exchange = make_ws_exchange(self._config, self.exchange, self._ws_closed)
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

    def _venue_time_ms(self) -> int:
        # ccxt measures `timeDifference` (local clock minus the venue's) when it loads the markets, and we again
        # after a timestamp refusal (`_resync_clock`): candles close, and go stale, by the venue's clock, so a
        # machine whose clock runs ahead or behind neither asks for candles the venue has not closed nor calls
        # fresh ones stale.
        local = int(time.time() * 1000)
        if self._exchange is None or not self._config.adjust_for_time_difference:
            return local
        return local - self._time_difference_ms()

    def _time_difference_ms(self) -> int:
        """ccxt's last measure of this machine's clock minus the venue's, in ms (0 before the first)."""
        return int(self.exchange.options.get("timeDifference") or 0)

    def _report_clock_offset(self) -> None:
        offset = self._time_difference_ms()
        if self._config.adjust_for_time_difference and abs(offset) >= CLOCK_OFFSET_WARN_MS:
            self._log.warning(
                "venue_clock_offset",
                offset_ms=offset,
                note="this machine's clock differs from the venue's: the bot signs orders and closes candles by "
                "the venue's clock; check NTP (timedatectl)",
            )

    def venue_time_ms(self) -> int:
        """The venue's clock in ms as measured from here (or the clock the adapter was given)."""
        return self._clock_ms()

    def _make_exchange(self) -> Any:
        params = exchange_params(self._config)
        if self._credentials is not None:
            params |= {"apiKey": self._credentials.api_key, "secret": self._credentials.secret}
            if self._credentials.password:
                params["password"] = self._credentials.password
        return getattr(ccxt_async, self._config.exchange_id)(params)

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
            before = self._time_difference_ms()
            await self.exchange.load_time_difference()
            offset = self._time_difference_ms()
            # Logged when the measure moved (a step, or drift building up); an unchanged hourly check is silent.
            if abs(offset - before) >= CLOCK_RESYNC_LOG_MS:
                self._log.info("venue_clock_resynced", offset_ms=offset, moved_ms=offset - before)
        except ccxt.BaseError as e:
            self._log.warning("venue_clock_resync_failed", error=str(e))

    async def sync_clock(self) -> int:
        """Measure the venue's clock again (the daemon's `bot.schedule.clock_sync`); return the offset in ms
        (local minus venue). A failure is logged and the last measure kept."""
        if self._config.adjust_for_time_difference:
            await self._resync_clock()
        return self._time_difference_ms()

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
                markets[symbol] = market_from_ccxt(m, tick_size=tick_size)
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
                candle_from_row(row, symbol, timeframe)
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
        feed = CandleFeed(
            self._config,
            fetch_ohlcv=self.fetch_ohlcv,
            clock_ms=self._clock_ms,
            sleep=self._sleep,
            backoff_s=self._backoff_s,
            log=self._log,
        )
        if self._ws_exchange is not None:
            closed = feed.stream(self._ws_exchange, self._ws_closed, symbol, timeframe, tf_ms)
        else:
            closed = feed.poll(symbol, timeframe, tf_ms)
        async for candle in closed:
            yield candle

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
                free=decimal_from_ccxt(free.get(currency) or 0, f"balance {currency} free"),
                used=decimal_from_ccxt(used.get(currency) or 0, f"balance {currency} used"),
            )
        return balances

    # --- orders --------------------------------------------------------------------------------------------

    async def _reference_price(self, symbol: str) -> Decimal:
        ticker = await self._call(f"fetch_ticker {symbol}", lambda: self.exchange.fetch_ticker(symbol), idempotent=True)
        price = ticker.get("last") or ticker.get("close") or ticker.get("ask")
        if not price:
            raise TransientError(f"create_order {symbol}: no last price to check the minimum notional against")
        return decimal_from_ccxt(price, f"ticker {symbol} last")

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
                    self._profile.create_params(cid),
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
            lambda: self.exchange.fetch_order(None, symbol, self._profile.lookup_params(client_order_id)),
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
                lambda: self.exchange.cancel_order(None, symbol, self._profile.lookup_params(client_order_id)),
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
            lambda: self.exchange.fetch_order(None, symbol, self._profile.lookup_params(client_order_id)),
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
