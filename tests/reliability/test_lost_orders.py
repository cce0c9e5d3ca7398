"""An order request that never reaches the venue: the daemon resolves it as never placed and trades on.

The local exchange server hangs on one order request without applying it, longer than the client waits, so the
daemon cannot know whether the order exists. It must not send it again, must look it up by client order id over
the lookup window, call it never placed, and then trade the symbol again instead of waiting on it forever.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.reliability.harness import (
    ORDER,
    flipping_model,
    ids_sent_twice,
    ledger_venue_differences,
    one_second_exchange,
    posted_ids,
    start_daemon,
)
from tests.support.binance_server import Fault

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

RUN = (
    "bot.max_candles=100000",
    "exchange.timeout_ms=1000",  # the hung request times out on the client well before the server answers
    "bot.submit_timeout_s=2",
)


async def test_an_order_lost_in_transit_is_never_resent_and_the_symbol_trades_again(tmp_path: Path) -> None:
    model = flipping_model(tmp_path / "model")
    async with one_second_exchange() as server:
        daemon = await start_daemon(server, model, tmp_path, name="lost", args=RUN)
        try:
            await asyncio.wait_for(server.wait_for_calls("POST", ORDER, 1), timeout=60)
            server.inject("POST", ORDER, Fault.timeout(hang_s=20))
            sent = len(server.calls("POST", ORDER))
            await asyncio.wait_for(server.wait_for_calls("POST", ORDER, sent + 1), timeout=30)
            lost = posted_ids(server.calls("POST", ORDER))[sent]
            # With the default lookup window (3 s in the harness), two more orders mean it traded on.
            await asyncio.wait_for(server.wait_for_calls("POST", ORDER, sent + 3), timeout=60)
            daemon.process.send_signal(signal.SIGTERM)
            code = await daemon.exit_code()
        finally:
            daemon.kill()
        assert code == 0, daemon.log_tail()
        assert lost not in {o.client_order_id for o in server.orders.values()}, "the hung request was applied"
        assert [e["client_order_id"] for e in daemon.events("order_never_placed")] == [lost], daemon.log_tail()
        assert ids_sent_twice(server) == []
        later = posted_ids(server.calls("POST", ORDER))[sent + 1 :]
        assert lost not in later
        # The lost order is the ledger's, not a venue lookup repeated at every candle.
        refreshes = [e for e in daemon.events("order_refresh_failed") if e["client_order_id"] == lost]
        assert len(refreshes) <= 1, refreshes
        assert ledger_venue_differences(tmp_path / "live.db", server, settled=False) == []
