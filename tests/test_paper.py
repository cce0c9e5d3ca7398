"""The paper venue: fills, costs, partial fills, limits, latency, funds and bad input, on real BTC/USDT candles."""

from __future__ import annotations

from dataclasses import replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from adapters.costs import FILL_MODEL_VERSION, CostModel
from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from adapters.errors import InsufficientFunds, InvalidOrder, OrderNotFound
from adapters.paper.config import BTC_USDT, PaperConfig
from adapters.paper.replay import ReplayFeed
from adapters.paper.venue import PaperVenue
from adapters.types import (
    Balance,
    Candle,
    ClientOrderId,
    Market,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    ms_from_utc,
)
from adapters.venue import ExchangeAdapter

SYMBOL = "BTC/USDT"
TICK = Decimal("0.01")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """Real Binance BTC/USDT 1h candles (bundled)."""
    return load_ohlcv(sample_path("BTC/USDT-1h"))


def candles_of(frame: pd.DataFrame, start: str, count: int) -> list[Candle]:
    """Return `count` real candles from `start` as domain Candles."""
    window = frame.loc[start:].iloc[:count]
    return list(ReplayFeed(window, symbol=SYMBOL, timeframe="1h").iter_candles())


@pytest.fixture
def candles(frame: pd.DataFrame) -> list[Candle]:
    """Two hundred candles of January 2022."""
    return candles_of(frame, "2022-01-03", 200)


def dec(x: float) -> Decimal:
    return Decimal(repr(x))


def buy(cid: str, amount: str, price: str | None = None, symbol: str = SYMBOL) -> OrderRequest:
    kind = OrderType.MARKET if price is None else OrderType.LIMIT
    return OrderRequest(
        ClientOrderId(cid), symbol, Side.BUY, kind, Decimal(amount), None if price is None else Decimal(price)
    )


def sell(cid: str, amount: str | Decimal, price: str | None = None) -> OrderRequest:
    kind = OrderType.MARKET if price is None else OrderType.LIMIT
    return OrderRequest(
        ClientOrderId(cid), SYMBOL, Side.SELL, kind, Decimal(amount), None if price is None else Decimal(price)
    )


def config(**changes: object) -> PaperConfig:
    """Config with fixed 2 bps slippage, 10 bps fees and no volume cap unless changed."""
    base = PaperConfig(costs=CostModel(taker_fee_bps=10, maker_fee_bps=2, slippage_bps=2), volume_limited=False)
    return replace(base, **changes)  # type: ignore[arg-type]


def tick_up(price: Decimal) -> Decimal:
    return (price / TICK).to_integral_value(rounding=ROUND_CEILING) * TICK


def tick_down(price: Decimal) -> Decimal:
    return (price / TICK).to_integral_value(rounding=ROUND_FLOOR) * TICK


def test_paper_venue_is_an_exchange_adapter() -> None:
    assert isinstance(PaperVenue(), ExchangeAdapter)


def test_market_buy_fills_at_next_open_plus_slippage_and_taker_fee(candles: list[Candle]) -> None:
    venue = PaperVenue(config())
    venue.book.on_candle(candles[0])
    order = venue.book.submit_order(buy("b1", "0.1"))
    assert order.status is OrderStatus.OPEN and order.filled == 0
    assert venue.book.balances()["USDT"].free == Decimal("10000"), "a market order reserves nothing before it fills"

    fills = venue.book.on_candle(candles[1])

    assert len(fills) == 1
    fill = fills[0]
    open_price = dec(candles[1].open)
    expected_price = tick_up(open_price * (1 + Decimal("0.0002")))
    assert fill.requested_price == open_price
    assert fill.price == expected_price and fill.price > open_price
    assert fill.amount == Decimal("0.1")
    assert fill.fee == Decimal("0.1") * expected_price * Decimal("0.001")
    assert not fill.is_maker
    assert fill.fill_model_version == FILL_MODEL_VERSION
    assert fill.timestamp == candles[1].open_time
    assert venue.book.balances()["USDT"] == Balance("USDT", Decimal("10000") - fill.notional - fill.fee, Decimal(0))
    assert venue.book.position(SYMBOL) == Decimal("0.1")
    final = venue.book.get_order(SYMBOL, ClientOrderId("b1"))
    assert final.status is OrderStatus.FILLED and final.average_price == expected_price and final.fee == fill.fee


