"""Load OHLCV candle files into the project's canonical frame: read raw → validate → apply policy.

Formats (chosen by file suffix, or by magic bytes when the suffix says nothing):

- parquet: a `date` column (epoch ms or a timestamp type), or Binance kline files with `open_time`
  (epoch ms) and extra kline columns (dropped);
- CSV (optionally .csv.gz): a `date`, `timestamp`, `open_time` or `datetime` column holding epoch
  s/ms/us/ns numbers (the unit is inferred from their magnitude) or ISO-8601 strings (naive = UTC);
- Freqtrade JSON (`.json`, `.json.gz`, `.jsongz`): a list of `[ts_ms, open, high, low, close, volume]` rows;
- Freqtrade feather: `date` (datetime64[ns, UTC]), open, high, low, close, volume.

The canonical frame: a `DatetimeIndex` named `date` in UTC at microsecond resolution (pandas 3's
default unit), sorted ascending and unique; columns exactly `open, high, low, close, volume`, float64.
`frame.attrs` holds `source` (the path), `timeframe` (like "1h") and `filled_bars`.

Default policies (see `adapters.data.validation` for every problem and policy): anything that would
corrupt training (NaN/inf, bad timestamps, non-positive prices, high < low, open/close outside
[low, high], duplicate timestamps, off-grid timestamps) is an error; zero-volume bars are kept with a
warning; gaps default to `allow`: real exchange outages are kept as they are (never filled with
invented prices) and logged, so the bundled BTC_USDT-1h file (28 real gaps) loads out of the box.
Pass `gaps="error"` to refuse gaps, `gaps="ffill"` for flat volume-0 bars, `gaps="drop"` for the
longest gap-free run. Every dropped row and filled gap is logged with structlog and listed in the
report returned by `load_ohlcv_checked`.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import structlog

from adapters.data.cleaning import CleanResult, apply_policy
from adapters.data.frame import COLUMNS, TIME_UNIT
from adapters.data.policy import DEFAULT_GAPS, GapPolicy, Policy, RowPolicy, ZeroVolumePolicy
from adapters.data.report import ValidationReport, summarise_actions
from adapters.data.sample import is_known_problem
from adapters.data.validation import validate_ohlcv
from adapters.errors import DataError

log = structlog.get_logger()

TIME_COLUMNS = ("date", "timestamp", "open_time", "datetime")
"""Column names accepted as the candle's open time, in order of preference."""

_US_PER = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}
# Keep timestamps inside what datetime64[ns] can hold, so callers converting to ns never overflow.
_MIN_US = -(2**63 // 1000) + 1
_MAX_US = 2**63 // 1000 - 1


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".json", ".json.gz", ".jsongz")):
        return "json"
    if name.endswith((".csv", ".csv.gz", ".txt")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".feather", ".ftr", ".arrow")):
        return "feather"
    with path.open("rb") as handle:
        head = handle.read(8)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"ARROW1"):
        return "feather"
    raise DataError(
        f"{path}: unknown candle file format (suffix {path.suffix!r}); expected .parquet, .feather, "
        ".csv[.gz] or .json[.gz]"
    )


