"""Replay historical candles as a market data feed, as fast as possible or on an accelerated clock.

A `ReplayFeed` holds one canonical candle frame per symbol (DatetimeIndex `date` in UTC, columns
open/high/low/close/volume) and plays a window of it, `[start, end)`, through the same async iterator
a live venue offers: ``async for candle in feed.candles("BTC/USDT", "1h")``. Candles before `start`
are history: `fetch_ohlcv` returns them (and every candle already played) so a strategy can warm up,
but never a candle that has not been played yet, so a backtest cannot look ahead through it.

For throughput, `iter_candles` is the same replay without the event loop, and `arrays` hands out the
numpy columns for code that wants no per-candle objects at all.
"""

from __future__ import annotations

import asyncio
import heapq
import importlib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from os import PathLike
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd
import structlog

from adapters.errors import DataError
from adapters.types import Candle, ms_from_utc, timeframe_seconds

log = structlog.get_logger()

COLUMNS = ("open", "high", "low", "close", "volume")
_YIELD_EVERY = 1024
"""In fast mode, hand control back to the event loop every this many candles so other tasks run."""
_TIME_BLOCK = 4096
"""Candles whose open times are converted to datetimes at once."""

FrameSource = pd.DataFrame | str | PathLike[str]


class CandleArrays(NamedTuple):
    """The replay window of one symbol as numpy columns (open times in epoch ms)."""

    open_time_ms: npt.NDArray[np.int64]
    open: npt.NDArray[np.float64]
    high: npt.NDArray[np.float64]
    low: npt.NDArray[np.float64]
    close: npt.NDArray[np.float64]
    volume: npt.NDArray[np.float64]


@dataclass(frozen=True)
class ReplayConfig:
    """How a replay plays its candles."""

    speed: float | None = None
    """Simulated seconds per real second (60.0 plays one hour per minute); None plays as fast as possible."""
    start: datetime | None = None
    """First open time to play (UTC, inclusive); earlier candles are warm-up history. None: from the first."""
    end: datetime | None = None
    """Open time to stop before (UTC, exclusive). None: to the last candle."""

    def __post_init__(self) -> None:
        if self.speed is not None and not (np.isfinite(self.speed) and self.speed > 0):
            raise ValueError(f"replay.speed must be a finite number > 0 or None, was {self.speed}")
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"replay.{name} must be timezone-aware (UTC), was naive {value.isoformat()}")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"replay.end {self.end.isoformat()} must be after replay.start {self.start.isoformat()}")


class _Series:
    """One symbol's candles as arrays, plus the replay window and how far it has been played."""

    __slots__ = ("arrays", "begin", "cursor", "stop", "symbol")

    def __init__(self, symbol: str, frame: pd.DataFrame, config: ReplayConfig) -> None:
        self.symbol = symbol
        index = frame.index
        times = pd.DatetimeIndex(index).as_unit("ms")
        # Views of the frame's float64 columns where pandas holds them so (a canonical frame does): the replay
        # keeps no second copy of the candles; the frame must not change while it plays.
        columns = [frame[column].to_numpy(dtype=np.float64) for column in COLUMNS]
        self.arrays = CandleArrays(times.asi8.astype(np.int64, copy=False), *columns)
        start_ms = ms_from_utc(config.start) if config.start is not None else None
        end_ms = ms_from_utc(config.end) if config.end is not None else None
        stamps = self.arrays.open_time_ms
        self.begin = int(np.searchsorted(stamps, start_ms, side="left")) if start_ms is not None else 0
        self.stop = int(np.searchsorted(stamps, end_ms, side="left")) if end_ms is not None else len(stamps)
        self.cursor = self.begin
        """Index of the next candle to play; everything before it may be fetched as history."""

    def datetimes(self, start: int, stop: int) -> list[datetime]:
        """Open times of candles [start, stop): one vectorised conversion instead of a datetime.fromtimestamp per
        candle on the hot path, a block at a time (200,000 datetimes at once were 11 MB)."""
        stamps = self.arrays.open_time_ms[start:stop]
        return list(pd.to_datetime(stamps, unit="ms", utc=True).to_pydatetime())

    def blocks(self, start: int, stop: int) -> Iterator[tuple[int, list[datetime]]]:
        """Yield (first index, open times) of the blocks of `_TIME_BLOCK` candles covering [start, stop)."""
        for first in range(start, stop, _TIME_BLOCK):
            yield first, self.datetimes(first, min(first + _TIME_BLOCK, stop))

    def candles(self, start: int, stop: int, timeframe: str) -> list[Candle]:
        """Candles [start, stop), their open times converted at once."""
        a = self.arrays
        return [
            Candle.checked_already(
                self.symbol,
                timeframe,
                open_time,
                a.open.item(i),
                a.high.item(i),
                a.low.item(i),
                a.close.item(i),
                a.volume.item(i),
            )
            for i, open_time in enumerate(self.datetimes(start, stop), start)
        ]