def test_market_sell_fills_below_open_and_credits_proceeds_less_fee(candles: list[Candle]) -> None:
    venue = PaperVenue(config(initial_balances={"USDT": Decimal(0), "BTC": Decimal("0.5")}))
    venue.book.on_candle(candles[0])
    venue.book.submit_order(sell("s1", "0.3"))
    assert venue.book.balances()["BTC"] == Balance("BTC", Decimal("0.2"), Decimal("0.3")), "a sell reserves its base"

    (fill,) = venue.book.on_candle(candles[1])

    assert fill.price == tick_down(dec(candles[1].open) * (1 - Decimal("0.0002")))
    assert venue.book.balances()["BTC"] == Balance("BTC", Decimal("0.2"), Decimal(0))
    assert venue.book.balances()["USDT"].free == fill.notional - fill.fee
    assert venue.book.balances()["USDT"].free > 0


def test_large_order_fills_partially_over_several_candles_under_the_volume_cap(frame: pd.DataFrame) -> None:
    # Early 2017 candles trade a few BTC an hour, so 2% of volume caps a 1 BTC order for several candles.
    bars = candles_of(frame, "2017-08-17 04:00", 60)
    costs = CostModel(taker_fee_bps=10, slippage_bps=2, impact_bps=50, max_participation=0.02)
    venue = PaperVenue(config(costs=costs, volume_limited=True, initial_balances={"USDT": Decimal(100_000)}))
    venue.book.on_candle(bars[0])
    venue.book.submit_order(buy("big", "1"))

    fills, statuses = [], []
    for candle in bars[1:]:
        got = venue.book.on_candle(candle)
        for fill in got:
            volume = dec(candle.volume)
            cap = BTC_USDT.round_amount(volume * Decimal("0.02"))
            assert fill.amount <= cap
            participation = float(fill.amount / volume)
            slip = Decimal(repr((2 + 50 * participation) * 1e-4))
            assert fill.price == tick_up(dec(candle.open) * (1 + slip))
            assert fill.requested_price == dec(candle.open)
        fills += got
        statuses.append(venue.book.get_order(SYMBOL, ClientOrderId("big")).status)
        if statuses[-1] is OrderStatus.FILLED:
            break

    assert len(fills) >= 3, "the cap must have split the order"
    assert OrderStatus.PARTIALLY_FILLED in statuses and statuses[-1] is OrderStatus.FILLED
    assert sum(f.amount for f in fills) == Decimal(1)
    spent = sum(f.notional + f.fee for f in fills)
    assert venue.book.balances()["USDT"].free == Decimal(100_000) - spent
    assert venue.book.position(SYMBOL) == Decimal(1)


def test_limit_buy_rests_then_fills_at_its_price_with_maker_fee_when_traded_through(candles: list[Candle]) -> None:
    venue = PaperVenue(config())
    venue.book.on_candle(candles[0])
    limit = tick_down(dec(candles[0].close) * Decimal("0.99"))
    hit = next(i for i, c in enumerate(candles[1:], start=1) if c.low < float(limit))
    assert candles[1].open > float(limit), "precondition: the order rests on arrival"
    assert hit > 1, "precondition: at least one candle passes without a fill"

    venue.book.submit_order(buy("lim", "0.2", str(limit)))
    reserved = Decimal("0.2") * limit * (1 + Decimal("0.001"))  # reserve at the larger of the two fees
    assert venue.book.balances()["USDT"] == Balance("USDT", Decimal(10000) - reserved, reserved)

    for candle in candles[1:hit]:
        assert venue.book.on_candle(candle) == []
    (fill,) = venue.book.on_candle(candles[hit])

    assert fill.price == limit and fill.requested_price == limit and fill.is_maker
    assert fill.fee == Decimal("0.2") * limit * Decimal("0.0002")
    assert fill.timestamp == candles[hit].open_time
    assert venue.book.balances()["USDT"] == Balance("USDT", Decimal(10000) - fill.notional - fill.fee, Decimal(0))
    assert venue.book.open_orders() == []


