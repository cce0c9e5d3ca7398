"""Crash recovery (issue 6): `kill -9` of the live daemon before send, after send and after fill, then a restart.

The daemon runs as a real process (``python -m bot mode=live``) against the local Binance-wire server, which
lives in the test process and so keeps its orders, trades and balances across the daemon's death. The server
itself kills the daemon (``Fault.kill``) at the request that marks the crash point, so the crash lands exactly
there. A second daemon on the same ledger must then reconcile by client order id, end with ledger and venue in
agreement, and never send a client order id twice.

Candles: the server re-stamps the bundled BTC/USDT candles as 1-second bars on the real clock, so a candle
closes every second for the daemon in its own process. Everything waits on events (a request reaching the
server, a process exiting); timeouts only guard against a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest

from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from adapters.types import ClientOrderId, OrderStatus
from bot.ledger.store import Ledger
from tests.support.binance_server import API_KEY, SECRET, SYMBOLS, BinanceServer, Fault, LoggedRequest
from tests.support.policy_model import MlpWeights, export_policy, fitted_spec

REPO = Path(__file__).resolve().parents[1]
SYMBOL = "BTC/USDT"
ORDER = "/api/v3/order"
EXIT_TIMEOUT_S = 45.0
"""Failure guard: a daemon that has not exited by then is stuck."""
VENUE_STATUS = {
    "NEW": OrderStatus.OPEN,
    "PARTIALLY_FILLED": OrderStatus.PARTIALLY_FILLED,
    "FILLED": OrderStatus.FILLED,
    "CANCELED": OrderStatus.CANCELLED,
    "EXPIRED": OrderStatus.CANCELLED,
}
TOLERANCE = Decimal("1e-8")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A policy that always asks for half the equity in BTC: the first decision after warm-up buys.

    Half, not all: a market order fills at the next candle's price, and all-in sizing would be refused for
    insufficient balance whenever the price rose in between."""
    spec = fitted_spec(load_ohlcv(sample_path("BTC/USDT-1h")), train_rows=40_000, window=16)
    weights = np.zeros((spec.observation_size, 2), dtype=np.float32)
    bias = np.array([0.0, 1.0], dtype=np.float32)
    return export_policy(tmp_path_factory.mktemp("model"), spec, MlpWeights(((weights, bias),)), (0.0, 0.5))


@pytest.fixture
async def server() -> AsyncIterator[BinanceServer]:
    """The local exchange, serving BTCUSDT as 1 s candles up to the real clock (the 2024 candles are 'now')."""
    now_ms = int(time.time()) * 1000
    spec = dataclasses.replace(SYMBOLS[0], timeframe="1s", first_open_ms=now_ms - 55_740 * 1000)
    exchange = BinanceServer(
        symbols=(spec,),
        market_clock_ms=lambda: int(time.time() * 1000),
        balances={"USDT": [Decimal(10_000), Decimal(0)], "BTC": [Decimal(0), Decimal(0)]},
    )
    await exchange.start()
    try:
        yield exchange
    finally:
        await exchange.stop()


