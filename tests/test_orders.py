"""Order manager: state machine, ids, sizing, submission against the paper venue, timeouts, crash recovery.

The venue is the real `adapters.paper.venue.PaperVenue` driven by real BTC/USDT 1h candles from the bundled sample.
Faults that a network would cause (a lost response, a request that never arrived, an external deposit) cannot
happen with the in-process paper venue, so `FaultyVenue` wraps it and injects exactly those; everything else
is the paper venue's own behaviour. Crashes are reproduced by building the state a ``kill -9`` at each point
leaves (the ledger file as committed, the venue as it is) and starting a fresh Ledger + OrderManager over the same
SQLite file; `test_kill_9_while_writing_keeps_every_committed_order` kills a real writer process with SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from structlog.testing import capture_logs

from adapters.ccxt.adapter import CcxtAdapter
from adapters.ccxt.binance import BINANCE_SPOT_OPTIONS
from adapters.ccxt.config import CcxtConfig, RetryConfig
from adapters.data.sample import sample_path
from adapters.errors import InvalidOrder, OrderStateUnknown, TransientError
from adapters.paper.config import BTC_USDT, PaperConfig
from adapters.paper.venue import PaperVenue
from adapters.secrets import Credentials
from adapters.types import (
    Balance,
    Candle,
    ClientOrderId,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
)
from bot.events import Event, FillEvent, OrderEvent, TradeClosedEvent
from bot.ledger.store import Ledger
from bot.ledger.types import DuplicateOrderError
from bot.orders.book import Book, CapitalConfig
from bot.orders.manager import LookupConfig, OrderManager, SymbolBlocked
from bot.orders.reconciliation import ReconciliationError
from bot.orders.sizing import new_client_order_id, plan_order
from bot.orders.state import ALLOWED_TRANSITIONS, IllegalTransition, check_transition
from tests.support.binance_server import BinanceServer, Fault

S = OrderStatus
SYMBOL = "BTC/USDT"
ROOT = Path(__file__).resolve().parents[1]


@cache
def _frame() -> pd.DataFrame:
    return pd.read_parquet(sample_path("BTC/USDT-1h")).iloc[:200]


def candle(i: int) -> Candle:
    """Return real candle `i` of the bundled BTC/USDT 1h sample."""
    row = _frame().iloc[i]
    return Candle(
        SYMBOL,
        "1h",
        row["date"].to_pydatetime(),
        float(row["open"]),
        float(row["high"]),
        float(row["low"]),
        float(row["close"]),
        float(row["volume"]),
    )


class Clock:
    """A settable clock (the candle close time, like the paper venue's own)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class NoWait:
    """The order manager's `sleep`: records the waits between lookups and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class Gate:
    """The order manager's `sleep`: every wait between lookups lasts until the test opens the gate."""

    def __init__(self) -> None:
        self.open = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        await self.open.wait()


class World:
    """A paper venue fed real candles, a clock that follows it, and the ledger file they share."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self.venue = PaperVenue(PaperConfig(initial_balances={"USDT": Decimal("10000")}))
        self.bar = 0
        self.clock = Clock(candle(0).open_time)
        self.sleep = NoWait()
        self.advance()

    def advance(self) -> Candle:
        """Close the next candle on the venue and move the clock to its close."""
        c = candle(self.bar)
        self.venue.book.on_candle(c)
        self.bar += 1
        self.clock.now = c.open_time + timedelta(hours=1)
        return c

    def manager(self, ledger: Ledger, venue: Any = None, **kwargs: Any) -> OrderManager:
        kwargs.setdefault("sleep", self.sleep)
        return OrderManager(ledger, venue or self.venue, bot_id="t1", clock=self.clock, **kwargs)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path / "paper.db")


@pytest.fixture
def ledger(world: World) -> Iterator[Ledger]:
    led = Ledger(world.url)
    yield led
    led.close()


class FaultyVenue:
    """The paper venue with network faults injected into create_order / fetch_balances (see module doc)."""

    def __init__(self, inner: PaperVenue) -> None:
        self.inner = inner
        self.name = "faulty-paper"
        self.create_calls: list[ClientOrderId] = []
        self.lose_response = 0
        """Apply the next N orders but raise OrderStateUnknown instead of answering."""
        self.drop_request = 0
        """Raise TransientError for the next N orders without applying them."""
        self.extra_balance: dict[str, Decimal] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def create_order(self, request: OrderRequest) -> Order:
        self.create_calls.append(request.client_order_id)
        if self.drop_request:
            self.drop_request -= 1
            raise TransientError("create_order: connection reset before the request was written")
        order = await self.inner.create_order(request)
        if self.lose_response:
            self.lose_response -= 1
            raise OrderStateUnknown("create_order: response lost")
        return order

    async def fetch_balances(self) -> dict[str, Balance]:
        balances = await self.inner.fetch_balances()
        for currency, extra in self.extra_balance.items():
            b = balances.get(currency, Balance(currency, Decimal(0)))
            balances[currency] = Balance(currency, b.free + extra, b.used)
        return balances


def market_buy(cid: str, amount: str = "0.01") -> OrderRequest:
    return OrderRequest(ClientOrderId(cid), SYMBOL, Side.BUY, OrderType.MARKET, Decimal(amount))


# --------------------------------------------------------------------------------------------- state machine


def test_transition_table_allows_only_forward_moves_and_finals_are_terminal() -> None:
    for final in (S.FILLED, S.CANCELLED, S.REJECTED):
        assert ALLOWED_TRANSITIONS[final] == frozenset()
    assert set(ALLOWED_TRANSITIONS) == set(OrderStatus)
    for src, targets in ALLOWED_TRANSITIONS.items():
        assert S.NEW not in targets, f"{src} -> NEW must be illegal"
        assert S.SENT not in targets or src is S.NEW
    with capture_logs() as logs, pytest.raises(IllegalTransition, match="filled -> open"):
        check_transition("x", S.FILLED, S.OPEN)
    assert logs[0]["event"] == "order_transition_illegal"
    check_transition("x", S.SENT, S.UNKNOWN)
    check_transition("x", S.UNKNOWN, S.FILLED)


def test_client_order_ids_are_unique_short_and_exchange_safe() -> None:
    ids = {new_client_order_id("my bot/1", "BTC/USDT:USDT") for _ in range(5000)}
    assert len(ids) == 5000
    pattern = re.compile(r"^[A-Za-z0-9-]{1,36}$")
    assert all(pattern.match(i) for i in ids)
    assert all(i.startswith("mybot1-btcusdtu-") for i in ids)


# --------------------------------------------------------------------------------------------- sizing


def test_plan_order_sizes_to_target_rounds_and_explains_no_order() -> None:
    price = Decimal("43000")
    cid = ClientOrderId("p1")
    plan = plan_order(0.5, Decimal(0), price, BTC_USDT, Decimal("10000"), client_order_id=cid)
    assert plan.request is not None and plan.request.side is Side.BUY
    assert plan.request.amount == Decimal("0.11627")  # 5000 / 43000 = 0.116279..., rounded down to the lot step
    reduce = plan_order(0.0, Decimal("0.2"), price, BTC_USDT, Decimal("10000"), client_order_id=cid)
    assert reduce.request is not None and reduce.request.side is Side.SELL and reduce.request.amount == Decimal("0.2")
    at_target = plan_order(0.5, Decimal("0.11627"), price, BTC_USDT, Decimal("10000"), client_order_id=cid)
    assert at_target.request is None and at_target.reason == "at_target"
    tiny = plan_order(0.5, Decimal("0.1162"), price, BTC_USDT, Decimal("10000"), client_order_id=cid)
    assert tiny.request is None and tiny.reason is not None and tiny.reason.startswith("below_minimum")
    no_short = plan_order(-1.0, Decimal(0), price, BTC_USDT, Decimal("10000"), client_order_id=cid)
    assert no_short.request is None and no_short.target_amount == 0
    short = plan_order(-0.1, Decimal(0), price, BTC_USDT, Decimal("10000"), client_order_id=cid, allow_short=True)
    assert short.request is not None and short.request.side is Side.SELL
    limit = plan_order(
        0.5,
        Decimal(0),
        Decimal("43000.127"),
        BTC_USDT,
        Decimal("10000"),
        client_order_id=cid,
        order_type=OrderType.LIMIT,
    )
    assert limit.request is not None and limit.request.price == Decimal("43000.13")
    with pytest.raises(ValueError, match="price must be"):
        plan_order(0.5, Decimal(0), Decimal(0), BTC_USDT, Decimal("10000"), client_order_id=cid)


# --------------------------------------------------------------------------------------------- submit flow


async def test_market_order_goes_sent_open_filled_with_fills_positions_and_events(world: World, ledger: Ledger) -> None:
    events: list[Event] = []
    om = world.manager(ledger, emit=events.append)
    order = await om.submit(market_buy("buy-1"), model_sha="a" * 64)
    assert order.status is S.OPEN and order.venue_order_id is not None
    assert [t.to_status for t in ledger.transitions(ClientOrderId("buy-1"))] == [S.NEW, S.SENT, S.OPEN]
    world.advance()  # the paper venue fills market orders on the next candle's open
    venue_order = await world.venue.fetch_order(SYMBOL, ClientOrderId("buy-1"))
    filled = await om.apply(venue_order)
    assert filled.status is S.FILLED and filled.filled == Decimal("0.01")
    fills = ledger.fills(SYMBOL)
    assert len(fills) == 1 and fills[0].amount == Decimal("0.01")
    assert ledger.position(SYMBOL).amount == world.venue.book.position(SYMBOL) == Decimal("0.01")
    assert [type(e) for e in events] == [OrderEvent, OrderEvent, OrderEvent, FillEvent]
    assert [e.status for e in events if isinstance(e, OrderEvent)] == [S.SENT, S.OPEN, S.FILLED]
    assert events[0].model_sha == "a" * 64  # type: ignore[attr-defined]
    # Sell it back: the round trip closes and a trade_closed event follows the fill.
    sell = OrderRequest(ClientOrderId("sell-1"), SYMBOL, Side.SELL, OrderType.MARKET, Decimal("0.01"))
    await om.submit(sell)
    world.advance()
    await om.apply(await world.venue.fetch_order(SYMBOL, ClientOrderId("sell-1")))
    closed = ledger.closed_trades()
    assert len(closed) == 1 and closed[0].qty == Decimal("0.01")
    assert isinstance(events[-1], TradeClosedEvent) and events[-1].realized_pnl == closed[0].realized_pnl
    report = await om.reconcile([SYMBOL])
    assert report.discrepancies == [] and report.baselines_set["USDT"] == Decimal("10000")


async def test_rejected_order_is_recorded_and_never_retried(world: World, ledger: Ledger) -> None:
    venue = FaultyVenue(world.venue)
    om = world.manager(ledger, venue)
    with capture_logs() as logs:
        order = await om.submit(market_buy("too-big", "5"))  # 5 BTC at ~4300 USDT > 10000 USDT
    assert order.status is S.REJECTED
    assert "needs about" in (ledger.order_reason(ClientOrderId("too-big")) or "")
    assert venue.create_calls == ["too-big"]
    assert any(log["event"] == "order_rejected" for log in logs)


async def test_lost_response_is_resolved_by_lookup_without_a_second_order(world: World, ledger: Ledger) -> None:
    venue = FaultyVenue(world.venue)
    venue.lose_response = 1
    om = world.manager(ledger, venue)
    order = await om.submit(market_buy("lost-1"))
    assert order.status is S.OPEN
    assert venue.create_calls == ["lost-1"]
    assert [t.to_status for t in ledger.transitions(ClientOrderId("lost-1"))] == [S.NEW, S.SENT, S.UNKNOWN, S.OPEN]
    assert len(world.venue.book.open_orders(SYMBOL)) == 1


async def test_request_that_never_arrived_is_never_resent_and_blocks_the_symbol_until_resolved(
    world: World, ledger: Ledger
) -> None:
    venue = FaultyVenue(world.venue)
    venue.drop_request = 1
    om = world.manager(ledger, venue, lookup=LookupConfig(window_s=30, attempts=4))
    order = await om.submit(market_buy("drop-1"))
    assert order.status is S.UNKNOWN and om.is_blocked(SYMBOL)
    with pytest.raises(SymbolBlocked):
        await om.submit(market_buy("drop-2"))
    await om.wait_resolved(SYMBOL)
    assert not om.is_blocked(SYMBOL)
    final = ledger.get_order(ClientOrderId("drop-1"))
    assert final is not None and final.status is S.REJECTED
    assert "never placed" in (ledger.order_reason(ClientOrderId("drop-1")) or "")
    assert venue.create_calls == ["drop-1"]  # looked for, never sent again
    assert world.sleep.waits == pytest.approx([2.0, 4.0, 8.0, 16.0])  # doubling gaps adding up to the window
    assert ledger.orders(symbol=SYMBOL)[-1].client_order_id == "drop-1"  # drop-2 never reached the ledger
    assert world.venue.book.open_orders(SYMBOL) == []


async def test_order_whose_lookup_lags_is_resolved_by_the_trade_history(world: World, ledger: Ledger) -> None:
    class LaggingLookup(FaultyVenue):
        """The order exists and filled, but the order lookup and open orders do not show it yet."""

        async def fetch_order(self, symbol: str, client_order_id: ClientOrderId) -> Order:
            from adapters.errors import OrderNotFound

            raise OrderNotFound(f"{client_order_id}: order does not exist")

    venue = LaggingLookup(world.venue)
    om = world.manager(ledger, venue)
    far = OrderRequest(
        ClientOrderId("lim-x"), SYMBOL, Side.BUY, OrderType.LIMIT, Decimal("0.01"), Decimal(str(candle(1).open * 2))
    )
    await om.submit(far)  # rests until the next candle crosses it
    world.advance()
    order = await om.resolve(ClientOrderId("lim-x"))
    assert order.status is S.FILLED and order.filled == Decimal("0.01")
    assert ledger.transitions(ClientOrderId("lim-x"))[-1].reason == "resolved by trade history"
    assert ledger.position(SYMBOL).amount == Decimal("0.01")


async def test_open_limit_order_times_out_and_is_cancelled(world: World, ledger: Ledger) -> None:
    om = world.manager(ledger, order_timeout_s=3601)
    far = OrderRequest(ClientOrderId("lim-1"), SYMBOL, Side.BUY, OrderType.LIMIT, Decimal("0.01"), Decimal("3000"))
    assert (await om.submit(far)).status is S.OPEN
    world.advance()
    assert await om.check_timeouts() == []  # one hour old: one second short of the timeout
    world.clock.now += timedelta(seconds=1)
    touched = await om.check_timeouts()
    assert [o.status for o in touched] == [S.CANCELLED]
    assert world.venue.book.open_orders(SYMBOL) == []
    assert ledger.transitions(ClientOrderId("lim-1"))[-1].reason == "timeout"


async def test_duplicate_client_order_id_is_refused_before_sending(world: World, ledger: Ledger) -> None:
    venue = FaultyVenue(world.venue)
    om = world.manager(ledger, venue)
    await om.submit(market_buy("dup"))
    with pytest.raises(DuplicateOrderError):
        await om.submit(market_buy("dup"))
    assert venue.create_calls == ["dup"]


# --------------------------------------------------------------------------------------------- crash recovery


def _restart(world: World, venue: Any = None) -> tuple[Ledger, OrderManager]:
    """Open the ledger file afresh, as a restarted process would."""
    led = Ledger(world.url)
    return led, world.manager(led, venue)


async def test_crash_after_ledger_new_before_send(world: World) -> None:
    led = Ledger(world.url)
    led.record_new_order(market_buy("c-new"), ts=world.clock())  # NEW committed, then kill -9
    led.close()
    venue = FaultyVenue(world.venue)
    led, om = _restart(world, venue)
    report = await om.reconcile([SYMBOL])
    assert report.orders_updated == [("c-new", S.NEW, S.CANCELLED)]
    assert venue.create_calls == [] and world.venue.book.open_orders() == []
    assert led.position(SYMBOL).amount == 0


async def test_crash_after_sent_mark_before_the_request_left(world: World) -> None:
    led = Ledger(world.url)
    led.record_new_order(market_buy("c-sent"), ts=world.clock(), sent=True)
    led.close()
    venue = FaultyVenue(world.venue)
    gate = Gate()
    led = Ledger(world.url)
    om = world.manager(led, venue, sleep=gate)
    report = await om.reconcile([SYMBOL])
    # Looked for over the window, not yet given up: the lookups wait on the gate until it opens.
    assert report.orders_updated == [] and om.is_blocked(SYMBOL)
    gate.open.set()
    await om.wait_resolved()
    assert [t.to_status for t in led.transitions(ClientOrderId("c-sent"))][-1] is S.REJECTED
    assert venue.create_calls == [] and not om.is_blocked(SYMBOL)


async def test_crash_after_send_before_response(world: World) -> None:
    led = Ledger(world.url)
    request = market_buy("c-inflight")
    led.record_new_order(request, ts=world.clock(), sent=True)
    world.venue.book.submit_order(request)  # the venue got it; the process died before reading the answer
    led.close()
    world.advance()  # and it filled while the bot was down
    venue = FaultyVenue(world.venue)
    led, om = _restart(world, venue)
    report = await om.reconcile([SYMBOL])
    assert report.orders_updated == [("c-inflight", S.SENT, S.FILLED)]
    assert report.fills_recorded == 1 and report.discrepancies == []
    assert venue.create_calls == []
    assert led.position(SYMBOL).amount == world.venue.book.position(SYMBOL) == Decimal("0.01")
    # A second restart and reconciliation is a no-op.
    led.close()
    led, om = _restart(world, venue)
    again = await om.reconcile([SYMBOL])
    assert again.orders_updated == [] and again.fills_recorded == 0 and again.discrepancies == []


async def test_crash_after_fill_before_ledger_update(world: World) -> None:
    led = Ledger(world.url)
    om = world.manager(led)
    limit = OrderRequest(
        ClientOrderId("c-fill"), SYMBOL, Side.BUY, OrderType.LIMIT, Decimal("0.01"), Decimal(str(candle(1).open))
    )
    assert (await om.submit(limit)).status is S.OPEN
    await om.reconcile([SYMBOL])  # baseline while the ledger and the venue agree
    world.advance()  # the venue fills it; the process is killed before it learns of the fill
    led.close()
    venue = FaultyVenue(world.venue)
    led, om = _restart(world, venue)
    report = await om.reconcile([SYMBOL])
    assert report.orders_updated == [("c-fill", S.OPEN, S.FILLED)]
    assert report.discrepancies == []
    assert led.filled_by_fills(ClientOrderId("c-fill")) == Decimal("0.01") == world.venue.book.position(SYMBOL)
    assert venue.create_calls == []


async def test_reconcile_refuses_unknown_open_order_and_unexplained_balance(world: World, ledger: Ledger) -> None:
    venue = FaultyVenue(world.venue)
    om = world.manager(ledger, venue)
    await om.submit(market_buy("ok-1"))
    world.advance()
    await om.reconcile([SYMBOL])
    stray = OrderRequest(ClientOrderId("manual-1"), SYMBOL, Side.BUY, OrderType.LIMIT, Decimal("0.01"), Decimal("3000"))
    world.venue.book.submit_order(stray)
    venue.extra_balance = {"USDT": Decimal("250")}
    with capture_logs() as logs, pytest.raises(ReconciliationError) as err:
        await om.reconcile([SYMBOL])
    message = str(err.value)
    assert "manual-1" in message and "not in the ledger" in message
    assert "balance USDT" in message and "+250" in message
    assert any(log["event"] == "reconciliation_done" and log["log_level"] == "error" for log in logs)
    await world.venue.cancel_order(SYMBOL, ClientOrderId("manual-1"))
    await om.accept_balances([SYMBOL])
    assert (await om.reconcile([SYMBOL])).discrepancies == []


async def test_reconcile_flags_order_the_venue_lost(world: World, ledger: Ledger) -> None:
    om = world.manager(ledger)
    ledger.record_new_order(market_buy("ghost"), ts=world.clock(), sent=True)
    ledger.update_order(ClientOrderId("ghost"), S.OPEN, ts=world.clock())
    with pytest.raises(ReconciliationError, match=r"ghost.*the venue does not know it"):
        await om.reconcile([SYMBOL])


KILL_CHILD = """
import sys
from datetime import UTC, datetime
from decimal import Decimal
from adapters.types import ClientOrderId, OrderRequest, OrderType, Side
from bot.ledger.store import Ledger
ledger = Ledger(sys.argv[1])
for i in range(100000):
    cid = f"k-{i}"
    ledger.record_new_order(OrderRequest(ClientOrderId(cid), "BTC/USDT", Side.BUY, OrderType.MARKET, Decimal("0.01")),
                            ts=datetime.now(UTC), sent=True)
    sys.stdout.write(cid + "\\n")
    sys.stdout.flush()
"""


@pytest.mark.integration
def test_kill_9_while_writing_keeps_every_committed_order(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'paper.db'}"
    Ledger(url).close()  # migrate first, so the child spends its time writing orders
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_CHILD, url], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert child.stdout is not None
    acknowledged = []
    try:
        for line in child.stdout:
            if not line.startswith("k-"):
                continue
            acknowledged.append(line.strip())
            if len(acknowledged) == 40:
                os.kill(child.pid, signal.SIGKILL)
                break
    finally:
        child.kill()
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    ledger = Ledger(url)
    with ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    stored = {o.client_order_id for o in ledger.orders()}
    assert set(acknowledged) <= stored  # every order acknowledged as written survived the kill
    assert all(o.status is S.SENT for o in ledger.orders())
    ledger.close()


def test_invalid_order_request_never_reaches_the_ledger(ledger: Ledger) -> None:
    with pytest.raises(InvalidOrder):
        market_buy("neg", "-1")
    assert ledger.orders() == []


# --------------------------------------------------------------------------------------------- local exchange server


@pytest.fixture
async def exchange(binance_server: BinanceServer) -> AsyncIterator[CcxtAdapter]:
    """ccxt's binance class against the local server (whose account holds 10000 USDT and 1 BTC)."""
    config = CcxtConfig(
        exchange_id="binance",
        timeout_ms=2000,
        enable_rate_limit=False,
        options=dict(BINANCE_SPOT_OPTIONS),
        api_url_override=binance_server.url,
        retry=RetryConfig(attempts=2, base_delay_s=0.0, max_delay_s=0.0),
        order_lookup_attempts=2,
    )
    credentials = Credentials(api_key=binance_server.api_key, secret=binance_server.secret, source="test")
    async with CcxtAdapter(config, credentials) as adapter:
        await adapter.load_markets()
        yield adapter


def booked_manager(tmp_path: Path, venue: CcxtAdapter, quote: str = "1000") -> tuple[Ledger, Book, OrderManager]:
    ledger = Ledger(f"sqlite:///{tmp_path / 'live.db'}")
    book = Book(CapitalConfig(quote=Decimal(quote)), "USDT")
    lookup = LookupConfig(window_s=30, attempts=8)
    return ledger, book, OrderManager(ledger, venue, bot_id="t1", book=book, lookup=lookup, sleep=NoWait())


@pytest.mark.integration
async def test_filled_market_order_whose_lookup_lags_is_placed_exactly_once(
    tmp_path: Path, binance_server: BinanceServer, exchange: CcxtAdapter
) -> None:
    ledger, book, om = booked_manager(tmp_path, exchange)
    await om.reconcile([SYMBOL])
    # The order is applied and fills, the response is lost, and the venue denies knowing it for its first six
    # lookups: the adapter's own two lookups give up ("not placed"), so a manager that resends would place it twice.
    binance_server.order_lookup_lag = 6
    binance_server.inject("POST", "/api/v3/order", Fault.lost_response())
    order = await om.submit(market_buy("lag-1", "0.001"))
    assert order.status is S.UNKNOWN and om.is_blocked(SYMBOL)
    with pytest.raises(SymbolBlocked):
        await om.submit(market_buy("lag-2", "0.001"))
    await om.wait_resolved()
    assert len(binance_server.calls("POST", "/api/v3/order")) == 1
    assert len(binance_server.calls("GET", "/api/v3/order")) > 6  # it took the lag to find it
    assert [o.client_order_id for o in binance_server.orders.values()] == ["lag-1"]
    final = ledger.get_order(ClientOrderId("lag-1"))
    assert final is not None and final.status is S.FILLED and final.filled == Decimal("0.001")
    assert book.position(SYMBOL) == Decimal("0.001") - Decimal("0.000001")  # fee charged in BTC
    assert not om.is_blocked(SYMBOL)
    report = await om.reconcile([SYMBOL])
    assert report.discrepancies == []
    ledger.close()


@pytest.mark.integration
async def test_the_bot_never_touches_the_btc_the_account_already_held(
    tmp_path: Path, binance_server: BinanceServer, exchange: CcxtAdapter
) -> None:
    ledger, book, om = booked_manager(tmp_path, exchange)
    first = await om.reconcile([SYMBOL])
    assert first.baselines_set == {"BTC": Decimal(1), "USDT": Decimal(9000)}  # held outside the bot at its start
    assert book.position(SYMBOL) == 0 and book.free_quote("USDT") == Decimal(1000)
    bought = await om.submit(market_buy("own-1", "0.001"), reference_price=binance_server.last_price("BTCUSDT"))
    assert bought.status is S.FILLED
    held = book.position(SYMBOL)
    assert held == Decimal("0.000999")
    # The user sells half a BTC of their own on the same account: not the bot's, and explained.
    await exchange.create_order(
        OrderRequest(ClientOrderId("web_manual1"), SYMBOL, Side.SELL, OrderType.MARKET, Decimal("0.5"))
    )
    report = await om.reconcile([SYMBOL])
    assert report.discrepancies == [] and report.foreign_fills != []
    assert book.position(SYMBOL) == held and ledger.position(SYMBOL).amount == held
    # Flatten closes only the bot's position (rounded down to the lot step), never the user's coins.
    flat = book.flatten_request(SYMBOL, exchange.market(SYMBOL), ClientOrderId("flat-1"))
    assert flat is not None and flat.side is Side.SELL and flat.amount == Decimal("0.00099")
    assert (await om.submit(flat)).status is S.FILLED
    assert book.position(SYMBOL) == Decimal("0.000009")
    btc_free, btc_locked = binance_server.balance("BTC")
    assert btc_free + btc_locked == Decimal("0.5") + Decimal("0.000009")
    assert (await om.reconcile([SYMBOL])).discrepancies == []
    # A withdrawal is not explained by any trade: the bot refuses to trade until a human looks.
    binance_server.balances["BTC"][0] -= Decimal("0.1")
    with pytest.raises(ReconciliationError, match=r"balance BTC.*-0\.1"):
        await om.reconcile([SYMBOL])
    await om.accept_balances([SYMBOL])
    assert (await om.reconcile([SYMBOL])).discrepancies == []
    ledger.close()


@pytest.mark.integration
async def test_a_budget_larger_than_the_account_is_refused(
    tmp_path: Path, binance_server: BinanceServer, exchange: CcxtAdapter
) -> None:
    ledger, _, om = booked_manager(tmp_path, exchange, quote="20000")
    with pytest.raises(ReconciliationError, match=r"lower bot\.capital"):
        await om.reconcile([SYMBOL])
    ledger.close()