def test_limit_buy_marketable_on_arrival_fills_at_open_as_taker_never_above_limit(candles: list[Candle]) -> None:
    venue = PaperVenue(config())
    venue.book.on_candle(candles[0])
    limit = tick_up(dec(candles[1].open) * Decimal("1.05"))
    venue.book.submit_order(buy("cross", "0.1", str(limit)))

    (fill,) = venue.book.on_candle(candles[1])

    assert not fill.is_maker and fill.requested_price == dec(candles[1].open)
    assert fill.price == tick_up(dec(candles[1].open) * Decimal("1.0002")) <= limit
    assert fill.fee == fill.notional * Decimal("0.001")
    assert venue.book.balances()["USDT"] == Balance("USDT", Decimal(10000) - fill.notional - fill.fee, Decimal(0))


@pytest.mark.parametrize(("on_touch", "fills_on_touch_candle"), [(False, False), (True, True)])
def test_limit_needs_price_to_trade_through_unless_touch_is_enough(
    candles: list[Candle], on_touch: bool, fills_on_touch_candle: bool
) -> None:
    venue = PaperVenue(config(limit_fill_on_touch=on_touch))
    venue.book.on_candle(candles[0])
    limit = dec(candles[1].low)  # exactly the next candle's low: touched, not traded through
    assert candles[1].open > candles[1].low
    venue.book.submit_order(buy("touch", "0.1", str(limit)))

    fills = venue.book.on_candle(candles[1])

    assert bool(fills) is fills_on_touch_candle


def test_latency_delays_the_fill_by_that_many_candles(candles: list[Candle]) -> None:
    venue = PaperVenue(config(latency_bars=2))
    venue.book.on_candle(candles[0])
    venue.book.submit_order(buy("late", "0.1"))

    assert venue.book.on_candle(candles[1]) == []
    assert venue.book.on_candle(candles[2]) == []
    (fill,) = venue.book.on_candle(candles[3])

    assert fill.requested_price == dec(candles[3].open) and fill.timestamp == candles[3].open_time


def test_fill_at_last_close_fills_immediately(candles: list[Candle]) -> None:
    venue = PaperVenue(config(fill_at="last_close"))
    venue.book.on_candle(candles[0])
    order = venue.book.submit_order(buy("now", "0.1"))

    assert order.status is OrderStatus.FILLED
    (fill,) = venue.book.fills
    assert fill.requested_price == dec(candles[0].close)
    assert fill.timestamp == venue.book.now == candles[0].open_time + pd.Timedelta(hours=1)


def test_market_buy_that_gapped_up_fills_what_is_affordable_and_cancels_the_rest(frame: pd.DataFrame) -> None:
    # Size all-in at a candle's close when the next open is higher: at fill time the money runs short.
    gapped = frame["open"].shift(-1) > frame["close"] * 1.0005
    start = frame.index[gapped.to_numpy().argmax()]
    bars, i = candles_of(frame, str(start), 2), 0
    assert bars[1].open > bars[0].close * 1.0005
    venue = PaperVenue(config(costs=CostModel(taker_fee_bps=10, slippage_bps=0)))
    venue.book.on_candle(bars[i])
    amount = BTC_USDT.round_amount(Decimal(10000) / (dec(bars[i].close) * Decimal("1.001")))
    venue.book.submit_order(buy("allin", str(amount)))

    with capture_logs() as logs:
        (fill,) = venue.book.on_candle(bars[i + 1])

    order = venue.book.get_order(SYMBOL, ClientOrderId("allin"))
    assert order.status is OrderStatus.CANCELLED and 0 < order.filled == fill.amount < amount
    free = venue.book.balances()["USDT"].free
    assert free == Decimal(10000) - fill.notional - fill.fee
    assert 0 <= free < fill.price * Decimal("0.00001") * Decimal("1.001"), "all that is affordable was bought"
    assert [e["event"] for e in logs] == ["order_cancelled_insufficient_funds"]


