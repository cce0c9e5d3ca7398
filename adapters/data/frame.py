"""The OHLCV frame's vocabulary: its columns and time unit, timeframes, and raw rows read from any frame."""

from __future__ import annotations

import re
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from adapters.errors import DataError
from adapters.types import TIMEFRAME_UNIT_SECONDS, timeframe_seconds

PRICE_COLUMNS = ("open", "high", "low", "close")
COLUMNS = (*PRICE_COLUMNS, "volume")
TIME_UNIT: Final = "us"
"""Resolution of the canonical DatetimeIndex (pandas 3's default unit)."""
RAW_DTYPE = f"datetime64[{TIME_UNIT}, UTC]"

_TIMEFRAME_IN_NAME_RE = re.compile(r"(?<![A-Za-z0-9])(\d+)([smhdw])(?![A-Za-z0-9])")


def timeframe_to_timedelta(timeframe: str) -> pd.Timedelta:
    """Convert a ccxt-style timeframe ("1m", "5m", "1h", "1d", "1w") to a Timedelta."""
    return pd.Timedelta(seconds=timeframe_seconds(timeframe))


def timedelta_to_timeframe(step: pd.Timedelta) -> str:
    """Convert a Timedelta to the largest whole ccxt-style unit ("1h", "5m"); sub-second steps use "ms"."""
    total_us = int(step / pd.Timedelta(microseconds=1))
    if total_us <= 0:
        raise DataError(f"timeframe must be positive, was {step}")
    for unit in ("w", "d", "h", "m", "s"):
        unit_us = TIMEFRAME_UNIT_SECONDS[unit] * 1_000_000
        if total_us % unit_us == 0:
            return f"{total_us // unit_us}{unit}"
    return f"{total_us / 1000:g}ms"


def timeframe_from_name(name: str) -> str | None:
    """Return the timeframe token in a file name like `BTC_USDT-1h.parquet`, or None."""
    tokens = _TIMEFRAME_IN_NAME_RE.findall(name)
    return f"{tokens[0][0]}{tokens[0][1]}" if len(tokens) == 1 else None


def infer_timeframe(frame: pd.DataFrame | pd.DatetimeIndex | pd.Series) -> pd.Timedelta:
    """Return the most common spacing between consecutive distinct timestamps."""
    times: pd.Index | pd.Series
    if isinstance(frame, pd.DataFrame):
        times = frame.index if "date" not in frame.columns else pd.DatetimeIndex(frame["date"])
    else:
        times = frame
    values, _ = unique_counts(to_us(pd.DatetimeIndex(times)))
    values = values[values != NAT]
    if len(values) < 2:
        raise DataError(f"cannot infer a timeframe from {len(values)} distinct timestamp(s); pass timeframe=")
    diffs = np.diff(values)
    steps, counts = unique_counts(diffs)
    # Ties go to the smaller step: with sparse data the true bar is the smallest common spacing.
    return pd.Timedelta(microseconds=int(steps[np.argmax(counts)]))


NAT = np.iinfo(np.int64).min
"""The int64 value of NaT in `to_us` results."""


def unique_counts(values: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Return sorted unique values and their counts (sort-based: numpy's hash path is slow here)."""
    ordered = np.sort(values)
    if len(ordered) == 0:
        return ordered, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    counts = np.diff(np.concatenate((starts, [len(ordered)])))
    return ordered[starts], counts.astype(np.int64)


def to_us(times: pd.DatetimeIndex | pd.Series) -> npt.NDArray[np.int64]:
    """Return timestamps as int64 microseconds since the epoch, UTC (naive ones taken as UTC; NaT as NAT)."""
    index = pd.DatetimeIndex(times)
    if index.tz is None:
        index = index.tz_localize("UTC")
    return np.asarray(index.as_unit(TIME_UNIT).asi8, dtype=np.int64)


def timestamp_from_us(value_us: int) -> pd.Timestamp | None:
    """Return a UTC Timestamp from microseconds since the epoch; None for NAT."""
    if value_us == NAT:
        return None
    return pd.Timestamp(value_us, unit="us", tz="UTC")


def as_raw(frame: pd.DataFrame, *, source: str = "<frame>") -> pd.DataFrame:
    """Return raw rows (RangeIndex, `date` column, float64 OHLCV) from a raw or canonical frame."""
    if "date" in frame.columns:
        dates = frame["date"]
    elif isinstance(frame.index, pd.DatetimeIndex):
        dates = pd.Series(frame.index, name="date")
    else:
        raise DataError(f"{source}: no `date` column or DatetimeIndex; columns are {list(frame.columns)}")
    missing = [name for name in COLUMNS if name not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; columns are {list(frame.columns)}")
    if not isinstance(dates.dtype, pd.DatetimeTZDtype) and not pd.api.types.is_datetime64_dtype(dates.dtype):
        raise DataError(f"{source}: `date` must be datetime64, was {dates.dtype}")
    index = pd.DatetimeIndex(dates)
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    data: dict[str, Any] = {"date": index.as_unit(TIME_UNIT)}
    for name in COLUMNS:
        data[name] = pd.to_numeric(pd.Series(frame[name]).reset_index(drop=True), errors="coerce").astype("float64")
    raw = pd.DataFrame(data)
    raw.index = pd.RangeIndex(len(raw))
    return raw
