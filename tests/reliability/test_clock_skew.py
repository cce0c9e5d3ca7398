"""Clock skew against the running daemon: the machine's clock and the venue's disagree.

The local exchange server keeps its own clock (`clock_offset_ms` from the real one): it signs off requests, and
closes and serves candles, by that clock, as Binance does. Two cases:

- the machine's clock runs 90 s ahead of the venue's from the start: candles close by the venue's clock, so a
  bot on its own clock would ask for candles not yet closed and call every candle it got 90 s stale (more than
  the 60 timeframes the harness allows on 1 s candles) and never trade; on the venue's clock (ccxt measures the
  offset when it loads the markets) it trades;
- the venue's clock steps 30 s ahead mid-run (an NTP step on either side): the next signed order is refused
  (-1021, outside the recvWindow) before the venue does anything; the adapter measures the offset again and
  resends the same request once, and the bot trades on by the new clock, with no order on the venue twice.

The risk limits are the harness's (`LIVE_ARGS`, out of the way): the model orders at every candle, which the
shipped limits would stop, and this test is about the clocks.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.reliability.harness import (
    ORDER,
    assert_sent_once_and_recorded,
    flipping_model,
    ids_sent_twice,
    ledger_venue_differences,
    one_second_exchange,
    posted_ids,
    start_daemon,
)
from tests.support.binance_server import BinanceServer

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

RUN = ("bot.max_candles=100000", "exchange.timeout_ms=2000", "bot.submit_timeout_s=3")


class _VenueClock:
    """The server's market clock follows its skewed clock (set once the server exists)."""

    server: BinanceServer | None = None

    def __call__(self) -> int:
        return int(time.time() * 1000) if self.server is None else self.server.now_ms()


async def test_a_machine_clock_90_s_ahead_of_the_venue_trades_by_the_venue_clock(tmp_path: Path) -> None:
    clock = _VenueClock()
    model = flipping_model(tmp_path / "model")
    async with one_second_exchange(clock_offset_ms=-90_000, market_clock_ms=clock) as server:
        clock.server = server
        daemon = await start_daemon(server, model, tmp_path, name="ahead", args=RUN)
        try:
            await asyncio.wait_for(server.wait_for_calls("POST", ORDER, 3), timeout=90)
            code = await daemon.stop()
        finally:
            daemon.kill()
        assert code == 0, daemon.log_tail()
        # It never refused an order as stale, and it said once that the clocks differ.
        assert [r for r in daemon.events("risk_refused") if r.get("reason") == "stale_data"] == [], daemon.log_tail()
        (offset,) = daemon.events("venue_clock_offset")
        assert abs(int(offset["offset_ms"]) - 90_000) < 2_000, offset
        # And it measures the venue's clock again every hour (bot.schedule.clock_sync, shipped on).
        (jobs,) = daemon.events("scheduled_jobs")
        assert jobs["jobs"]["clock_sync"] == "3 * * * *", jobs
        assert_sent_once_and_recorded(server, tmp_path / "live.db", daemon)


async def test_a_venue_clock_stepping_30_s_mid_run_is_measured_again_and_trading_goes_on(tmp_path: Path) -> None:
    clock = _VenueClock()
    model = flipping_model(tmp_path / "model")
    async with one_second_exchange(market_clock_ms=clock) as server:
        clock.server = server
        daemon = await start_daemon(server, model, tmp_path, name="step", args=RUN)
        try:
            await asyncio.wait_for(server.wait_for_calls("POST", ORDER, 1), timeout=60)
            sent = len(server.calls("POST", ORDER))
            server.clock_offset_ms = 30_000
            await asyncio.wait_for(server.wait_for_calls("POST", ORDER, sent + 3), timeout=90)
            code = await daemon.stop()
        finally:
            daemon.kill()
        assert code == 0, daemon.log_tail()
        resynced = daemon.events("venue_clock_resynced")
        assert resynced, daemon.log_tail()
        assert abs(int(resynced[-1]["offset_ms"]) + 30_000) < 2_000, resynced
        # The one refused request was resent with its id; every id is on the venue at most once.
        twice = ids_sent_twice(server)
        assert len(twice) <= 1, twice
        on_venue = Counter(order.client_order_id for order in server.orders.values())
        assert all(on_venue[cid] <= 1 for cid in posted_ids(server.calls("POST", ORDER))), on_venue
        assert ledger_venue_differences(tmp_path / "live.db", server, settled=False) == [], daemon.log_tail()