def test_exact_decimal_balances_through_a_round_trip(candles: list[Candle]) -> None:
    venue = PaperVenue(config())
    venue.book.on_candle(candles[0])
    venue.book.submit_order(buy("b", "0.12345"))
    (b,) = venue.book.on_candle(candles[1])
    venue.book.submit_order(sell("s", venue.book.position(SYMBOL)))
    (s,) = venue.book.on_candle(candles[2])

    expected = Decimal(10000) - b.notional - b.fee + s.notional - s.fee
    assert venue.book.balances()["USDT"].free == expected
    assert venue.book.balances()["BTC"] == Balance("BTC", Decimal(0), Decimal(0))
    assert venue.book.equity() == expected
    # Prices have 2 decimals, amounts 5, the fee rate 3: an exact result has at most 10, float noise has more.
    assert isinstance(expected.as_tuple().exponent, int) and expected.as_tuple().exponent >= -10


def test_equity_marks_the_position_at_given_or_last_prices(candles: list[Candle]) -> None:
    venue = PaperVenue(config(initial_balances={"USDT": Decimal(1000), "BTC": Decimal("0.5")}))
    with pytest.raises(ValueError, match="no price for BTC/USDT"):
        venue.book.equity()
    venue.book.on_candle(candles[0])
    assert venue.book.equity() == Decimal(1000) + Decimal("0.5") * dec(candles[0].close)
    assert venue.book.equity({SYMBOL: Decimal(40000)}) == Decimal(21000)
    assert venue.book.position(SYMBOL) == Decimal("0.5")


@pytest.mark.parametrize(
    ("request_", "error", "message"),
    [
        (buy("u", "0.1", symbol="DOGE/USDT"), InvalidOrder, "unknown symbol 'DOGE/USDT'"),
        (buy("tiny", "0.000004"), InvalidOrder, "amount must be > 0 after rounding"),
        (buy("small", "0.00005"), InvalidOrder, "notional .* is below the minimum 5"),
        (buy("inf", "Infinity"), InvalidOrder, "finite"),
        (buy("rich", "10"), InsufficientFunds, "buying 10 needs about"),
        (buy("richlimit", "1", "20000"), InsufficientFunds, "free is 10000"),
        (sell("naked", "0.1"), InsufficientFunds, "selling 0.1 BTC, free is 0"),
    ],
)
def test_bad_orders_are_refused_with_a_clear_error_and_change_nothing(
    candles: list[Candle], request_: OrderRequest, error: type[Exception], message: str
) -> None:
    venue = PaperVenue(config())
    venue.book.on_candle(candles[0])
    before = venue.book.balances()

    with pytest.raises(error, match=message):
        venue.book.submit_order(request_)

    assert venue.book.balances() == before
    assert venue.book.open_orders() == []
    with pytest.raises(OrderNotFound):
        venue.book.get_order(request_.symbol, request_.client_order_id)
    venue.book.on_candle(candles[1])
    assert venue.book.fills == [] and venue.book.balances() == before


def test_negative_or_zero_size_is_refused_before_reaching_the_venue() -> None:
    with pytest.raises(InvalidOrder, match=r"amount must be > 0, was -0\.1"):
        buy("neg", "-0.1")
    with pytest.raises(InvalidOrder, match="amount must be > 0, was 0"):
        sell("zero", "0")


def test_market_order_before_any_candle_is_refused() -> None:
    venue = PaperVenue(config())
    with pytest.raises(InvalidOrder, match="no candle seen yet"):
        venue.book.submit_order(buy("early", "0.1"))
    assert venue.book.balances()["USDT"].free == Decimal(10000)


