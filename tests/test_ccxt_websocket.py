"""Closed candles over ccxt.pro websockets, against the local server's Binance kline stream, with REST recovery."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from adapters.ccxt.adapter import CcxtAdapter
from adapters.ccxt.binance import BINANCE_SPOT_OPTIONS
from adapters.ccxt.config import CcxtConfig, RetryConfig, candle_source
from adapters.errors import FatalError
from adapters.types import Candle, ms_from_utc
from tests.support.binance_server import BinanceServer, load_candles

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC, inside the bundled BTC/USDT 1h candles
STREAM = "btcusdt@kline_1h"
GUARD_S = 10.0
"""A deadline on each wait, so a broken stream fails the test instead of hanging it; never a synchronisation."""


class MarketClock:
    """Market time shared by the adapter and the server; only the test moves it."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def config_for(server: BinanceServer, **overrides: Any) -> CcxtConfig:
    """Adapter config pointed at the local server (REST and websocket), with fast retries."""
    settings: dict[str, Any] = {
        "exchange_id": "binance",
        "timeout_ms": 2000,
        "enable_rate_limit": False,
        "options": dict(BINANCE_SPOT_OPTIONS),
        "api_url_override": server.url,
        "retry": RetryConfig(attempts=3, base_delay_s=0.01, max_delay_s=0.05),
        "stream": "websocket",
    }
    settings.update(overrides)
    return CcxtConfig(**settings)


def served(open_ms: int) -> tuple[float, float, float, float, float]:
    """The bundled BTC/USDT 1h candle opening at `open_ms`."""
    data = load_candles("BTC/USDT-1h")
    index = int((data.open_ms == open_ms).argmax())
    assert data.open_ms[index] == open_ms
    o, h, low, c, v = (float(x) for x in data.ohlcv[index])
    return o, h, low, c, v


def values(candle: Candle) -> tuple[float, float, float, float, float]:
    return candle.open, candle.high, candle.low, candle.close, candle.volume


@contextlib.asynccontextmanager
async def consuming(venue: CcxtAdapter) -> AsyncIterator[asyncio.Queue[Candle]]:
    """Run `venue.candles()` in a task that puts each candle on a queue; stop it on exit."""
    queue: asyncio.Queue[Candle] = asyncio.Queue()

    async def consume() -> None:
        async for candle in venue.candles("BTC/USDT", "1h"):
            await queue.put(candle)

    async with asyncio.TaskGroup() as group:
        task = group.create_task(consume(), name="feed:BTC/USDT")
        try:
            yield queue
        finally:
            task.cancel()


async def next_candle(queue: asyncio.Queue[Candle]) -> Candle:
    async with asyncio.timeout(GUARD_S):
        return await queue.get()


async def test_closed_candles_arrive_in_order_and_updates_in_progress_do_not(binance_server: BinanceServer) -> None:
    clock = MarketClock(T0 + 30 * 60_000)  # 00:30, inside the 00:00 candle
    binance_server.market_clock_ms = clock
    async with CcxtAdapter(config_for(binance_server), None, clock_ms=clock) as venue:
        assert venue.candle_source == "websocket"
        async with consuming(venue) as queue:
            async with asyncio.timeout(GUARD_S):
                await binance_server.wait_for_subscriptions(STREAM, 1)
            # Two updates of the candle in progress, then its closing update with the final values.
            assert await binance_server.push_kline("BTCUSDT", T0, closed=False, ohlcv=(1.0, 2.0, 0.5, 1.5, 3.0)) == 1
            await binance_server.push_kline("BTCUSDT", T0, closed=False, ohlcv=(1.0, 2.5, 0.5, 2.0, 4.0))
            clock.now_ms = T0 + HOUR_MS + 1000
            await binance_server.push_kline("BTCUSDT", T0, closed=True)
            first = await next_candle(queue)
            # A candle closed without the flag: the next candle's first update closes it.
            await binance_server.push_kline("BTCUSDT", T0 + HOUR_MS, closed=False, ohlcv=(9.0, 9.0, 9.0, 9.0, 9.0))
            await binance_server.push_kline("BTCUSDT", T0 + HOUR_MS, closed=False)
            clock.now_ms = T0 + 2 * HOUR_MS + 1000
            await binance_server.push_kline("BTCUSDT", T0 + 2 * HOUR_MS, closed=False)
            second = await next_candle(queue)
            # A late repeat of a candle already yielded is not yielded again.
            await binance_server.push_kline("BTCUSDT", T0 + HOUR_MS, closed=True)
            clock.now_ms = T0 + 3 * HOUR_MS + 1000
            await binance_server.push_kline("BTCUSDT", T0 + 2 * HOUR_MS, closed=True)
            third = await next_candle(queue)
            assert queue.empty()
    received = [first, second, third]
    assert [ms_from_utc(c.open_time) for c in received] == [T0, T0 + HOUR_MS, T0 + 2 * HOUR_MS]
    assert [values(c) for c in received] == [served(T0), served(T0 + HOUR_MS), served(T0 + 2 * HOUR_MS)]
    assert all(c.symbol == "BTC/USDT" and c.timeframe == "1h" for c in received)
    # Nothing came by REST: the stream alone delivered them.
    assert binance_server.calls("GET", "/api/v3/klines") == []


