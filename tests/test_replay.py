"""Historical replay: candles in order, windows, no look-ahead through fetch_ohlcv, clocks, bad input."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from adapters.errors import DataError
from adapters.paper.replay import ReplayConfig, ReplayFeed
from adapters.types import Candle, ms_from_utc, timeframe_seconds

SYMBOL = "BTC/USDT"


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """Real Binance BTC/USDT 1h candles (bundled)."""
    return load_ohlcv(sample_path("BTC/USDT-1h"))


@pytest.fixture
def week(frame: pd.DataFrame) -> pd.DataFrame:
    """One week of hourly candles (168 rows)."""
    return frame.loc["2024-03-11":"2024-03-17"]


def as_rows(candles: list[Candle]) -> list[tuple[datetime, float, float, float, float, float]]:
    return [(c.open_time, c.open, c.high, c.low, c.close, c.volume) for c in candles]


def frame_rows(frame: pd.DataFrame) -> list[tuple[datetime, float, float, float, float, float]]:
    return [
        (ts.to_pydatetime(), *map(float, row))
        for ts, row in zip(frame.index, frame[["open", "high", "low", "close", "volume"]].to_numpy(), strict=True)
    ]


async def test_candles_are_yielded_in_order_with_the_frames_values(week: pd.DataFrame) -> None:
    feed = ReplayFeed(week, symbol=SYMBOL, timeframe="1h")

    got = [c async for c in feed.candles(SYMBOL, "1h")]

    assert len(got) == len(week) == 168
    assert as_rows(got) == frame_rows(week)
    assert all(c.symbol == SYMBOL and c.timeframe == "1h" for c in got)
    assert got[0].open_time.tzinfo is not None
    assert as_rows(list(feed.iter_candles(SYMBOL))) == as_rows(got), "sync and async paths agree"


async def test_path_input_loads_the_same_candles(frame: pd.DataFrame) -> None:
    start = datetime(2025, 11, 30, 20, tzinfo=UTC)
    feed = ReplayFeed(sample_path("BTC/USDT-1h"), symbol=SYMBOL, timeframe="1h", config=ReplayConfig(start=start))

    got = [c async for c in feed.candles(SYMBOL, "1h")]

    assert as_rows(got) == frame_rows(frame.loc[start:])
    assert len(got) == 4


async def test_window_history_and_no_look_ahead_through_fetch_ohlcv(frame: pd.DataFrame) -> None:
    start, end = datetime(2024, 3, 14, tzinfo=UTC), datetime(2024, 3, 15, tzinfo=UTC)
    feed = ReplayFeed(frame, symbol=SYMBOL, timeframe="1h", config=ReplayConfig(start=start, end=end))

    warmup = await feed.fetch_ohlcv(SYMBOL, "1h", limit=50)
    assert len(warmup) == 50 and warmup[-1].open_time == start - timedelta(hours=1), "history ends before start"

    played = []
    async for candle in feed.candles(SYMBOL, "1h"):
        played.append(candle)
        latest = await feed.fetch_ohlcv(SYMBOL, "1h", limit=3)
        assert latest[-1] == candle, "the candle just played is the newest one fetchable, never a later one"
    assert [c.open_time for c in played] == [start + timedelta(hours=h) for h in range(24)]
    assert max(c.high for c in played) == 73_777.0, "the bundled file's all-time high of 2024-03-14"

    since = ms_from_utc(start)
    assert await feed.fetch_ohlcv(SYMBOL, "1h", since_ms=since, limit=5) == played[:5]
    assert await feed.fetch_ohlcv(SYMBOL, "1h", since_ms=since) == played
    feed.rewind()
    assert (await feed.fetch_ohlcv(SYMBOL, "1h", limit=1))[0].open_time == start - timedelta(hours=1)


async def test_accelerated_clock_never_releases_a_candle_early(week: pd.DataFrame) -> None:
    feed = ReplayFeed(week.iloc[:3], symbol=SYMBOL, timeframe="1h", config=ReplayConfig(speed=36_000.0))
    loop = asyncio.get_running_loop()
    started = loop.time()
    # 3 hourly candles at 36000x close 0.1 s, 0.2 s and 0.3 s of real time after the replay starts.
    offsets = [loop.time() - started async for _ in feed.candles(SYMBOL, "1h")]

    assert len(offsets) == 3
    for k, offset in enumerate(offsets, start=1):
        assert offset >= 0.1 * k - 0.01, "the clock may run late under load, never early"


async def test_fast_mode_lets_other_tasks_run(frame: pd.DataFrame) -> None:
    feed = ReplayFeed(frame.iloc[:5000], symbol=SYMBOL, timeframe="1h")
    ticks = 0

    async def other() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async with asyncio.TaskGroup() as group:
        task = group.create_task(other(), name="other")
        count = sum([1 async for _ in feed.candles(SYMBOL, "1h")])
        task.cancel()

    assert count == 5000
    assert ticks >= 4, "the replay handed the loop back while playing"


def test_several_symbols_merge_by_open_time(shared_data: Path) -> None:
    ltc = shared_data / "freqtrade" / "LTC_BTC-5m.feather"
    feed = ReplayFeed({"ETH/BTC": sample_path("ETH/BTC-5m"), "LTC/BTC": ltc}, timeframe="5m")

    merged = list(feed.iter_candles())

    assert len(merged) == len(feed) == 2 * 5760
    times = [c.open_time for c in merged]
    assert times == sorted(times)
    assert {c.symbol for c in merged[:2]} == {"ETH/BTC", "LTC/BTC"}
    eth = feed.arrays("ETH/BTC")
    assert [c.close for c in merged if c.symbol == "ETH/BTC"] == eth.close.tolist()


def test_arrays_are_the_window_in_epoch_ms(week: pd.DataFrame) -> None:
    start = datetime(2024, 3, 12, tzinfo=UTC)
    feed = ReplayFeed(week, symbol=SYMBOL, timeframe="1h", config=ReplayConfig(start=start))

    arrays = feed.arrays(SYMBOL)

    assert arrays.open_time_ms[0] == ms_from_utc(start)
    assert np.all(np.diff(arrays.open_time_ms) == 3_600_000)
    np.testing.assert_array_equal(arrays.close, week.loc[start:, "close"].to_numpy())


async def test_unknown_symbol_and_wrong_timeframe_are_clear_errors(week: pd.DataFrame) -> None:
    feed = ReplayFeed(week, symbol=SYMBOL, timeframe="1h")
    with pytest.raises(DataError, match="no candles for 'ETH/USDT'; symbols: BTC/USDT"):
        [c async for c in feed.candles("ETH/USDT", "1h")]
    with pytest.raises(DataError, match="has 1h candles, not '5m'"):
        await feed.fetch_ohlcv(SYMBOL, "5m")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns=["volume"]), r"missing columns \['volume'\]"),
        (lambda f: f.tz_localize(None), "tz-aware DatetimeIndex"),
        (lambda f: f.iloc[[0, 2, 1]], r"not ascending at row 2 \(2024-03-11T01:00:00\+00:00\)"),
        (lambda f: pd.concat([f.iloc[:2], f.iloc[1:3]]), r"duplicate timestamp 2024-03-11T01:00:00\+00:00"),
        (lambda f: f.assign(close=f["close"].where(f.index != f.index[5])), r"non-finite value at 2024-03-11T05"),
        (lambda f: f.iloc[:0], "no candles"),
        (
            lambda f: f.assign(high=f["high"].where(f.index != f.index[7], f["low"] - 1)),
            r"inconsistent candle at 2024-03-11T07:00:00\+00:00: open=\S+ high=\S+ low=",
        ),
        (lambda f: f.assign(volume=f["volume"].where(f.index != f.index[3], -1.0)), r"T03:00.* volume=-1.0"),
    ],
)
def test_bad_frames_are_refused_naming_the_problem(week: pd.DataFrame, mutate: object, message: str) -> None:
    bad = mutate(week)  # type: ignore[operator]
    with pytest.raises(DataError, match=message):
        ReplayFeed(bad, symbol=SYMBOL, timeframe="1h")


def test_played_candles_equal_candles_built_and_checked_one_by_one(week: pd.DataFrame) -> None:
    # A replay checks its frame once and plays its candles unchecked; they must be the candles Candle(...) builds.
    feed = ReplayFeed(week, symbol=SYMBOL, timeframe="1h")
    played = list(feed.iter_candles(SYMBOL))
    built = [
        Candle(SYMBOL, "1h", t.to_pydatetime(), row.open, row.high, row.low, row.close, row.volume)
        for t, row in week.iterrows()
    ]
    assert played == built and len(played) == len(week)
    assert [type(c.open) for c in played[:2]] == [float, float]


def test_bad_config_and_arguments_are_refused(week: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="speed"):
        ReplayConfig(speed=0.0)
    with pytest.raises(ValueError, match="naive"):
        ReplayConfig(start=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="must be after"):
        ReplayConfig(start=datetime(2024, 1, 2, tzinfo=UTC), end=datetime(2024, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="needs `symbol=`"):
        ReplayFeed(week, timeframe="1h")
    with pytest.raises(ValueError, match="unknown timeframe '1x'"):
        ReplayFeed(week, symbol=SYMBOL, timeframe="1x")


@pytest.mark.parametrize(
    ("timeframe", "seconds"), [("1m", 60), ("5m", 300), ("1h", 3600), ("4h", 14400), ("1d", 86400)]
)
def test_timeframe_seconds(timeframe: str, seconds: int) -> None:
    assert timeframe_seconds(timeframe) == seconds