def _load_path(path: Path) -> pd.DataFrame:
    try:
        # Imported lazily (and by name, so this module type-checks before adapters.data.ohlcv exists).
        ohlcv = importlib.import_module("adapters.data.ohlcv")
    except ImportError:  # adapters.data.ohlcv is written in parallel; read the bundled formats meanwhile.
        return _read_minimal(path)
    frame = ohlcv.load_ohlcv(path)
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"{path}: load_ohlcv returned {type(frame).__name__}, not a DataFrame")
    return frame


def _read_minimal(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        raw = pd.read_parquet(path)
    elif suffix == ".feather":
        raw = pd.read_feather(path)
    else:
        raise DataError(f"{path}: cannot read {suffix!r} candles without adapters.data.ohlcv.load_ohlcv")
    if "date" not in raw.columns:
        raise DataError(f"{path}: no 'date' column; columns are {list(raw.columns)}")
    dates = raw["date"]
    index = (
        pd.to_datetime(dates, unit="ms", utc=True)
        if pd.api.types.is_numeric_dtype(dates)
        else pd.to_datetime(dates, utc=True)
    )
    frame = raw.loc[:, list(COLUMNS)].astype("float64")
    frame.index = pd.DatetimeIndex(index, name="date")
    return frame


def _check_frame(symbol: str, frame: pd.DataFrame, source: str) -> pd.DataFrame:
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"replay {symbol} ({source}): missing columns {missing}; columns are {list(frame.columns)}")
    if not isinstance(frame.index, pd.DatetimeIndex) or frame.index.tz is None:
        raise DataError(f"replay {symbol} ({source}): the index must be a tz-aware DatetimeIndex (UTC)")
    if len(frame) == 0:
        raise DataError(f"replay {symbol} ({source}): no candles")
    if not frame.index.is_unique:
        dup = frame.index[frame.index.duplicated()][0]
        raise DataError(f"replay {symbol} ({source}): duplicate timestamp {dup.isoformat()}")
    if not frame.index.is_monotonic_increasing:
        position = int(np.argmax(np.diff(frame.index.asi8) < 0)) + 1
        raise DataError(
            f"replay {symbol} ({source}): timestamps not ascending at row {position} "
            f"({frame.index[position].isoformat()})"
        )
    values = frame.loc[:, list(COLUMNS)].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"replay {symbol} ({source}): non-finite value at {frame.index[row].isoformat()}")
    # What `Candle` checks of one candle, for all at once: the replay then plays them with `Candle.checked_already`.
    opens, highs, lows, closes, volumes = values.T
    inconsistent = (lows > np.minimum(opens, closes)) | (np.maximum(opens, closes) > highs) | (volumes < 0)
    if inconsistent.any():
        row = int(np.argmax(inconsistent))
        o, h, low, c, v = values[row]
        raise DataError(
            f"replay {symbol} ({source}): inconsistent candle at {frame.index[row].isoformat()}: "
            f"open={o} high={h} low={low} close={c} volume={v}"
        )
    return frame