@dataclass
class Daemon:
    """One `python -m bot` process and the file its output goes to."""

    process: asyncio.subprocess.Process
    log_path: Path
    log_file: IO[bytes]

    def events(self, name: str) -> list[dict[str, Any]]:
        """The structured log lines (JSON on a non-TTY) with `event == name`."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                if isinstance(row, dict) and row.get("event") == name:
                    found.append(row)
        return found

    async def exit_code(self) -> int:
        """Wait for the process to end; fail with its log if it does not."""
        try:
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                code = await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            pytest.fail(f"daemon did not exit within {EXIT_TIMEOUT_S} s; log:\n{self.log_tail()}")
        finally:
            self.log_file.close()
        return code

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the daemon's output."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test started; any still running at the end is killed (by its own pid)."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.process.returncode is None:
            daemon.process.kill()
        daemon.log_file.close()


async def start_daemon(
    server: BinanceServer,
    model: Path,
    tmp_path: Path,
    daemons: list[Daemon],
    *,
    name: str,
    max_candles: int,
    lookup_window_s: float = 1.0,
) -> Daemon:
    """Start the live daemon on the test ledger against `server`."""
    args = [
        "mode=live",
        "bot.confirm_live=true",
        f"bot.model_path={model}",
        f"bot.ledger_dir={tmp_path}",
        "bot.timeframe=1s",
        f"bot.max_candles={max_candles}",
        "bot.schedule.equity_snapshot=",
        "bot.schedule.reconciliation=",
        "bot.risk.max_position_notional=1e12",
        "bot.risk.max_total_notional=1e12",
        "bot.risk.max_order_notional=1e12",
        "bot.risk.max_orders_per_minute=1000",
        "bot.risk.max_daily_loss=1",
        "bot.risk.max_drawdown=1",
        "bot.risk.reduce_at=1",
        # One-second candles on a loaded CI machine: do not call a candle a few seconds old stale.
        "bot.risk.stale_after_timeframes=60",
        # An order no source knows is taken as never placed once this old.
        f"bot.order_lookup.window_s={lookup_window_s}",
        f"exchange.api_url_override={server.url}",
        "exchange.stream=poll",  # the local server pushes klines only when a test drives it
        "exchange.enable_rate_limit=false",
        "exchange.timeout_ms=5000",
        "exchange.poll_delay_s=0.05",
        "log_level=INFO",
    ]
    env = {
        **os.environ,
        "AI_TRADING_BINANCE_API_KEY": API_KEY,
        "AI_TRADING_BINANCE_SECRET": SECRET,
    }
    log_path = tmp_path / f"{name}.log"
    log_file = log_path.open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT
    )
    daemon = Daemon(process, log_path, log_file)
    daemons.append(daemon)
    return daemon


def posted_ids(requests: list[LoggedRequest]) -> list[str]:
    """Client order ids of the order submissions among `requests`."""
    return [r.params["newClientOrderId"] for r in requests if r.method == "POST" and r.path == ORDER]


def assert_ledger_matches_venue(ledger_path: Path, server: BinanceServer) -> None:
    """Orders, fills, balances and the position of the ledger agree with the server's orders, trades, balances."""
    with Ledger(f"sqlite:///{ledger_path}") as ledger:
        orders = {o.client_order_id: o for o in ledger.orders()}
        fills = ledger.fills()
        position = ledger.position(SYMBOL)
        flows = ledger.currency_flows()
        # With the bot's own book: the account = what it held outside the bot at the first start + the bot's
        # allocation (bot.capital) + the bot's own fills.
        state = ledger.state("book.")
        baselines = {
            c: Decimal(state.get(f"book.outside.{c}", "0")) + Decimal(state.get(f"book.capital.{c}", "0"))
            for c in ("BTC", "USDT")
        }
    venue_orders = {o.client_order_id: o for o in server.orders.values()}
    assert set(venue_orders) <= set(orders), "the venue holds orders the ledger does not know"
    for cid, order in orders.items():
        venue = venue_orders.get(cid)
        if venue is None:
            # Written before sending, never placed: closed without fills.
            assert order.status in (OrderStatus.REJECTED, OrderStatus.CANCELLED), (cid, order.status)
            assert order.filled == 0
            continue
        assert order.status is VENUE_STATUS[venue.status], (cid, order.status, venue.status)
        assert order.venue_order_id == str(venue.order_id)
        assert order.filled == venue.executed_qty
    assert all(o.status.is_final for o in orders.values()), "an order is left pending after recovery"

    cid_of = {o.order_id: o.client_order_id for o in server.orders.values()}
    venue_fills = sorted(
        (str(t["id"]), cid_of[t["orderId"]], Decimal(t["qty"]), Decimal(t["price"]), Decimal(t["commission"]))
        for t in server.trades
    )
    ledger_fills = sorted((f.trade_id, f.client_order_id, f.amount, f.price, f.fee) for f in fills)
    assert ledger_fills == venue_fills

    for currency in ("BTC", "USDT"):
        free, locked = server.balance(currency)
        explained = baselines[currency] + flows.get(currency, Decimal(0))
        assert abs(explained - (free + locked)) <= TOLERANCE, (currency, explained, free + locked)
    btc_free, btc_locked = server.balance("BTC")
    held = btc_free + btc_locked - baselines["BTC"]
    assert abs(position.amount - held) <= TOLERANCE, (position.amount, held)