def test_same_client_order_id_returns_the_existing_order_and_a_different_request_is_refused(
    candles: list[Candle],
) -> None:
    venue = PaperVenue(config())
    venue.book.on_candle(candles[0])
    first = venue.book.submit_order(buy("dup", "0.1", "30000"))
    again = venue.book.submit_order(buy("dup", "0.1", "30000"))

    assert again == first
    assert len(venue.book.open_orders()) == 1
    assert venue.book.balances()["USDT"].used == Decimal("0.1") * Decimal(30000) * Decimal("1.001"), "reserved once"
    with pytest.raises(InvalidOrder, match="already used by a different order"):
        venue.book.submit_order(buy("dup", "0.2", "30000"))


async def test_async_cancel_releases_the_reservation_and_fetch_apis_agree(candles: list[Candle]) -> None:
    async with PaperVenue(config()) as venue:
        venue.book.on_candle(candles[0])
        await venue.create_order(buy("rest", "0.1", "1000"))
        await venue.create_order(buy("mkt", "0.01"))
        assert [o.client_order_id for o in await venue.fetch_open_orders(SYMBOL)] == ["rest", "mkt"]

        venue.book.on_candle(candles[1])
        (fill,) = await venue.fetch_my_trades(SYMBOL)
        assert fill.client_order_id == "mkt"
        assert await venue.fetch_my_trades(SYMBOL, since_ms=ms_from_utc(candles[1].open_time) + 1) == []
        assert [o.client_order_id for o in await venue.fetch_open_orders()] == ["rest"]

        cancelled = await venue.cancel_order(SYMBOL, ClientOrderId("rest"))
        assert cancelled.status is OrderStatus.CANCELLED and cancelled.filled == 0
        balances = await venue.fetch_balances()
        assert balances["USDT"] == Balance("USDT", Decimal(10000) - fill.notional - fill.fee, Decimal(0))
        assert await venue.fetch_open_orders() == []
        assert await venue.cancel_order(SYMBOL, ClientOrderId("rest")) == cancelled, "cancel is idempotent"
        assert (await venue.fetch_order(SYMBOL, ClientOrderId("mkt"))).status is OrderStatus.FILLED
        with pytest.raises(OrderNotFound, match="client_order_id=nope"):
            await venue.cancel_order(SYMBOL, ClientOrderId("nope"))
        with pytest.raises(OrderNotFound):
            await venue.fetch_order("ETH/USDT", ClientOrderId("mkt"))
        markets = await venue.load_markets()
        assert markets[SYMBOL] == BTC_USDT


async def test_replay_drives_the_paper_venue_fills_before_the_next_candle_is_seen(frame: pd.DataFrame) -> None:
    window = frame.loc["2022-01-03":].iloc[:5]
    feed = ReplayFeed(window, symbol=SYMBOL, timeframe="1h")
    seen: list[Candle] = []
    async with PaperVenue(config(), feed=feed) as venue:
        async for candle in venue.candles(SYMBOL, "1h"):
            seen.append(candle)
            if len(seen) == 1:
                await venue.create_order(buy("r1", "0.1"))
            if len(seen) == 2:
                (fill,) = await venue.fetch_my_trades(SYMBOL)
                assert fill.requested_price == dec(candle.open) and fill.timestamp == candle.open_time
        history = await venue.fetch_ohlcv(SYMBOL, "1h", limit=2)
    assert len(seen) == 5 and history == seen[-2:]


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match=r"initial_balances\['USDT'\]"):
        PaperConfig(initial_balances={"USDT": Decimal(-1)})
    with pytest.raises(ValueError, match="latency_bars"):
        PaperConfig(latency_bars=-1)
    with pytest.raises(ValueError, match="latency_bars=0"):
        PaperConfig(fill_at="last_close", latency_bars=1)
    with pytest.raises(ValueError, match="duplicate symbols"):
        PaperConfig(markets=(BTC_USDT, BTC_USDT))