def read_ohlcv_raw(path: str | Path) -> pd.DataFrame:
    """Read a candle file into raw rows in file order: RangeIndex, `date` (UTC, NaT if bad), float64 OHLCV.

    Raises:
        DataError: the file is missing, unreadable, truncated, not candles, or lacks a needed column.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    name = path.name.lower()
    if "funding_rate" in name:
        raise DataError(f"{path}: a funding-rate file (the rate is in `open`), not OHLCV candles")
    if "-trades." in name or name.startswith("trades"):
        raise DataError(f"{path}: a trades file (individual trades), not OHLCV candles")
    fmt = _format_of(path)
    table = _read_json(path) if fmt == "json" else _read_table(path, fmt)
    raw = _to_raw(table, path)
    raw.attrs["source"] = str(path)
    return raw


def _read_table(path: Path, fmt: str) -> pd.DataFrame:
    try:
        if fmt == "parquet":
            return pd.read_parquet(path)
        if fmt == "feather":
            return pd.read_feather(path)
        return pd.read_csv(path)
    # The readers raise a zoo of types for damaged files (ArrowInvalid, OSError, EmptyDataError,
    # UnicodeDecodeError, EOFError, ...); at this boundary they all mean "this file is unusable".
    except Exception as e:
        raise DataError(f"{path}: cannot read as {fmt} (truncated or corrupt?): {type(e).__name__}: {e}") from e


def _read_json(path: Path) -> pd.DataFrame:
    try:
        data = path.read_bytes()
        if path.name.lower().endswith(("gz",)) or data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        rows = json.loads(data.decode("utf-8"))
    except Exception as e:
        raise DataError(f"{path}: cannot read as JSON (truncated or corrupt?): {type(e).__name__}: {e}") from e
    if not isinstance(rows, list):
        raise DataError(
            f"{path}: expected a JSON list of [ts_ms, open, high, low, close, volume] rows, got a {type(rows).__name__}"
        )
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != 6:
            hint = ""
            if isinstance(row, list) and len(row) == 7 and isinstance(row[1], str):
                hint = " (this looks like a trades file, not candles)"
            raise DataError(
                f"{path}: row {i}: expected 6 fields [ts_ms, open, high, low, close, volume], got {_short(row)}{hint}"
            )
        for j, value in enumerate(row):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise DataError(f"{path}: row {i} field {j}: expected a number, got {_short(value)}")
    return pd.DataFrame(rows, columns=["date", *COLUMNS])


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _to_raw(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    table = table.copy()
    table.columns = [str(c).strip().lower() for c in table.columns]
    if table.columns.has_duplicates:
        raise DataError(f"{path}: duplicate column names {list(table.columns)}")
    time_column = next((c for c in TIME_COLUMNS if c in table.columns), None)
    if time_column is not None:
        times = table[time_column].reset_index(drop=True)
    elif isinstance(table.index, pd.DatetimeIndex):
        times = pd.Series(table.index)
    else:
        raise DataError(
            f"{path}: no time column: expected one of {list(TIME_COLUMNS)}, columns are {list(table.columns)}"
        )
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        hint = ""
        if {"price", "amount"} <= set(table.columns):
            hint = " (this looks like a trades file, not candles)"
        raise DataError(f"{path}: missing column(s) {missing}; columns are {list(table.columns)}{hint}")
    dates = _parse_times(times, path, time_column or "index")
    data: dict[str, Any] = {"date": dates}
    for name in COLUMNS:
        column = table[name].reset_index(drop=True)
        try:
            data[name] = pd.to_numeric(column, errors="coerce").astype("float64")
        except (TypeError, ValueError) as e:
            raise DataError(f"{path}: column {name!r} is not numeric: {e}") from e
    raw = pd.DataFrame(data)
    raw.index = pd.RangeIndex(len(raw))
    # Keep the original text of unparseable times (few) so error messages can quote it.
    bad = np.flatnonzero(dates.isna().to_numpy())
    raw.attrs["bad_times"] = {int(row): _short(times.iloc[row], 40) for row in bad[:1000]}
    return raw


def _parse_times(times: pd.Series, path: Path, column: str) -> pd.Series:
    """Convert a time column to datetime64[us, UTC]; unparseable or out-of-range values become NaT."""
    dtype = times.dtype
    try:
        if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(dtype):
            index = pd.DatetimeIndex(times)
            index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
            return pd.Series(index.floor("us").as_unit(TIME_UNIT), name="date")
        if pd.api.types.is_bool_dtype(dtype):
            raise DataError(f"{path}: time column {column!r} holds booleans, not times")
        if pd.api.types.is_numeric_dtype(dtype):
            return _epoch_to_times(times.to_numpy(), path, column)
        numbers = pd.to_numeric(times, errors="coerce")
        if numbers.notna().sum() == times.notna().sum() and times.notna().any():
            return _epoch_to_times(numbers.to_numpy(), path, column)
        parsed = pd.to_datetime(times.astype("string"), utc=True, errors="coerce", format="ISO8601")
        return pd.Series(pd.DatetimeIndex(parsed).floor("us").as_unit(TIME_UNIT), name="date")
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot parse time column {column!r}: {type(e).__name__}: {e}") from e


def _epoch_to_times(values: npt.NDArray[Any], path: Path, column: str) -> pd.Series:
    numbers = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(numbers)
    if not finite.any():
        us = np.full(len(numbers), np.iinfo(np.int64).min, dtype=np.int64)
    else:
        unit = _epoch_unit(float(np.median(np.abs(numbers[finite]))))
        if np.issubdtype(np.asarray(values).dtype, np.integer):
            # Exact integer arithmetic: float64 cannot hold every epoch-ns value.
            ints = np.asarray(values, dtype=np.int64)
            limit = {"ns": 2**62, "us": _MAX_US, "ms": _MAX_US // 1000, "s": _MAX_US // 1_000_000}[unit]
            ok = np.abs(ints.astype(np.float64)) < limit
            scaled = {
                "ns": ints // 1000,
                "us": ints,
                "ms": np.where(ok, ints, 0) * 1000,
                "s": np.where(ok, ints, 0) * 1_000_000,
            }[unit]
        else:
            with np.errstate(invalid="ignore", over="ignore"):
                scaled_float = np.round(numbers * _US_PER[unit])
            ok = finite & (scaled_float > _MIN_US) & (scaled_float < _MAX_US)
            scaled = np.where(ok, scaled_float, 0).astype(np.int64)
        us = np.where(ok & (scaled > _MIN_US) & (scaled < _MAX_US), scaled, np.iinfo(np.int64).min)
    index = pd.DatetimeIndex(us.astype(f"datetime64[{TIME_UNIT}]")).tz_localize("UTC")
    return pd.Series(index, name="date")


def _epoch_unit(magnitude: float) -> str:
    """Guess the epoch unit from a typical value: 1.5e9 is seconds, 1.5e12 ms, 1.5e15 us, 1.5e18 ns."""
    if magnitude >= 1e17:
        return "ns"
    if magnitude >= 1e14:
        return "us"
    if magnitude >= 1e11:
        return "ms"
    return "s"


def load_ohlcv_checked(
    path: str | Path,
    *,
    timeframe: str | pd.Timedelta | None = None,
    gaps: GapPolicy = DEFAULT_GAPS,
    duplicates: RowPolicy = "error",
    invalid: RowPolicy = "error",
    zero_volume: ZeroVolumePolicy = "ignore",
    policy: Policy | None = None,
) -> CleanResult:
    """Load a candle file and return the canonical frame together with its validation report.

    `invalid` applies to every row-level corruption (NaN/inf, bad timestamps, non-positive prices,
    high < low, open/close outside the range, off-grid timestamps); `policy` overrides all the others.

    Raises:
        DataError: the file is unreadable, or has a problem whose policy is `error`.
    """
    raw = read_ohlcv_raw(path)
    chosen = policy or Policy.rows(invalid, gaps=gaps, duplicates=duplicates, zero_volume=zero_volume)
    report = validate_ohlcv(raw, source=str(path), timeframe=timeframe, policy=chosen)
    result = apply_policy(raw, report)
    _log_result(result.report)
    return result


def load_ohlcv(
    path: str | Path,
    *,
    timeframe: str | pd.Timedelta | None = None,
    gaps: GapPolicy = DEFAULT_GAPS,
    duplicates: RowPolicy = "error",
    invalid: RowPolicy = "error",
    zero_volume: ZeroVolumePolicy = "ignore",
    policy: Policy | None = None,
) -> pd.DataFrame:
    """Load a candle file (parquet, feather, CSV, Freqtrade JSON) into the canonical OHLCV frame.

    Raises:
        DataError: the file is unreadable, or has a problem whose policy is `error`.
    """
    return load_ohlcv_checked(
        path,
        timeframe=timeframe,
        gaps=gaps,
        duplicates=duplicates,
        invalid=invalid,
        zero_volume=zero_volume,
        policy=policy,
    ).frame


_known_shown: set[tuple[str, str]] = set()
"""Known problems of bundled files already reported in this process (reported once, as information)."""


def _log_result(report: ValidationReport) -> None:
    bound = log.bind(source=report.source)
    for problem in report.problems:
        if problem.severity != "error" and is_known_problem(report.source, problem.kind, problem.count):
            if (report.source, problem.kind) not in _known_shown:
                _known_shown.add((report.source, problem.kind))
                bound.info(
                    "ohlcv_known_problem",
                    kind=problem.kind,
                    count=problem.count,
                    policy=problem.policy,
                    note="documented in adapters/bundled/README.md",
                )
            continue
        bound.warning(
            "ohlcv_problem_found",
            kind=problem.kind,
            count=problem.count,
            policy=problem.policy,
            examples=list(problem.examples[:3]),
        )
    for (kind, action), (total, items) in summarise_actions(report.actions).items():
        bound.warning(
            "ohlcv_rows_dropped" if action == "dropped" else "ohlcv_bars_filled",
            kind=kind,
            count=total,
            where=[
                {"row": a.row, "timestamp": None if a.timestamp is None else a.timestamp.isoformat(), "count": a.count}
                for a in items[:20]
            ],
        )
    bound.info(
        "ohlcv_loaded",
        rows=report.output_rows,
        first=None if report.first is None else report.first.isoformat(),
        last=None if report.last is None else report.last.isoformat(),
        timeframe=report.timeframe,
    )
