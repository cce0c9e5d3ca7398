"""Exchange faults against the running daemon: each injected by the local exchange server while the bot trades.

A live daemon (real ccxt, the Binance wire format, a SQLite ledger) trades 1 s candles with a model that flips its
position at every candle. After its first order the server injects one fault on the order endpoint: 5xx twice,
429 with Retry-After (ccxt's rate limiter on, as in production), a Binance reject, a latency spike, a request
that times out unanswered (its outcome unknown until looked up), a partial fill, a response lost after the order
was applied, or a 502 after it was applied. The daemon must trade on (two more orders reach the venue), never
send one client order id twice, keep every venue order and fill in its ledger, and stop cleanly on SIGTERM. The
risk limits are the harness's (`LIVE_ARGS`, out of the way): the model orders at every candle, which the shipped
limits would stop, and this test is about the exchange's faults.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
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
    "exchange.timeout_ms=2000",
    "bot.submit_timeout_s=3",
    "exchange.enable_rate_limit=true",  # ccxt's own limiter on, as in production
)

FAULTS = {
    "http_503_twice": Fault.server_error(503, times=2),
    "http_429_retry_after": Fault.rate_limited(retry_after_s=1),
    "rejected_insufficient_balance": Fault.rejected(-2010, "Account has insufficient balance for requested action."),
    "latency_1_5_s": Fault(latency_s=1.5),
    "partial_fill": Fault(partial_fill=Decimal("0.5")),
    "response_lost_after_apply": Fault.lost_response(),
    "http_502_after_apply": Fault(status_after_apply=502),
    "timeout_no_answer": Fault.timeout(hang_s=4),  # past exchange.timeout_ms: the outcome is unknown to the bot
}


@pytest.mark.parametrize("name", sorted(FAULTS))
async def test_the_running_daemon_trades_on_through_an_exchange_fault(tmp_path: Path, name: str) -> None:
    model = flipping_model(tmp_path / "model")
    async with one_second_exchange() as server:
        daemon = await start_daemon(server, model, tmp_path, name=name, args=RUN)
        try:
            await asyncio.wait_for(server.wait_for_calls("POST", ORDER, 1), timeout=60)
            sent = len(server.calls("POST", ORDER))
            server.inject("POST", ORDER, FAULTS[name])
            # The faulted request, then two more orders: the bot trades on after the fault.
            await asyncio.wait_for(server.wait_for_calls("POST", ORDER, sent + 3), timeout=90)
            code = await daemon.stop()
        finally:
            daemon.kill()
        assert code == 0, daemon.log_tail()
        assert ids_sent_twice(server) == [], daemon.log_tail()
        faulted = posted_ids(server.calls("POST", ORDER))[sent]
        assert faulted, "the faulted request carried our client order id"
        on_venue = [o for o in server.orders.values() if o.client_order_id == faulted]
        if name in ("rejected_insufficient_balance", "timeout_no_answer"):
            assert on_venue == [], "a rejected order, or one the venue never answered, is not on the venue"
        elif name == "partial_fill":
            assert len(on_venue) == 1 and on_venue[0].executed_qty < on_venue[0].orig_qty
        elif name.endswith("after_apply"):
            assert len(on_venue) == 1, "the order was applied once and never sent again"
        assert ledger_venue_differences(tmp_path / "live.db", server, settled=False) == [], daemon.log_tail()