class ReplayFeed:
    """Historical candles of one or several symbols, played as a feed of closed candles."""

    def __init__(
        self,
        data: FrameSource | Mapping[str, FrameSource],
        *,
        timeframe: str,
        symbol: str | None = None,
        config: ReplayConfig | None = None,
    ) -> None:
        """Build a feed from a canonical frame or a candle file (with `symbol`), or a mapping symbol -> either."""
        self.timeframe = timeframe
        self.timeframe_ms = timeframe_seconds(timeframe) * 1000
        self.config = config or ReplayConfig()
        if isinstance(data, Mapping):
            if symbol is not None:
                raise ValueError("pass either one frame with `symbol` or a mapping of symbol -> frame, not both")
            sources: Mapping[str, FrameSource] = data
        else:
            if symbol is None:
                raise ValueError("a single frame or path needs `symbol=` to name its market")
            sources = {symbol: data}
        if not sources:
            raise ValueError("a replay needs at least one symbol")
        self._series: dict[str, _Series] = {}
        for name, source in sources.items():
            if isinstance(source, pd.DataFrame):
                frame, label = source, "<frame>"
            else:
                frame, label = _load_path(Path(source)), str(source)
            self._series[name] = _Series(name, _check_frame(name, frame, label), self.config)
        starts = [int(s.arrays.open_time_ms[s.begin]) for s in self._series.values() if s.begin < s.stop]
        self._clock_origin_ms = (
            ms_from_utc(self.config.start) if self.config.start is not None else min(starts, default=0)
        )

    @property
    def symbols(self) -> list[str]:
        """Return the symbols this feed replays."""
        return list(self._series)

    def _get(self, symbol: str, timeframe: str | None = None) -> _Series:
        if timeframe is not None and timeframe != self.timeframe:
            raise DataError(f"replay has {self.timeframe} candles, not {timeframe!r} (symbol {symbol})")
        try:
            return self._series[symbol]
        except KeyError:
            raise DataError(f"replay has no candles for {symbol!r}; symbols: {', '.join(self._series)}") from None

    def __len__(self) -> int:
        return sum(s.stop - s.begin for s in self._series.values())

    def arrays(self, symbol: str) -> CandleArrays:
        """Return the replay window of `symbol` as numpy columns (views, do not modify)."""
        series = self._get(symbol)
        a, window = series.arrays, slice(series.begin, series.stop)
        return CandleArrays(
            a.open_time_ms[window], a.open[window], a.high[window], a.low[window], a.close[window], a.volume[window]
        )

    def iter_candles(self, symbol: str | None = None) -> Iterator[Candle]:
        """Play the window synchronously, as fast as possible; all symbols merged by open time when None."""
        if symbol is not None:
            yield from self._play(self._get(symbol))
            return
        streams = [self._play(series) for series in self._series.values()]
        yield from heapq.merge(*streams, key=lambda candle: candle.open_time)

    def _play(self, series: _Series) -> Iterator[Candle]:
        timeframe = self.timeframe
        a = series.arrays
        opens, highs, lows, closes, volumes = a.open, a.high, a.low, a.close, a.volume
        for first, times in series.blocks(series.begin, series.stop):
            for i, open_time in enumerate(times, first):
                series.cursor = i + 1
                yield Candle.checked_already(
                    series.symbol,
                    timeframe,
                    open_time,
                    float(opens[i]),
                    float(highs[i]),
                    float(lows[i]),
                    float(closes[i]),
                    float(volumes[i]),
                )

    async def candles(self, symbol: str, timeframe: str) -> AsyncIterator[Candle]:
        """Yield each candle of the window once it has closed on the replay clock."""
        series = self._get(symbol, timeframe)
        speed = self.config.speed
        loop = asyncio.get_running_loop()
        real_origin = loop.time()
        a = series.arrays
        stamps = a.open_time_ms
        begin, stop = series.begin, series.stop
        if begin >= stop:
            return
        # Per candle, `.item` is a float without a numpy scalar.
        opens, highs, lows, closes, volumes = a.open, a.high, a.low, a.close, a.volume
        name, timeframe = series.symbol, self.timeframe
        for first, times in series.blocks(begin, stop):
            for i, open_time in enumerate(times, first):
                if speed is None:
                    if (i - begin + 1) % _YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                else:
                    close_ms = int(stamps[i]) + self.timeframe_ms
                    due = real_origin + (close_ms - self._clock_origin_ms) / 1000.0 / speed
                    # The accelerated clock is the feature here: wait until the candle has closed in replay time.
                    await asyncio.sleep(max(due - loop.time(), 0.0))
                series.cursor = i + 1
                yield Candle.checked_already(
                    name,
                    timeframe,
                    open_time,
                    opens.item(i),
                    highs.item(i),
                    lows.item(i),
                    closes.item(i),
                    volumes.item(i),
                )

    async def fetch_ohlcv(
        self, symbol: str, timeframe: str, since_ms: int | None = None, limit: int | None = None
    ) -> list[Candle]:
        """Return candles already closed on the replay (warm-up history and played ones), like a venue would."""
        series = self._get(symbol, timeframe)
        if limit is not None and limit <= 0:
            raise ValueError(f"fetch_ohlcv {symbol}: limit must be > 0, was {limit}")
        stamps = series.arrays.open_time_ms
        available = series.cursor
        if since_ms is not None:
            first = int(np.searchsorted(stamps[:available], since_ms, side="left"))
            last = available if limit is None else min(available, first + limit)
        else:
            last = available
            first = 0 if limit is None else max(0, available - limit)
        return series.candles(first, last, self.timeframe)

    def rewind(self) -> None:
        """Reset every symbol to the start of its window (history again ends before `start`)."""
        for series in self._series.values():
            series.cursor = series.begin
