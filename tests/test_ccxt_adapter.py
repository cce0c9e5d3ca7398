"""The ccxt adapter against a local Binance-format exchange server: ccxt's real signing and parsing, with faults."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import ccxt
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from adapters.ccxt.adapter import CcxtAdapter
from adapters.ccxt.binance import BINANCE_SPOT_OPTIONS
from adapters.ccxt.config import CcxtConfig, RetryConfig
from adapters.ccxt.convert import order_from_ccxt
from adapters.ccxt.errors import OrderNotPlaced, map_ccxt_error
from adapters.errors import (
    DataError,
    FatalError,
    InsufficientFunds,
    InvalidOrder,
    OrderNotFound,
    OrderRejected,
    OrderStateUnknown,
    TransientError,
)
from adapters.secrets import Credentials
from adapters.types import ClientOrderId, OrderRequest, OrderStatus, OrderType, Side, ms_from_utc
from adapters.venue import ExchangeAdapter
from tests.support.binance_server import BinanceServer, Fault, load_candles

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC, inside the bundled BTC/USDT 1h candles


def config_for(server: BinanceServer, **overrides: Any) -> CcxtConfig:
    """Adapter config pointed at the local server, with fast retries."""
    settings: dict[str, Any] = {
        "exchange_id": "binance",
        "timeout_ms": 1000,
        "enable_rate_limit": False,
        "options": dict(BINANCE_SPOT_OPTIONS),
        "api_url_override": server.url,
        "retry": RetryConfig(attempts=3, base_delay_s=0.01, max_delay_s=0.05),
        "order_lookup_attempts": 2,
    }
    settings.update(overrides)
    return CcxtConfig(**settings)


def credentials_for(server: BinanceServer) -> Credentials:
    return Credentials(api_key=server.api_key, secret=server.secret, source="test")


@pytest.fixture
async def venue(binance_server: BinanceServer) -> AsyncIterator[CcxtAdapter]:
    async with CcxtAdapter(config_for(binance_server), credentials_for(binance_server)) as adapter:
        yield adapter


def request(
    cid: str, amount: str, *, side: Side = Side.BUY, price: str | None = None, symbol: str = "BTC/USDT"
) -> OrderRequest:
    return OrderRequest(
        client_order_id=ClientOrderId(cid),
        symbol=symbol,
        side=side,
        type=OrderType.LIMIT if price else OrderType.MARKET,
        amount=Decimal(amount),
        price=Decimal(price) if price else None,
    )


def balances_of(server: BinanceServer) -> dict[str, list[Decimal]]:
    return copy.deepcopy(server.balances)


# --- markets and bad input ------------------------------------------------------------------------------------


async def test_markets_carry_binance_filters(venue: CcxtAdapter) -> None:
    assert isinstance(venue, ExchangeAdapter)
    btc = venue.market("BTC/USDT")
    assert (btc.amount_step, btc.price_step) == (Decimal("0.00001"), Decimal("0.01"))
    assert (btc.min_amount, btc.min_notional) == (Decimal("0.00001"), Decimal(5))
    assert btc.taker_fee == Decimal("0.001")
    eth = venue.market("ETH/BTC")  # MIN_NOTIONAL (the older filter name) is read too
    assert eth.min_notional == Decimal("0.0001")
    assert eth.price_step == Decimal("0.000001")


def test_unknown_exchange_id_is_a_clear_error() -> None:
    with pytest.raises(FatalError, match=r"'binanse'.*not a ccxt exchange"):
        CcxtAdapter(CcxtConfig(exchange_id="binanse"))


async def test_sandbox_mode(binance_server: BinanceServer) -> None:
    async with CcxtAdapter(config_for(binance_server, sandbox=True), credentials_for(binance_server)) as venue:
        assert venue.exchange.isSandboxModeEnabled
        assert (await venue.fetch_balances())["BTC"].free == Decimal(1)
    with pytest.raises(FatalError, match="kraken has no sandbox"):
        async with CcxtAdapter(CcxtConfig(exchange_id="kraken", sandbox=True)):
            pass  # pragma: no cover


async def test_unknown_symbol_is_refused_without_sending(venue: CcxtAdapter, binance_server: BinanceServer) -> None:
    before = balances_of(binance_server)
    with pytest.raises(InvalidOrder, match="unknown symbol 'BTC/USDX'"):
        await venue.create_order(request("c-unknown", "0.01", symbol="BTC/USDX"))
    assert binance_server.calls("POST", "/api/v3/order") == []
    assert binance_server.balances == before


@pytest.mark.parametrize(
    ("amount", "price", "problem"),
    [
        ("0.000004", None, "amount must be > 0 after rounding"),  # rounds down to 0 at step 0.00001
        ("0.00005", None, "notional .* is below the minimum 5"),  # ~4.5 USDT at the last price
        ("0.001", "1000", "notional 1.000 is below the minimum 5"),
    ],
)
async def test_order_below_minimum_is_refused_by_us(
    venue: CcxtAdapter,
    binance_server: BinanceServer,
    amount: str,
    price: str | None,
    problem: str,
) -> None:
    before = balances_of(binance_server)
    with pytest.raises(InvalidOrder, match=problem):
        await venue.create_order(request("c-small", amount, price=price))
    assert binance_server.calls("POST", "/api/v3/order") == []
    assert binance_server.balances == before


def test_negative_size_is_refused() -> None:
    with pytest.raises(InvalidOrder, match="amount must be > 0, was -1"):
        request("c-neg", "-1")


async def test_missing_keys_allow_market_data_but_not_trading(binance_server: BinanceServer) -> None:
    async with CcxtAdapter(config_for(binance_server), None) as venue:
        candles = await venue.fetch_ohlcv("BTC/USDT", "1h", since_ms=T0, limit=3)
        assert [c.close for c in candles] == [42475.23, 42613.56, 42581.1]
        with pytest.raises(FatalError, match="AI_TRADING_BINANCE_API_KEY and AI_TRADING_BINANCE_SECRET"):
            await venue.create_order(request("c-nokey", "0.01"))
        with pytest.raises(FatalError, match="needs API credentials"):
            await venue.fetch_balances()
    assert binance_server.calls("POST", "/api/v3/order") == []


async def test_wrong_secret_is_fatal_and_not_retried(binance_server: BinanceServer) -> None:
    wrong = Credentials(api_key=binance_server.api_key, secret="not-the-secret", source="test")
    async with CcxtAdapter(config_for(binance_server), wrong) as venue:
        with pytest.raises(FatalError, match="Signature for this request is not valid"):
            await venue.fetch_balances()
    assert len(binance_server.calls("GET", "/api/v3/account")) == 1


# --- orders ---------------------------------------------------------------------------------------------------


async def test_market_order_is_rounded_and_sent_with_our_client_order_id(
    venue: CcxtAdapter,
    binance_server: BinanceServer,
) -> None:
    last = binance_server.last_price("BTCUSDT")
    order = await venue.create_order(request("c-mkt-1", "0.0123456"))
    (sent,) = binance_server.calls("POST", "/api/v3/order")
    assert sent.params["quantity"] == "0.01234"
    assert sent.params["newClientOrderId"] == "c-mkt-1"
    assert order.client_order_id == "c-mkt-1"
    assert order.status is OrderStatus.FILLED
    assert (order.amount, order.filled, order.average_price) == (Decimal("0.01234"), Decimal("0.01234"), last)
    assert order.fee == Decimal("0.00001234") and order.fee_currency == "BTC"
    balances = await venue.fetch_balances()
    assert balances["USDT"].free == Decimal(10_000) - Decimal("0.01234") * last
    assert balances["BTC"].free == Decimal(1) + Decimal("0.01234") - Decimal("0.00001234")


async def test_limit_order_lifecycle_by_client_order_id(venue: CcxtAdapter, binance_server: BinanceServer) -> None:
    order = await venue.create_order(request("c-lim-1", "0.01", price="50000.123"))
    assert order.status is OrderStatus.OPEN and order.price == Decimal("50000.12")
    assert binance_server.calls("POST", "/api/v3/order")[0].params["price"] == "50000.12"
    assert (await venue.fetch_balances())["USDT"].used == Decimal("500.0012")
    assert [o.client_order_id for o in await venue.fetch_open_orders("BTC/USDT")] == ["c-lim-1"]
    assert [o.client_order_id for o in await venue.fetch_open_orders()] == ["c-lim-1"]
    assert (await venue.fetch_order("BTC/USDT", ClientOrderId("c-lim-1"))).status is OrderStatus.OPEN
    cancelled = await venue.cancel_order("BTC/USDT", ClientOrderId("c-lim-1"))
    assert cancelled.status is OrderStatus.CANCELLED
    # Cancelling again (as a retry after a lost answer would) returns the final state instead of failing.
    again = await venue.cancel_order("BTC/USDT", ClientOrderId("c-lim-1"))
    assert again.status is OrderStatus.CANCELLED
    assert await venue.fetch_open_orders("BTC/USDT") == []
    assert binance_server.balances["USDT"] == [Decimal(10_000), Decimal(0)]
    with pytest.raises(OrderNotFound, match="c-never"):
        await venue.cancel_order("BTC/USDT", ClientOrderId("c-never"))
    with pytest.raises(OrderNotFound, match="c-never"):
        await venue.fetch_order("BTC/USDT", ClientOrderId("c-never"))


async def test_partial_fill_then_fill_and_trades(venue: CcxtAdapter, binance_server: BinanceServer) -> None:
    binance_server.inject("POST", "/api/v3/order", Fault(partial_fill=Decimal("0.4")))
    order = await venue.create_order(request("c-part", "0.05", side=Side.SELL, price="30000"))
    assert order.status is OrderStatus.PARTIALLY_FILLED
    assert (order.filled, order.remaining) == (Decimal("0.02"), Decimal("0.03"))
    binance_server.fill_order(int(order.venue_order_id or 0))
    done = await venue.fetch_order("BTC/USDT", ClientOrderId("c-part"))
    assert done.status is OrderStatus.FILLED and done.filled == Decimal("0.05")
    async with CcxtAdapter(config_for(binance_server), credentials_for(binance_server)) as fresh:
        # A fresh adapter has not seen the order: it finds our client order id through the venue order id.
        fills = await fresh.fetch_my_trades("BTC/USDT")
    assert [(f.client_order_id, f.side, f.amount, f.price) for f in fills] == [
        ("c-part", Side.SELL, Decimal("0.02"), Decimal(30000)),
        ("c-part", Side.SELL, Decimal("0.03"), Decimal(30000)),
    ]
    assert sum(f.fee for f in fills) == Decimal("1.5")  # 0.1 % of 1500 USDT, charged in USDT
    assert binance_server.balances["BTC"] == [Decimal("0.95"), Decimal(0)]


async def test_insufficient_funds_is_rejected_and_changes_nothing(
    venue: CcxtAdapter,
    binance_server: BinanceServer,
) -> None:
    before = balances_of(binance_server)
    with pytest.raises(InsufficientFunds, match="insufficient balance"):
        await venue.create_order(request("c-poor", "5"))
    assert len(binance_server.calls("POST", "/api/v3/order")) == 1
    assert binance_server.balances == before
    assert binance_server.orders == {}


async def test_venue_reject_is_recorded_not_retried(venue: CcxtAdapter, binance_server: BinanceServer) -> None:
    binance_server.inject("POST", "/api/v3/order", Fault.rejected(-1013, "Filter failure: PERCENT_PRICE_BY_SIDE"))
    with pytest.raises(OrderRejected, match="PERCENT_PRICE_BY_SIDE"):
        await venue.create_order(request("c-rej", "0.01"))
    assert len(binance_server.calls("POST", "/api/v3/order")) == 1
    assert binance_server.calls("GET", "/api/v3/order") == []


# --- unknown outcomes: resolved by client order id, never resent blindly ---------------------------------------


@pytest.mark.parametrize("fault", [Fault.lost_response(), Fault(status_after_apply=502)], ids=["dropped", "502"])
async def test_filled_order_whose_answer_was_lost_is_found_by_client_order_id(
    venue: CcxtAdapter,
    binance_server: BinanceServer,
    fault: Fault,
) -> None:
    binance_server.inject("POST", "/api/v3/order", fault)
    order = await venue.create_order(request("c-lost", "0.01"))
    assert order.client_order_id == "c-lost" and order.status is OrderStatus.FILLED
    assert len(binance_server.calls("POST", "/api/v3/order")) == 1
    (lookup,) = binance_server.calls("GET", "/api/v3/order")
    assert lookup.params["origClientOrderId"] == "c-lost"
    assert binance_server.balances["BTC"][0] == Decimal(1) + Decimal("0.01") - Decimal("0.00001")


@pytest.mark.parametrize(
    "fault",
    [Fault.timeout(), Fault.server_error(503), Fault.rate_limited(retry_after_s=0)],
    ids=["timeout", "503", "429"],
)
async def test_order_not_applied_is_reported_not_placed_and_resent_with_same_id(
    binance_server: BinanceServer,
    fault: Fault,
) -> None:
    binance_server.inject("POST", "/api/v3/order", fault)
    before = balances_of(binance_server)
    async with CcxtAdapter(config_for(binance_server, timeout_ms=800), credentials_for(binance_server)) as venue:
        with pytest.raises(OrderNotPlaced, match="resend it with the same client order id"):
            await venue.create_order(request("c-gone", "0.01"))
        assert len(binance_server.calls("POST", "/api/v3/order")) == 1  # create_order itself is never retried
        assert len(binance_server.calls("GET", "/api/v3/order")) == 2  # order_lookup_attempts
        assert binance_server.balances == before
        order = await venue.create_order(request("c-gone", "0.01"))
    assert order.status is OrderStatus.FILLED
    assert [o.client_order_id for o in binance_server.orders.values()] == ["c-gone"]


async def test_order_state_unknown_when_lookups_fail_too(venue: CcxtAdapter, binance_server: BinanceServer) -> None:
    binance_server.inject("POST", "/api/v3/order", Fault.lost_response())
    binance_server.inject("GET", "/api/v3/order", Fault.server_error(503, times=None))
    with pytest.raises(OrderStateUnknown, match=r"c-dark.*outcome unknown"):
        await venue.create_order(request("c-dark", "0.01"))
    assert len(binance_server.calls("POST", "/api/v3/order")) == 1
    binance_server.clear_faults()
    found = await venue.fetch_order("BTC/USDT", ClientOrderId("c-dark"))
    assert found.status is OrderStatus.FILLED


# --- transient faults on idempotent calls ----------------------------------------------------------------------


async def test_idempotent_calls_retry_5xx_429_and_latency(binance_server: BinanceServer) -> None:
    delays: list[float] = []

    async def record_sleep(seconds: float) -> None:
        delays.append(seconds)

    cfg = config_for(binance_server, timeout_ms=800, retry=RetryConfig(attempts=4, base_delay_s=0.01, max_delay_s=3.0))
    async with CcxtAdapter(cfg, credentials_for(binance_server), sleep=record_sleep) as venue:
        binance_server.inject("GET", "/api/v3/account", Fault.server_error(500))
        binance_server.inject("GET", "/api/v3/account", Fault.rate_limited(retry_after_s=2))
        binance_server.inject("GET", "/api/v3/account", Fault(latency_s=0.05))
        balances = await venue.fetch_balances()
        assert balances["USDT"].free == Decimal(10_000)
        assert len(binance_server.calls("GET", "/api/v3/account")) == 3
        assert len(delays) == 2 and delays[0] <= 0.01 and delays[1] == 2.0  # Retry-After honoured

        binance_server.inject("GET", "/api/v3/klines", Fault.timeout())
        candles = await venue.fetch_ohlcv("BTC/USDT", "1h", since_ms=T0, limit=2)
        assert candles[0].open_time.year == 2024

        binance_server.inject("GET", "/api/v3/account", Fault.server_error(503, times=None))
        with pytest.raises(TransientError, match="fetch_balances failed"):
            await venue.fetch_balances()
        assert len(binance_server.calls("GET", "/api/v3/account")) == 3 + 4


async def test_clock_skew_is_resynced(binance_server: BinanceServer) -> None:
    async with CcxtAdapter(config_for(binance_server), credentials_for(binance_server)) as venue:
        binance_server.clock_offset_ms = 20_000  # the server's clock jumps 20 s ahead of ours
        balances = await venue.fetch_balances()
        assert balances["BTC"].free == Decimal(1)
        binance_server.clock_offset_ms = -20_000
        order = await venue.create_order(request("c-skew", "0.01"))
    assert order.status is OrderStatus.FILLED
    posts = binance_server.calls("POST", "/api/v3/order")
    assert len(posts) == 2  # the first was refused (-1021) before anything happened; the resend used the same id
    assert {p.params["newClientOrderId"] for p in posts} == {"c-skew"}
    assert len(binance_server.orders) == 1


async def test_the_venue_clock_is_measured_at_start_and_on_sync_without_a_signed_request(
    binance_server: BinanceServer,
) -> None:
    binance_server.clock_offset_ms = -45_000  # this machine runs 45 s ahead of the venue
    async with CcxtAdapter(config_for(binance_server), None) as venue:  # no keys: paper mode signs nothing
        assert abs(venue.venue_time_ms() - binance_server.now_ms()) < 1_000
        binance_server.clock_offset_ms = 5_000  # the machine's clock was stepped (NTP): now 5 s behind
        assert abs(venue.venue_time_ms() - binance_server.now_ms()) > 40_000  # not noticed until measured
        offset = await venue.sync_clock()
        assert abs(offset + 5_000) < 1_000
        assert abs(venue.venue_time_ms() - binance_server.now_ms()) < 1_000
    assert len(binance_server.calls("GET", "/api/v3/time")) == 2


async def test_skewed_clock_at_start_without_adjustment_fails_clearly(binance_server: BinanceServer) -> None:
    binance_server.clock_offset_ms = 20_000
    cfg = config_for(binance_server, adjust_for_time_difference=False)
    async with CcxtAdapter(cfg, credentials_for(binance_server)) as venue:
        with pytest.raises(TransientError, match=r"InvalidNonce.*recvWindow"):
            await venue.fetch_balances()


# --- candles ---------------------------------------------------------------------------------------------------


async def test_fetch_ohlcv_pages_and_matches_the_served_candles(binance_server: BinanceServer) -> None:
    async with CcxtAdapter(config_for(binance_server, ohlcv_page_limit=100), None) as venue:
        candles = await venue.fetch_ohlcv("BTC/USDT", "1h", since_ms=T0, limit=250)
    assert len(binance_server.calls("GET", "/api/v3/klines")) == 3
    data = load_candles("BTC/USDT-1h")
    start = int((data.open_ms == T0).argmax())
    assert [ms_from_utc(c.open_time) for c in candles] == data.open_ms[start : start + 250].tolist()
    assert [[c.open, c.high, c.low, c.close, c.volume] for c in candles] == data.ohlcv[start : start + 250].tolist()


async def test_fetch_ohlcv_leaves_out_the_candle_in_progress(binance_server: BinanceServer) -> None:
    now = T0 + 5 * HOUR_MS + 1_234
    binance_server.market_clock_ms = lambda: now
    async with CcxtAdapter(config_for(binance_server), None, clock_ms=lambda: now) as venue:
        candles = await venue.fetch_ohlcv("BTC/USDT", "1h", since_ms=T0)
        latest = await venue.fetch_ohlcv("BTC/USDT", "1h", limit=2)
        with pytest.raises(DataError, match="timeframe '7m' is not offered"):
            await venue.fetch_ohlcv("BTC/USDT", "7m")
    assert [ms_from_utc(c.open_time) for c in candles] == [T0 + i * HOUR_MS for i in range(5)]
    assert [ms_from_utc(c.open_time) for c in latest] == [T0 + 3 * HOUR_MS, T0 + 4 * HOUR_MS]


class FakeClock:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms
        self.sleeps: list[float] = []

    def __call__(self) -> int:
        return self.now_ms

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_ms += int(seconds * 1000)


async def test_candle_stream_polls_after_each_close_and_yields_each_candle_once(
    binance_server: BinanceServer,
) -> None:
    clock = FakeClock(T0 + 30 * 60_000)  # 00:30, inside the 00:00 candle
    binance_server.market_clock_ms = clock
    cfg = config_for(binance_server, poll_delay_s=2.0, poll_retry_s=1.0)
    async with CcxtAdapter(cfg, None, clock_ms=clock, sleep=clock.sleep) as venue:
        stream: Callable[[], Any] = lambda: venue.candles("BTC/USDT", "1h")  # noqa: E731
        received = []
        feed = stream()
        received.append(await anext(feed))
        assert clock.sleeps == [30 * 60 + 2.0]  # slept until 01:00 close + poll delay, not more
        # A failed poll (every retry of it) delays the candle; it still comes, once.
        binance_server.inject("GET", "/api/v3/klines", Fault.server_error(503, times=3))
        received.append(await anext(feed))
        received.append(await anext(feed))
        await feed.aclose()
    assert [ms_from_utc(c.open_time) for c in received] == [T0, T0 + HOUR_MS, T0 + 2 * HOUR_MS]
    data = load_candles("BTC/USDT-1h")
    start = int((data.open_ms == T0).argmax())
    assert [c.close for c in received] == data.ohlcv[start : start + 3, 3].tolist()
    assert clock.now_ms < T0 + 3 * HOUR_MS + 60_000  # no candle skipped, no long stall


# --- the boundary: error mapping and converters ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "action", "expected"),
    [
        (ccxt.OrderNotFound("x"), "cancel_order", OrderNotFound),
        (ccxt.InsufficientFunds("x"), "create_order", InsufficientFunds),
        (ccxt.InvalidOrder("x"), "create_order", InvalidOrder),
        (ccxt.BadSymbol("x"), "fetch_ohlcv", InvalidOrder),
        (ccxt.AuthenticationError("x"), "fetch_balances", FatalError),
        (ccxt.PermissionDenied("x"), "create_order", FatalError),
        (ccxt.AccountSuspended("x"), "create_order", FatalError),
        (ccxt.InvalidNonce("x"), "fetch_balances", TransientError),
        (ccxt.RequestTimeout("x"), "fetch_order", TransientError),
        (ccxt.ExchangeNotAvailable("x"), "fetch_order", TransientError),
        (ccxt.DDoSProtection("x"), "fetch_order", TransientError),
        (ccxt.RateLimitExceeded("x"), "fetch_order", TransientError),
        (ccxt.OperationFailed("x"), "create_order", TransientError),
        (ccxt.BadRequest("x"), "create_order", OrderRejected),
        (ccxt.BadRequest("x"), "fetch_balances", FatalError),
        (ccxt.ExchangeError("x"), "create_order", OrderRejected),
        (ccxt.ExchangeError("x"), "fetch_balances", FatalError),
    ],
)
def test_ccxt_errors_map_to_what_to_do(error: Exception, action: str, expected: type[Exception]) -> None:
    mapped = map_ccxt_error(error, action)
    assert type(mapped) is expected
    assert str(mapped).startswith(f"{action} failed: {type(error).__name__}")


amounts = st.decimals(min_value=Decimal("0.00001"), max_value=Decimal(1000), places=5)


@given(
    amount=amounts,
    fill_ratio=st.sampled_from([Decimal(0), Decimal("0.5"), Decimal(1)]),
    status=st.sampled_from(["open", "closed", "canceled", "expired", "rejected"]),
    side=st.sampled_from(["buy", "sell"]),
    price=st.decimals(min_value=Decimal("0.01"), max_value=Decimal(100_000), places=2),
)
def test_order_from_ccxt_keeps_amounts_exact(
    amount: Decimal, fill_ratio: Decimal, status: str, side: str, price: Decimal
) -> None:
    filled = (amount * fill_ratio).quantize(Decimal("0.00001"))
    raw = {
        "id": "7",
        "clientOrderId": "c-h",
        "symbol": "BTC/USDT",
        "side": side,
        "type": "limit",
        "amount": float(amount),
        "filled": float(filled),
        "price": float(price),
        "status": status,
        "average": float(price) if filled else None,
        "timestamp": T0,
        "fee": {"cost": 0.0, "currency": "USDT"},
    }
    order = order_from_ccxt(raw)
    assert (order.amount, order.filled, order.price) == (amount, filled, price)
    assert order.remaining == amount - filled
    assert order.status.is_final == (status != "open")
    assert order.side is Side(side)


@pytest.mark.parametrize(
    "bad",
    [{"side": "sideways"}, {"type": "trailing_stop"}, {"amount": None}, {"clientOrderId": None}, {"filled": "NaN"}],
)
def test_order_from_ccxt_rejects_malformed_payloads(bad: dict[str, Any]) -> None:
    raw = {
        "id": "7",
        "clientOrderId": "c-h",
        "symbol": "BTC/USDT",
        "side": "buy",
        "type": "limit",
        "amount": 1.0,
        "filled": 0.0,
        "price": 10.0,
        "status": "open",
    } | bad
    with pytest.raises(DataError):
        order_from_ccxt(raw)


async def test_credentials_never_reach_the_logs(binance_server: BinanceServer) -> None:
    binance_server.inject("GET", "/api/v3/account", Fault.server_error(503))
    with structlog.testing.capture_logs() as logs:
        async with CcxtAdapter(config_for(binance_server), credentials_for(binance_server)) as venue:
            await venue.fetch_balances()
            await venue.create_order(request("c-log", "0.01"))
    assert {e["event"] for e in logs} >= {"markets_loaded", "venue_call_retrying", "order_submitted"}
    dumped = repr(logs) + repr(credentials_for(binance_server))
    assert binance_server.secret not in dumped and binance_server.api_key not in dumped


# --- exchange profiles (adapters/ccxt/profile.py) ------------------------------------------------------


def test_binance_has_its_own_profile_and_other_exchanges_run_on_ccxts_unified_parameters() -> None:
    from adapters.ccxt.config import profile_for

    binance = profile_for("binance")
    assert binance.create_params("c-1") == {"newClientOrderId": "c-1"}
    assert binance.lookup_params("c-1") == {"origClientOrderId": "c-1"}
    assert binance.options(spot_only=True)["fetchMarkets"] == {"types": ["spot"]}
    assert binance.options(spot_only=False) == {}
    assert binance.hook_closed_flag is not None
    kraken = profile_for("kraken")
    assert kraken.exchange_id == "*"
    assert kraken.create_params("c-2") == {"clientOrderId": "c-2"}
    assert kraken.hook_closed_flag is None


def test_the_binance_profile_records_the_kline_closed_flag_ccxt_drops() -> None:
    from adapters.ccxt.binance import hook_binance_closed_flag
    from adapters.ccxt.profile import ClosedFlags

    seen: list[object] = []

    class FakeWs:
        # A stand-in for a ccxt.pro instance: only the one method the hook wraps.
        def handle_ohlcv(self, client: object, message: object) -> None:
            seen.append(message)

    ws = FakeWs()
    closed: ClosedFlags = {}
    hook_binance_closed_flag(ws, closed)
    ws.handle_ohlcv(None, {"k": {"x": True, "t": 60_000, "s": "BTCUSDT", "i": "1m"}})
    ws.handle_ohlcv(None, {"k": {"x": False, "t": 120_000, "s": "BTCUSDT", "i": "1m"}})
    assert closed == {("BTCUSDT", "1m"): {60_000}}
    assert len(seen) == 2