@dataclass(frozen=True)
class KillPoint:
    """Where the server kills the daemon, and what the ledger and venue hold at that moment."""

    method: str
    path: str
    after_apply: bool
    ledger_status: OrderStatus
    """The killed order's status in the ledger right after the kill."""
    on_venue: bool
    """Whether the venue has the order at the kill."""
    reconciled: tuple[int, int]
    """(orders updated, fills recorded) by the restart's reconciliation."""


KILL_POINTS = {
    # POST /api/v3/order arrives; the daemon dies before the venue handles it.
    "before_send": KillPoint("POST", ORDER, False, OrderStatus.SENT, False, (1, 0)),
    # The venue places (and fills) the market order; the daemon dies before the answer leaves.
    "after_send": KillPoint("POST", ORDER, True, OrderStatus.SENT, True, (1, 1)),
    # The daemon recorded the filled order and asks for its trades: it dies before the fill is in the ledger.
    "after_fill": KillPoint("GET", "/api/v3/myTrades", False, OrderStatus.FILLED, True, (0, 1)),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
@pytest.mark.integration
async def test_restart_after_kill_reconciles_and_never_sends_twice(
    point: str, server: BinanceServer, model_path: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    kill = KILL_POINTS[point]
    ledger_path = tmp_path / "live.db"

    first = await start_daemon(server, model_path, tmp_path, daemons, name="first", max_candles=1000)
    server.inject(kill.method, kill.path, Fault.kill(first.process.pid, after_apply=kill.after_apply))
    assert await first.exit_code() == -9, f"the daemon was not killed at {point}; log:\n{first.log_tail()}"

    # The crash left exactly one order behind, in the state the kill point implies.
    (cid,) = posted_ids(server.requests)
    with Ledger(f"sqlite:///{ledger_path}") as ledger:
        (order,) = ledger.orders()
        assert ledger.fills() == []
    assert order.client_order_id == cid
    assert order.status is kill.ledger_status
    venue_ids = [o.client_order_id for o in server.orders.values()]
    assert venue_ids == ([cid] if kill.on_venue else [])
    if kill.on_venue:
        assert len(server.trades) == 1

    # The restart comes after the crashed order's lookup window: a window no longer than the order's age now
    # (the restart's reconciliation then rejects an order no source knows at once, not over a new window; a
    # fast machine restarts within the 1 s the first daemon ran with).
    assert order.created_at is not None
    age_s = (datetime.now(UTC) - order.created_at).total_seconds()
    window_s = max(round(age_s - 0.01, 3), 0.001)
    restart_at = len(server.requests)
    second = await start_daemon(
        server, model_path, tmp_path, daemons, name="second", max_candles=2, lookup_window_s=window_s
    )
    assert await second.exit_code() == 0, second.log_tail()

    (report,) = second.events("reconciliation_done")
    assert report["discrepancies"] == []
    assert (report["orders_updated"], report["fills_recorded"]) == kill.reconciled
    after_restart = server.requests[restart_at:]
    if kill.ledger_status is not OrderStatus.FILLED:
        # The unknown order was resolved by its client order id, not by a venue id the daemon never learnt.
        lookups = [r for r in after_restart if r.method == "GET" and r.path == ORDER]
        assert lookups and lookups[0].params.get("origClientOrderId") == cid
    # No client order id ever reached the venue twice: the crashed order was not re-sent after the restart.
    posted = posted_ids(server.requests)
    assert Counter(posted).most_common(1)[0][1] == 1, posted
    assert cid not in posted_ids(after_restart)
    crashed_amount = Decimal(server.calls("POST", ORDER)[0].params["quantity"])
    fresh = [Decimal(r.params["quantity"]) for r in after_restart if r.method == "POST" and r.path == ORDER]
    if kill.on_venue:
        # The restart knows the position is held: at most a small rebalance for the price move, not a second buy.
        assert all(amount < crashed_amount / 5 for amount in fresh), (crashed_amount, fresh)
    else:
        # The decision behind the unplaced order is stale: it is closed, and a fresh decision buys anew.
        assert fresh and fresh[0] > crashed_amount / 2, (crashed_amount, fresh)
    with Ledger(f"sqlite:///{ledger_path}") as ledger:
        resolved = ledger.get_order(ClientOrderId(cid))
    assert resolved is not None
    assert resolved.status is (OrderStatus.FILLED if kill.on_venue else OrderStatus.REJECTED)
    assert_ledger_matches_venue(ledger_path, server)
