"""Candles per second through replay + paper venue vs backtesting.py, same candles, same strategy, same run.

The strategy is the SMA 10/30 crossover of tests/test_backtesting_reference.py (all-in / all-out market
orders, 0.1 % fee, no slippage, no volume cap), over the whole bundled BTC/USDT 1h file (72,540 candles).
Three figures, best of `--repeat` runs each:

- ``paper_async``: the normal event-driven path, ``async for candle in venue.candles(...)`` with
  ``await venue.create_order(...)``;
- ``paper_sync``: the same replay + venue through their synchronous core (``feed.iter_candles`` and
  ``venue.book.on_candle`` / ``venue.book.submit_order``), the path a fast backtest engine may take;
- ``backtesting_py``: ``backtesting.lib.FractionalBacktest.run`` (its indicators are precomputed
  vectorised, the paper strategy updates them per candle).

Run: ``python tests/benchmarks/replay_throughput.py``; prints one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from decimal import Decimal

import numpy as np
import numpy.typing as npt
import pandas as pd
import structlog
from backtesting import Strategy
from backtesting.lib import FractionalBacktest, crossover

from adapters.costs import CostModel
from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from adapters.paper.config import BTC_USDT, PaperConfig
from adapters.paper.replay import ReplayFeed
from adapters.paper.venue import PaperVenue
from adapters.types import Candle, ClientOrderId, OrderRequest, OrderType, Side

FAST, SLOW, FEE, CASH, SYMBOL = 10, 30, 0.001, 10_000, "BTC/USDT"


def fsum_sma(values: npt.NDArray[np.float64], n: int) -> npt.NDArray[np.float64]:
    """Return the simple moving average computed as fsum(window) / n."""
    array = np.asarray(values, dtype=np.float64)
    out = np.full(len(array), np.nan)
    for i in range(n - 1, len(array)):
        out[i] = math.fsum(array[i - n + 1 : i + 1]) / n
    return out


class SmaCross(Strategy):
    """All-in on a fast-over-slow cross, all-out on the reverse cross."""

    def init(self) -> None:
        self.fast = self.I(fsum_sma, self.data.Close, FAST)
        self.slow = self.I(fsum_sma, self.data.Close, SLOW)

    def next(self) -> None:
        if crossover(self.fast, self.slow) and not self.position:
            self.buy()
        elif crossover(self.slow, self.fast) and self.position:
            self.position.close()


class PaperSmaCross:
    """The same rule, fed one candle at a time; returns the order to send, if any."""

    def __init__(self, opens: npt.NDArray[np.float64]) -> None:
        self.opens = opens
        self.closes: list[float] = []
        self.previous: tuple[float, float] | None = None
        self.fee_factor = 1 + Decimal(repr(FEE))

    def on_candle(self, candle: Candle, venue: PaperVenue) -> OrderRequest | None:
        closes = self.closes
        closes.append(candle.close)
        i = len(closes) - 1
        if i < SLOW - 1:
            return None
        fast = math.fsum(closes[-FAST:]) / FAST
        slow = math.fsum(closes[-SLOW:]) / SLOW
        previous, self.previous = self.previous, (fast, slow)
        if previous is None or i + 1 >= len(self.opens):
            return None
        prev_fast, prev_slow = previous
        if prev_fast < prev_slow and fast > slow and venue.book.position(SYMBOL) == 0:
            free = venue.book.balances()["USDT"].free
            amount = BTC_USDT.round_amount(free / (Decimal(repr(float(self.opens[i + 1]))) * self.fee_factor))
            return OrderRequest(ClientOrderId(f"b{i}"), SYMBOL, Side.BUY, OrderType.MARKET, amount)
        if prev_slow < prev_fast and slow > fast and (held := venue.book.position(SYMBOL)) > 0:
            return OrderRequest(ClientOrderId(f"s{i}"), SYMBOL, Side.SELL, OrderType.MARKET, held)
        return None


def paper_config() -> PaperConfig:
    """Return the venue config matching the backtesting.py run."""
    costs = CostModel(taker_fee_bps=FEE * 1e4, maker_fee_bps=FEE * 1e4, slippage_bps=0.0)
    return PaperConfig(initial_balances={"USDT": Decimal(CASH)}, costs=costs, volume_limited=False)


def run_paper_async(frame: pd.DataFrame) -> PaperVenue:
    """Run the strategy through `venue.candles()` and `await venue.create_order()`."""

    async def main() -> PaperVenue:
        strategy = PaperSmaCross(frame["open"].to_numpy())
        feed = ReplayFeed(frame, symbol=SYMBOL, timeframe="1h")
        async with PaperVenue(paper_config(), feed=feed) as venue:
            async for candle in venue.candles(SYMBOL, "1h"):
                request = strategy.on_candle(candle, venue)
                if request is not None:
                    await venue.create_order(request)
        return venue

    return asyncio.run(main())


def run_paper_sync(frame: pd.DataFrame) -> PaperVenue:
    """Run the strategy through the synchronous core of replay and venue."""
    strategy = PaperSmaCross(frame["open"].to_numpy())
    feed = ReplayFeed(frame, symbol=SYMBOL, timeframe="1h")
    venue = PaperVenue(paper_config())
    for candle in feed.iter_candles(SYMBOL):
        venue.book.on_candle(candle)
        request = strategy.on_candle(candle, venue)
        if request is not None:
            venue.book.submit_order(request)
    return venue


def run_backtesting(frame: pd.DataFrame) -> pd.Series:
    """Run the strategy with backtesting.py's FractionalBacktest."""
    data = frame.rename(columns=str.capitalize)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backtest = FractionalBacktest(
            data,
            SmaCross,
            cash=CASH,
            commission=FEE,
            finalize_trades=False,
            fractional_unit=float(BTC_USDT.amount_step),
        )
        return backtest.run()


def best_time(run: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Return the fastest wall time of `repeat` runs and the last result."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return min(times), result


def main(argv: Iterable[str] | None = None) -> None:
    """Measure and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender; the fastest counts")
    parser.add_argument("--candles", type=int, default=0, help="use only the first N candles (0: all)")
    args = parser.parse_args(None if argv is None else list(argv))
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout is for the figure

    frame = load_ohlcv(sample_path("BTC/USDT-1h"))
    if args.candles:
        frame = frame.iloc[: args.candles]
    n = len(frame)
    t_async, venue_async = best_time(lambda: run_paper_async(frame), args.repeat)
    t_sync, venue_sync = best_time(lambda: run_paper_sync(frame), args.repeat)
    t_bt, result = best_time(lambda: run_backtesting(frame), args.repeat)
    assert isinstance(venue_async, PaperVenue) and isinstance(venue_sync, PaperVenue)
    assert isinstance(result, pd.Series)
    figures = {
        "benchmark": "replay_throughput",
        "candles": n,
        "paper_async_candles_per_s": round(n / t_async),
        "paper_sync_candles_per_s": round(n / t_sync),
        "backtesting_py_candles_per_s": round(n / t_bt),
        "ratio_async_vs_backtesting": round(t_bt / t_async, 2),
        "ratio_sync_vs_backtesting": round(t_bt / t_sync, 2),
        "round_trips_paper": len(venue_async.fills) // 2,
        "round_trips_backtesting": len(result["_trades"]),
        "final_equity_paper": float(venue_async.equity()),
        "final_equity_backtesting": float(result["Equity Final [$]"]),
        "repeat": args.repeat,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
