"""Replay + paper venue against an independent reference: backtesting.py's `FractionalBacktest`.

One fixed rule strategy runs both ways on the same real Binance BTC/USDT 1h candles: SMA 10 / SMA 30 on
closes; when the fast average crosses above the slow one and we are flat, buy all-in with a market order;
when it crosses below and we hold, sell everything with a market order. Fee 0.1 % of notional, no slippage.

Conventions aligned between the two (each one changes the result if it differs):

- **Fill at the next open.** backtesting.py with ``trade_on_close=False`` fills an order placed in
  ``next()`` of bar *t* at the open of bar *t+1*; the paper venue (``fill_at="next_open"``,
  ``latency_bars=0``) fills an order submitted after candle *t* closed at candle *t+1*'s open. Orders
  decided on the last bar never fill on either side.
- **All-in sizing with the fill price.** backtesting.py sizes ``buy()`` (size ≈ 1, i.e. all equity) when
  the order fills: ``floor(cash / (open × (1 + fee)) / unit) × unit`` with ``fractional_unit`` = our amount
  step, 0.00001 BTC. The decision instant of candle *t* is the instant candle *t+1* opens, so the harness
  sizes with candle *t+1*'s open (the price a live bot sees when it decides) and rounds down to the step
  with ``Market.round_amount``. Float vs Decimal arithmetic may differ by one step at a boundary, hence
  "quantities equal up to the amount precision".
- **Fee on notional, both legs**, in the quote currency: backtesting.py's ``commission=0.001`` charges
  ``size × price × 0.001`` at entry and at exit; `CostModel(taker_fee_bps=10, slippage_bps=0)` charges
  the same on each fill. No spread (``spread=0``), no margin (``margin=1``).
- **No volume cap.** backtesting.py fills any size at the open; the paper venue runs with
  ``volume_limited=False`` here (the realistic default caps fills at a share of the candle's volume).
- **Same indicator values, bit for bit.** A crossover at a near-tie flips on the last bit of a float, so
  both sides compute SMA with ``math.fsum(window) / n`` (backtesting.py through ``Strategy.I`` over the
  whole array, where each value only depends on its own window; the harness incrementally).
- **Crossover** is backtesting.py's ``lib.crossover``: ``a[-2] < b[-2] and a[-1] > b[-1]``, first checked on
  the bar after the slow average's first value (backtesting.py starts ``next()`` one bar after warm-up).
- **Open position at the end.** ``finalize_trades=False``: backtesting.py would otherwise close it with an
  extra broker pass at the last bar's open, which no live venue can do. Its final equity is cash plus the
  position marked at the last close, exactly the paper venue's ``equity()`` at the last close; the open
  position itself is compared through ``Strategy.position`` / ``Strategy.trades``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from decimal import Decimal

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
from backtesting import Strategy
from backtesting.lib import FractionalBacktest, crossover

from adapters.costs import CostModel
from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from adapters.paper.config import BTC_USDT, PaperConfig
from adapters.paper.replay import ReplayFeed
from adapters.paper.venue import PaperVenue
from adapters.types import ClientOrderId, Fill, OrderRequest, OrderType, Side

FAST, SLOW = 10, 30
FEE = 0.001
CASH = 10_000
SYMBOL = "BTC/USDT"


def fsum_sma(values: Sequence[float] | npt.NDArray[np.float64], n: int) -> npt.NDArray[np.float64]:
    """Return the simple moving average, each value a correctly rounded fsum of its window divided by n."""
    array = np.asarray(values, dtype=np.float64)
    out = np.full(len(array), np.nan)
    for i in range(n - 1, len(array)):
        out[i] = math.fsum(array[i - n + 1 : i + 1]) / n
    return out


class SmaCross(Strategy):
    """All-in on a fast-over-slow SMA cross, all-out on the reverse cross (backtesting.py side)."""

    def init(self) -> None:
        self.fast = self.I(fsum_sma, self.data.Close, FAST)
        self.slow = self.I(fsum_sma, self.data.Close, SLOW)

    def next(self) -> None:
        if crossover(self.fast, self.slow) and not self.position:
            self.buy()
        elif crossover(self.slow, self.fast) and self.position:
            self.position.close()


async def run_paper(frame: pd.DataFrame) -> PaperVenue:
    """Run the same strategy through replay + paper venue and return the venue."""
    costs = CostModel(taker_fee_bps=FEE * 1e4, maker_fee_bps=FEE * 1e4, slippage_bps=0.0, impact_bps=0.0)
    config = PaperConfig(initial_balances={"USDT": Decimal(CASH)}, costs=costs, volume_limited=False)
    feed = ReplayFeed(frame, symbol=SYMBOL, timeframe="1h")
    opens = frame["open"].to_numpy()
    fee_factor = 1 + Decimal(repr(FEE))
    closes: list[float] = []
    previous: tuple[float, float] | None = None
    async with PaperVenue(config, feed=feed) as venue:
        async for candle in venue.candles(SYMBOL, "1h"):
            closes.append(candle.close)
            i = len(closes) - 1
            if i < SLOW - 1:
                continue
            fast = math.fsum(closes[-FAST:]) / FAST
            slow = math.fsum(closes[-SLOW:]) / SLOW
            if previous is not None and i + 1 < len(opens):
                prev_fast, prev_slow = previous
                held = venue.book.position(SYMBOL)
                if prev_fast < prev_slow and fast > slow and held == 0:
                    next_open = Decimal(repr(float(opens[i + 1])))
                    free = (await venue.fetch_balances())["USDT"].free
                    amount = BTC_USDT.round_amount(free / (next_open * fee_factor))
                    await venue.create_order(
                        OrderRequest(ClientOrderId(f"buy-{i}"), SYMBOL, Side.BUY, OrderType.MARKET, amount)
                    )
                elif prev_slow < prev_fast and slow > fast and held > 0:
                    await venue.create_order(
                        OrderRequest(ClientOrderId(f"sell-{i}"), SYMBOL, Side.SELL, OrderType.MARKET, held)
                    )
            previous = (fast, slow)
    return venue


def round_trips(fills: list[Fill]) -> tuple[list[tuple[Fill, Fill]], Fill | None]:
    """Pair each buy fill with the sell fill that closes it; return the pairs and a still-open buy."""
    assert all(f.side is (Side.BUY if k % 2 == 0 else Side.SELL) for k, f in enumerate(fills)), "alternating"
    pairs = [(fills[k], fills[k + 1]) for k in range(0, len(fills) - 1, 2)]
    return pairs, fills[-1] if len(fills) % 2 else None


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    """Real Binance BTC/USDT 1h candles (bundled)."""
    return load_ohlcv(sample_path("BTC/USDT-1h"))


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2019-04-01", "2019-08-31"),  # includes the 2019-05-15 exchange outage (10 missing hours)
        ("2022-01-01", "2022-06-30"),  # a falling market: many losing round trips
    ],
)
async def test_paper_venue_matches_backtesting_py(candles: pd.DataFrame, start: str, end: str) -> None:
    frame = candles.loc[start:end]
    assert len(frame) > 3000

    data = frame.rename(columns=str.capitalize)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # backtesting.py warns about a tz-aware index; irrelevant here
        backtest = FractionalBacktest(
            data,
            SmaCross,
            cash=CASH,
            commission=FEE,
            spread=0.0,
            margin=1.0,
            trade_on_close=False,
            exclusive_orders=False,
            finalize_trades=False,
            fractional_unit=float(BTC_USDT.amount_step),
        )
        result = backtest.run()
    reference = result["_trades"]
    strategy = result["_strategy"]

    venue = await run_paper(frame)
    pairs, open_buy = round_trips(venue.book.fills)

    assert len(reference) >= 20, "a meaningful number of trades"
    assert len(pairs) == len(reference)
    step = BTC_USDT.amount_step
    for (entry, exit_), (_, row) in zip(pairs, reference.iterrows(), strict=True):
        assert entry.timestamp == row["EntryTime"] and exit_.timestamp == row["ExitTime"]
        assert float(entry.price) == pytest.approx(row["EntryPrice"], rel=1e-12)
        assert float(exit_.price) == pytest.approx(row["ExitPrice"], rel=1e-12)
        assert row["Size"] > 0, "long trades only, on both sides"
        assert abs(entry.amount - Decimal(repr(round(row["Size"], 8)))) <= step
        assert exit_.amount == entry.amount, "all-out sells exactly what was bought"

    open_size = Decimal(repr(round(float(strategy.position.size) * float(step), 8)))
    if open_buy is None:
        assert open_size == 0
    else:
        (open_trade,) = strategy.trades
        assert abs(open_buy.amount - open_size) <= step
        assert float(open_buy.price) == pytest.approx(open_trade.entry_price / float(step), rel=1e-12)

    final_equity = float(venue.book.equity())
    assert final_equity == pytest.approx(result["Equity Final [$]"], rel=1e-4)
