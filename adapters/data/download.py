"""Download OHLCV history through ccxt into the bundled parquet format, resumably.

The file has the bundled layout (`adapters/bundled/BTC_USDT-1h.parquet`): columns `date` (timestamp ms, UTC),
`open`, `high`, `low`, `close`, `volume` (float64), one row per closed candle, sorted and unique. Progress is
written atomically (temp file + rename) every few pages and when a download is interrupted, so running the same
command again continues after the file's last candle.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import structlog

from adapters.ccxt.adapter import CcxtAdapter
from adapters.ccxt.config import CcxtConfig
from adapters.ccxt.convert import timeframe_ms
from adapters.errors import DataError
from adapters.types import Candle, ms_from_utc, utc_from_ms

log = structlog.get_logger()

COLUMNS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class DownloadResult:
    """What a download produced."""

    path: Path
    rows: int
    """Candles in the file now."""
    new_rows: int
    """Candles fetched by this run."""
    first: datetime | None
    last: datetime | None
    resumed_from: datetime | None
    """Open time this run continued from, when the file already held candles."""
    requests: int
    """fetch_ohlcv pages requested by this run."""
    validated: bool
    """Whether adapters.data.validation checked the file."""
    gaps: int = 0
    """Exchange gaps found by validation (kept: real outages are not filled)."""
    missing_bars: int = 0


def read_candle_file(path: Path) -> pd.DataFrame:
    """Read a downloaded (or bundled) parquet as a raw frame: `date` epoch ms int64 plus float64 OHLCV."""
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read it as parquet ({e}); delete it to download from scratch") from e
    missing = [c for c in ("date", *COLUMNS) if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}, columns are {list(frame.columns)}; "
            "not a candle file written by this tool"
        )
    dates = frame["date"]
    if pd.api.types.is_integer_dtype(dates.dtype):
        date_ms = dates.to_numpy(dtype=np.int64)
    else:
        date_ms = pd.to_datetime(dates, utc=True).dt.as_unit("ms").astype("int64").to_numpy(dtype=np.int64)
    data: dict[str, Any] = {"date": date_ms}
    for column in COLUMNS:
        data[column] = frame[column].to_numpy(dtype=np.float64)
    return pd.DataFrame(data)


def _frame_from_candles(candles: list[Candle]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "date": np.array([ms_from_utc(c.open_time) for c in candles], dtype=np.int64),
            "open": np.array([c.open for c in candles], dtype=np.float64),
            "high": np.array([c.high for c in candles], dtype=np.float64),
            "low": np.array([c.low for c in candles], dtype=np.float64),
            "close": np.array([c.close for c in candles], dtype=np.float64),
            "volume": np.array([c.volume for c in candles], dtype=np.float64),
        }
    )


def _merge(existing: pd.DataFrame, candles: list[Candle]) -> pd.DataFrame:
    if not candles:
        return existing
    merged = pd.concat([existing, _frame_from_candles(candles)], ignore_index=True)
    merged = merged.drop_duplicates(subset="date", keep="last").sort_values("date", kind="stable")
    return merged.reset_index(drop=True)


def write_candle_file(frame: pd.DataFrame, path: Path) -> None:
    """Write a raw frame in the bundled layout, atomically (a reader never sees half a file)."""
    out = frame.copy()
    out["date"] = pd.to_datetime(out["date"].to_numpy(dtype=np.int64), unit="ms", utc=True).as_unit("ms")
    tmp = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _validate(frame: pd.DataFrame, path: Path, timeframe: str) -> tuple[bool, int, int]:
    """Run adapters.data.validation on the file's rows if that module is present; return (ran, gaps, missing bars)."""
    try:
        from adapters.data.policy import Policy
        from adapters.data.validation import validate_ohlcv
    except ImportError:  # pragma: no cover - adapters.data.validation ships with the project
        log.warning("ohlcv_validation_skipped", reason="adapters.data.validation not available")
        return False, 0, 0
    canonical = frame.copy()
    canonical["date"] = pd.to_datetime(canonical["date"].to_numpy(dtype=np.int64), unit="ms", utc=True)
    # Real exchanges have outages: gaps are reported, not filled and not fatal.
    report = validate_ohlcv(canonical, source=str(path), timeframe=timeframe, policy=Policy(gaps="allow"))
    report.raise_for_errors()
    return True, len(report.gaps), report.missing_bars


class _Progress:
    """A tqdm bar on a terminal, structured log lines elsewhere."""

    def __init__(self, enabled: bool, total: int, symbol: str, timeframe: str) -> None:
        self._bar: Any = None
        self._enabled = enabled
        self._log = log.bind(symbol=symbol, timeframe=timeframe)
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="bar", desc=f"{symbol} {timeframe}", file=sys.stderr)

    def update(self, count: int, last: datetime, total_rows: int) -> None:
        if self._bar is not None:
            self._bar.update(count)
        elif self._enabled:
            self._log.info("ohlcv_page_downloaded", candles=count, last=last.isoformat(), rows=total_rows)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


