"""The daemon's own websocket candle stream drops and comes back while it trades.

A live daemon takes its 1 s candles from the local exchange server's Binance kline stream (`exchange.stream=
websocket`, ccxt.pro's `watch_ohlcv`), which the test drives: at every second of the real clock it pushes the
candle that just closed, with the values the server's REST klines serve. After the first order the server cuts
every websocket connection without a closing handshake (a network failure); ccxt.pro reconnects and subscribes
again by itself, and the stream stays silent for three more candles. The candles that closed meanwhile must
come by REST (`feed_backfilled`, asked from the first one the stream missed), none twice and none missing (the
candle guard refuses a duplicate or out-of-order candle, the feed warns of a gap), and the bot trades on: two
more orders after the reconnection, nothing sent twice, the ledger keeps every venue order and fill, and SIGTERM
stops it cleanly. The risk limits are the harness's (`LIVE_ARGS`, out of the way): the model orders at every
candle, which the shipped limits would stop, and this test is about the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.reliability.harness import (
    ORDER,
    assert_sent_once_and_recorded,
    flipping_model,
    one_second_exchange,
    start_daemon,
)
from tests.support.binance_server import BinanceServer, retimed_candles

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

STREAM = "btcusdt@kline_1s"
RUN = (
    "bot.max_candles=100000",
    "exchange.timeout_ms=2000",
    "bot.submit_timeout_s=3",
    "exchange.stream=websocket",
)
WAIT_S = 90.0
"""Failure guard of each wait on the loaded CI machine; they normally take a few seconds."""


class KlinePusher:
    """Pushes each 1 s candle to the stream's subscribers as it closes on the real clock, while `live`."""

    def __init__(self, server: BinanceServer) -> None:
        self.server = server
        spec = server.symbols[0]
        assert spec.first_open_ms is not None
        self.first_open_ms = spec.first_open_ms
        self.candles = retimed_candles(spec.candles, spec.first_open_ms, 1000)
        self.live = True
        self.pushed: list[int] = []
        self.lock = asyncio.Lock()
        """Held over each push, so `pause` returns with no push in flight."""

    async def run(self) -> None:
        while True:
            now_ms = int(time.time() * 1000)
            # Market time itself: the next candle closes at the next whole second.
            await asyncio.sleep((1000 - now_ms % 1000) / 1000 + 0.02)
            open_ms = (int(time.time() * 1000) // 1000) * 1000 - 1000
            async with self.lock:
                if not self.live:
                    continue
                o, h, low, c, v = (float(x) for x in self.candles.ohlcv[(open_ms - self.first_open_ms) // 1000])
                if await self.server.push_kline("BTCUSDT", open_ms, closed=True, ohlcv=(o, h, low, c, v)):
                    self.pushed.append(open_ms)

    async def pause(self) -> int:
        """Stop pushing; return the open time of the last candle pushed."""
        async with self.lock:
            self.live = False
            return self.pushed[-1]


@contextlib.asynccontextmanager
async def pushing(server: BinanceServer) -> AsyncIterator[KlinePusher]:
    pusher = KlinePusher(server)
    task = asyncio.create_task(pusher.run(), name="kline-pusher")
    try:
        yield pusher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_daemons_websocket_drops_and_comes_back_with_no_candle_lost_or_repeated(tmp_path: Path) -> None:
    model = flipping_model(tmp_path / "model")
    async with one_second_exchange() as server, pushing(server) as pusher:
        daemon = await start_daemon(server, model, tmp_path, name="websocket", args=RUN)
        try:
            await asyncio.wait_for(server.wait_for_subscriptions(STREAM, 1), timeout=WAIT_S)
            await asyncio.wait_for(server.wait_for_calls("POST", ORDER, 1), timeout=WAIT_S)
            dropped_after = await pusher.pause()
            subscribed = server.ws_subscriptions.count(STREAM)
            assert server.drop_websockets() >= 1
            await asyncio.wait_for(server.wait_for_subscriptions(STREAM, subscribed + 1), timeout=WAIT_S)
            # The stream stays silent a while after the reconnection (the fault's length in market time: three
            # candles close unseen), as when the venue's stream lags behind a reconnect.
            await asyncio.sleep(3.0)
            pusher.live = True
            sent = len(server.calls("POST", ORDER))
            await asyncio.wait_for(server.wait_for_calls("POST", ORDER, sent + 2), timeout=WAIT_S)
            code = await daemon.stop()
        finally:
            daemon.kill()
        assert code == 0, daemon.log_tail()
        # ccxt.pro reconnects and subscribes again by itself; the candles closed while the stream was away came by
        # REST, asked from the first one the stream had not sent.
        # (A candle that closed between the warm-up and the subscription may also have come by REST at the start.)
        backfills = [int(b["since_ms"]) for b in daemon.events("feed_backfilled")]
        after_drop = [since for since in backfills if since > dropped_after]
        # The first after the drop asks from the first candle the stream missed; if ccxt.pro failed the pending read
        # (the engine was waiting on it), the feed backfilled at once and again when the stream resumed.
        assert after_drop[:1] == [dropped_after + 1000] and after_drop == sorted(set(after_drop)), backfills
        assert len(server.calls("GET", "/api/v3/klines")) == 1 + len(backfills)  # the warm-up, then the backfills
        assert daemon.events("feed_candle_missing") == [], daemon.log_tail()
        assert daemon.events("candle_refused") == [], daemon.log_tail()
        # The stream delivered candles again after the reconnection (not REST alone), with a gap the REST filled.
        resumed = [t for t in pusher.pushed if t > dropped_after]
        assert resumed and resumed[0] >= dropped_after + 3000, (dropped_after, resumed)
        assert_sent_once_and_recorded(server, tmp_path / "live.db", daemon)