ORDER_OPS = st.lists(
    st.tuples(
        st.sampled_from(["buy", "sell", "limit_buy", "limit_sell", "cancel"]),
        st.decimals(min_value=Decimal("0.00001"), max_value=Decimal("0.5"), places=5),
        st.integers(min_value=-300, max_value=300),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ORDER_OPS)
def test_random_order_flow_keeps_balances_exact_and_never_negative(
    candles: list[Candle], ops: list[tuple[str, Decimal, int]]
) -> None:
    market = Market(SYMBOL, "BTC", "USDT", Decimal("0.00001"), Decimal("0.01"), min_notional=Decimal(5))
    costs = CostModel(taker_fee_bps=10, maker_fee_bps=2, slippage_bps=3, impact_bps=20, max_participation=0.01)
    venue = PaperVenue(
        PaperConfig(markets=(market,), costs=costs, initial_balances={"USDT": Decimal(5000), "BTC": Decimal("0.1")})
    )
    bars = iter(candles)
    venue.book.on_candle(next(bars))
    for n, (kind, amount, offset_bps) in enumerate(ops):
        last = venue.book.last_price(SYMBOL)
        assert last is not None
        before = venue.book.balances()
        try:
            if kind == "cancel":
                for order in venue.book.open_orders(SYMBOL)[:1]:
                    venue.book.cancel(SYMBOL, order.client_order_id)
            else:
                side = Side.BUY if kind.endswith("buy") else Side.SELL
                price = tick_down(last * (1 + Decimal(offset_bps) / 10000)) if kind.startswith("limit") else None
                venue.book.submit_order(
                    OrderRequest(
                        ClientOrderId(f"o{n}"),
                        SYMBOL,
                        side,
                        OrderType.LIMIT if price else OrderType.MARKET,
                        amount,
                        price,
                    )
                )
        except (InvalidOrder, InsufficientFunds):
            assert venue.book.balances() == before
        venue.book.on_candle(next(bars))
        balances = venue.book.balances()
        for balance in balances.values():
            assert balance.free >= 0 and balance.used >= 0
        fills = venue.book.fills
        bought = sum((f.amount for f in fills if f.side is Side.BUY), Decimal(0))
        sold = sum((f.amount for f in fills if f.side is Side.SELL), Decimal(0))
        cash = sum((-f.notional - f.fee if f.side is Side.BUY else f.notional - f.fee for f in fills), Decimal(0))
        assert balances["BTC"].total == Decimal("0.1") + bought - sold
        assert balances["USDT"].total == Decimal(5000) + cash
    for order in venue.book.open_orders():
        venue.book.cancel(SYMBOL, order.client_order_id)
    assert all(b.used == 0 for b in venue.book.balances().values()), "cancelling everything releases every reservation"


def test_history_limit_bounds_finished_orders_and_fills_but_keeps_open_orders(candles: list[Candle]) -> None:
    venue = PaperVenue(config(history_limit=3))
    venue.book.on_candle(candles[0])
    resting = venue.book.submit_order(buy("rest", "0.01", "1000"))  # far below the market: stays open throughout
    for i in range(1, 40):
        venue.book.submit_order(buy(f"b{i}", "0.001") if i % 2 else sell(f"s{i}", "0.001"))
        venue.book.on_candle(candles[i])

    assert 3 <= len(venue.book.fills) < 6, "fills are trimmed back to the limit each time twice as many are held"
    assert venue.book.fills[-1].client_order_id == ClientOrderId("b39"), "the latest fills are the ones kept"
    rest = venue.book.get_order(SYMBOL, ClientOrderId("rest"))
    assert rest.status is OrderStatus.OPEN, "open orders are never dropped"
    assert venue.book.get_order(SYMBOL, ClientOrderId("b39")).status is OrderStatus.FILLED
    with pytest.raises(OrderNotFound):
        venue.book.get_order(SYMBOL, ClientOrderId("b1"))
    assert resting.client_order_id == ClientOrderId("rest")
    # Balances are exact whatever history was dropped: 20 buys and 19 sells of 0.001 BTC.
    assert venue.book.position(SYMBOL) == Decimal("0.001")


def test_history_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="history_limit"):
        config(history_limit=0)