async def download_ohlcv_async(
    exchange_id: str,
    symbol: str,
    timeframe: str,
    since: datetime,
    until: datetime | None,
    out: Path,
    *,
    sandbox: bool = False,
    progress: bool = True,
    config: CcxtConfig | None = None,
    checkpoint_pages: int = 10,
    clock_ms: Callable[[], int] | None = None,
) -> DownloadResult:
    """Page through ccxt fetch_ohlcv from `since` to `until` (or the last closed candle) into `out`, resuming."""
    cfg = replace(config or CcxtConfig(), exchange_id=exchange_id, sandbox=sandbox)
    tf_ms = timeframe_ms(timeframe)
    since_ms = math.ceil(ms_from_utc(since) / tf_ms) * tf_ms
    until_ms = ms_from_utc(until) if until is not None else None
    if until_ms is not None and until_ms <= since_ms:
        raise ValueError(f"--until {until.isoformat() if until else None} must be after --since {since.isoformat()}")
    existing = read_candle_file(out) if out.exists() else _frame_from_candles([])
    cursor = since_ms
    resumed_from: datetime | None = None
    if len(existing):
        first_ms, last_ms = int(existing["date"].min()), int(existing["date"].max())
        if first_ms > since_ms:
            raise DataError(
                f"{out} starts at {utc_from_ms(first_ms).isoformat()}, after --since {since.isoformat()}: it is "
                "another download; delete it or pass a --since inside it"
            )
        cursor = max(cursor, last_ms + tf_ms)
        resumed_from = utc_from_ms(cursor)
    dl_log = log.bind(exchange=exchange_id, symbol=symbol, timeframe=timeframe, out=str(out))
    if resumed_from is not None:
        dl_log.info("ohlcv_download_resuming", rows=len(existing), since=resumed_from.isoformat())
    now_ms = (clock_ms or (lambda: int(time.time() * 1000)))()
    total = max(0, ((until_ms or now_ms) - cursor) // tf_ms)
    fetched: list[Candle] = []
    written = 0
    requests = 0
    bar = _Progress(progress, total, symbol, timeframe)
    page_limit = cfg.ohlcv_page_limit
    completed = False
    try:
        async with CcxtAdapter(cfg, None, clock_ms=clock_ms) as venue:
            venue.market(symbol)
            while until_ms is None or cursor < until_ms:
                page = await venue.fetch_ohlcv(symbol, timeframe, since_ms=cursor, limit=page_limit)
                requests += 1
                full_page = len(page) == page_limit
                if until_ms is not None:
                    page = [c for c in page if ms_from_utc(c.open_time) < until_ms]
                if not page:
                    break
                fetched.extend(page)
                cursor = ms_from_utc(page[-1].open_time) + tf_ms
                bar.update(len(page), page[-1].open_time, len(existing) + len(fetched))
                if requests % checkpoint_pages == 0:
                    write_candle_file(_merge(existing, fetched), out)
                    written = len(fetched)
                if not full_page:
                    break
        completed = True
    finally:
        bar.close()
        if not completed and len(fetched) > written:
            # Interrupted (network gave up, Ctrl-C, cancelled): keep what arrived so the next run resumes.
            write_candle_file(_merge(existing, fetched), out)
            dl_log.warning(
                "ohlcv_download_interrupted",
                rows=len(existing) + len(fetched),
                resume_from=utc_from_ms(cursor).isoformat(),
            )
    frame = _merge(existing, fetched)
    if fetched or not out.exists():
        if frame.empty:
            raise DataError(f"{exchange_id} served no closed {symbol} {timeframe} candles from {since.isoformat()}")
        write_candle_file(frame, out)
    validated, gaps, missing = _validate(frame, out, timeframe)
    result = DownloadResult(
        path=out,
        rows=len(frame),
        new_rows=len(fetched),
        first=utc_from_ms(int(frame["date"].iloc[0])) if len(frame) else None,
        last=utc_from_ms(int(frame["date"].iloc[-1])) if len(frame) else None,
        resumed_from=resumed_from,
        requests=requests,
        validated=validated,
        gaps=gaps,
        missing_bars=missing,
    )
    dl_log.info(
        "ohlcv_download_finished",
        rows=result.rows,
        new_rows=result.new_rows,
        requests=requests,
        gaps=gaps,
        missing_bars=missing,
    )
    return result


def download_ohlcv(
    exchange_id: str,
    symbol: str,
    timeframe: str,
    since: datetime,
    until: datetime | None,
    out: Path,
    *,
    sandbox: bool = False,
    progress: bool = True,
    config: CcxtConfig | None = None,
    checkpoint_pages: int = 10,
) -> DownloadResult:
    """Run download_ohlcv_async to completion (for the `ai-trading data download` command)."""
    return asyncio.run(
        download_ohlcv_async(
            exchange_id,
            symbol,
            timeframe,
            since,
            until,
            out,
            sandbox=sandbox,
            progress=progress,
            config=config,
            checkpoint_pages=checkpoint_pages,
        )
    )
