"""Closed candles of the ccxt venue: REST polling after each close, or ccxt.pro's `watch_ohlcv` with REST backfill.

The websocket feed keeps what it has seen since the last (re)connect; REST fills whatever a disconnect or a quiet
stream made it miss, so candles are yielded in order, each once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import ccxt

from adapters.ccxt.config import CcxtConfig, ccxt_pro, configure_urls, exchange_params, profile_for, rewrite_urls
from adapters.ccxt.convert import candle_from_row
from adapters.ccxt.errors import map_ccxt_error
from adapters.ccxt.profile import ClosedFlags
from adapters.errors import TransientError
from adapters.types import Candle


class FetchOhlcv(Protocol):
    """The venue's `fetch_ohlcv`: closed candles over REST."""

    def __call__(
        self, symbol: str, timeframe: str, since_ms: int | None = None, limit: int | None = None
    ) -> Awaitable[list[Candle]]:
        """Return closed candles from `since_ms`."""
        ...


def make_ws_exchange(config: CcxtConfig, exchange: Any, closed: ClosedFlags) -> Any:
    """Return a ccxt.pro instance for public candle streams only (no keys), sharing `exchange`'s loaded markets."""
    ws = getattr(ccxt_pro(), config.exchange_id)(exchange_params(config))
    configure_urls(ws, config)
    if config.api_url_override is not None and ws.urls["api"].get("ws") is not None:
        parts = urlsplit(config.api_url_override.rstrip("/"))
        scheme = "wss" if parts.scheme == "https" else "ws"
        ws.urls["api"]["ws"] = rewrite_urls(ws.urls["api"]["ws"], f"{scheme}://{parts.netloc}{parts.path}")
    ws.set_markets(list(exchange.markets.values()), exchange.currencies)
    hook = profile_for(config.exchange_id).hook_closed_flag
    if hook is not None:
        hook(ws, closed)
    return ws


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


class CandleFeed:
    """How the ccxt venue turns REST or websocket candles into closed candles, in order, each once."""

    def __init__(
        self,
        config: CcxtConfig,
        *,
        fetch_ohlcv: FetchOhlcv,
        clock_ms: Callable[[], int],
        sleep: Callable[[float], Awaitable[None]],
        backoff_s: Callable[[int], float],
        log: Any,
    ) -> None:
        self._config = config
        self._fetch_ohlcv = fetch_ohlcv
        self._clock_ms = clock_ms
        self._sleep = sleep
        self._backoff_s = backoff_s
        self._log = log

    async def stream(
        self, ws: Any, closed: ClosedFlags, symbol: str, timeframe: str, tf_ms: int
    ) -> AsyncIterator[Candle]:
        """Closed candles from ccxt.pro's watch_ohlcv; REST fills whatever the stream missed (disconnects)."""
        feed_log = self._log.bind(symbol=symbol, timeframe=timeframe, source="websocket")
        market_id = str(ws.market(symbol)["id"])
        interval = str((getattr(ws, "timeframes", None) or {}).get(timeframe, timeframe))
        flagged = closed.setdefault((market_id, interval), set())
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
                    candle = candle_from_row(row, symbol, timeframe)
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
                rest = await self._fetch_ohlcv(symbol, timeframe, since_ms=opens.start)
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

    async def poll(self, symbol: str, timeframe: str, tf_ms: int) -> AsyncIterator[Candle]:
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
                fresh = await self._fetch_ohlcv(symbol, timeframe, since_ms=last_open_ms + tf_ms)
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