async def test_dropped_connection_is_recovered_by_rest_without_gap_or_duplicate(
    binance_server: BinanceServer,
) -> None:
    clock = MarketClock(T0 + 30 * 60_000)
    binance_server.market_clock_ms = clock
    received: list[Candle] = []
    with capture_logs() as logs:
        async with (
            CcxtAdapter(config_for(binance_server), None, clock_ms=clock) as venue,
            consuming(venue) as queue,
        ):
            async with asyncio.timeout(GUARD_S):
                await binance_server.wait_for_subscriptions(STREAM, 1)
            clock.now_ms = T0 + HOUR_MS + 1000
            await binance_server.push_kline("BTCUSDT", T0, closed=True)
            received.append(await next_candle(queue))
            clock.now_ms = T0 + 2 * HOUR_MS + 1000
            await binance_server.push_kline("BTCUSDT", T0 + HOUR_MS, closed=True)
            received.append(await next_candle(queue))
            await binance_server.push_kline("BTCUSDT", T0 + 2 * HOUR_MS, closed=False, ohlcv=(1, 1, 1, 1, 1))
            # The connection dies during the 02:00 candle and stays down past two closes (03:00, 04:00).
            clock.now_ms = T0 + 4 * HOUR_MS + 30 * 60_000
            assert binance_server.drop_websockets() == 1
            received.append(await next_candle(queue))
            received.append(await next_candle(queue))
            # Then the stream is back (the adapter subscribed again), replaying a candle it already has.
            async with asyncio.timeout(GUARD_S):
                await binance_server.wait_for_subscriptions(STREAM, 2)
            await binance_server.push_kline("BTCUSDT", T0 + 3 * HOUR_MS, closed=True, ohlcv=(7, 7, 7, 7, 7))
            await binance_server.push_kline("BTCUSDT", T0 + 4 * HOUR_MS, closed=False)
            clock.now_ms = T0 + 5 * HOUR_MS + 1000
            await binance_server.push_kline("BTCUSDT", T0 + 4 * HOUR_MS, closed=True)
            received.append(await next_candle(queue))
            assert queue.empty()
    opens = [T0 + i * HOUR_MS for i in range(5)]
    assert [ms_from_utc(c.open_time) for c in received] == opens
    assert [values(c) for c in received] == [served(t) for t in opens]
    # The two candles closed while disconnected came over REST, asked from the first one missing.
    klines = binance_server.calls("GET", "/api/v3/klines")
    assert klines and klines[0].params["startTime"] == str(T0 + 2 * HOUR_MS)
    events = [e["event"] for e in logs]
    assert "feed_reconnecting" in events and "feed_backfilled" in events and "feed_reconnected" in events


async def test_stream_poll_uses_rest_polling_and_no_websocket(binance_server: BinanceServer) -> None:
    clock = MarketClock(T0 + 30 * 60_000)
    binance_server.market_clock_ms = clock
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        # Polling sleeps until the next close; here that moves the market clock instead of waiting.
        sleeps.append(seconds)
        clock.now_ms += int(seconds * 1000)

    cfg = config_for(binance_server, stream="poll", poll_delay_s=2.0)
    async with CcxtAdapter(cfg, None, clock_ms=clock, sleep=sleep) as venue:
        assert venue.candle_source == "poll"
        feed = venue.candles("BTC/USDT", "1h")
        async with asyncio.timeout(GUARD_S):
            candle = await anext(feed)
        await feed.aclose()
    assert ms_from_utc(candle.open_time) == T0 and values(candle) == served(T0)
    assert sleeps == [30 * 60 + 2.0]
    assert binance_server.calls("GET", "/api/v3/klines")
    assert binance_server.ws_subscriptions == [] and binance_server.ws_sockets == []


@pytest.mark.parametrize(
    ("exchange_id", "stream", "expected"),
    [
        ("binance", "auto", "websocket"),
        ("binance", "websocket", "websocket"),
        ("binance", "poll", "poll"),
        ("bitstamp", "auto", "poll"),  # in ccxt.pro, without watchOHLCV
        ("bitflyer", "auto", "poll"),  # not in ccxt.pro at all
        ("bitflyer", "poll", "poll"),
    ],
)
def test_candle_source_is_websocket_only_where_ccxt_pro_streams_candles(
    exchange_id: str, stream: str, expected: str
) -> None:
    assert candle_source(exchange_id, stream) == expected


@pytest.mark.parametrize("exchange_id", ["bitstamp", "bitflyer"])
def test_stream_websocket_without_ccxt_support_is_a_clear_error(exchange_id: str) -> None:
    with pytest.raises(FatalError, match=f"no websocket candles.*{exchange_id}"):
        CcxtAdapter(CcxtConfig(exchange_id=exchange_id, stream="websocket"))


def test_stream_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="stream must be"):
        CcxtConfig(stream="sse")  # type: ignore[arg-type]
