"""OHLCV download through ccxt against the local Binance-format server: full, interrupted + resumed, faults."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import structlog

from adapters.ccxt.binance import BINANCE_SPOT_OPTIONS
from adapters.ccxt.config import CcxtConfig, RetryConfig
from adapters.data.download import download_ohlcv, download_ohlcv_async, read_candle_file
from adapters.data.sample import sample_path
from adapters.errors import DataError, FatalError, InvalidOrder, TransientError
from tests.support.binance_server import BinanceServer, Fault, load_candles

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
SINCE = datetime(2024, 1, 1, tzinfo=UTC)
UNTIL = datetime(2024, 1, 15, tzinfo=UTC)  # 336 hourly candles
T0 = 1_704_067_200_000


def config_for(server: BinanceServer, **overrides: Any) -> CcxtConfig:
    settings: dict[str, Any] = {
        "timeout_ms": 800,
        "enable_rate_limit": False,
        "options": dict(BINANCE_SPOT_OPTIONS),
        "api_url_override": server.url,
        "retry": RetryConfig(attempts=3, base_delay_s=0.01, max_delay_s=0.02),
        "ohlcv_page_limit": 100,
    }
    settings.update(overrides)
    return CcxtConfig(**settings)


def expected_frame(start_ms: int, end_ms: int) -> pd.DataFrame:
    """The server's candles in [start, end) as a raw frame (date epoch ms)."""
    data = load_candles("BTC/USDT-1h")
    keep = (data.open_ms >= start_ms) & (data.open_ms < end_ms)
    frame = pd.DataFrame(data.ohlcv[keep], columns=["open", "high", "low", "close", "volume"])
    frame.insert(0, "date", data.open_ms[keep])
    return frame


async def test_full_download_equals_the_server_candles(binance_server: BinanceServer, tmp_path: Path) -> None:
    out = tmp_path / "BTC_USDT-1h.parquet"
    result = await download_ohlcv_async(
        "binance", "BTC/USDT", "1h", SINCE, UNTIL, out, config=config_for(binance_server), progress=False
    )
    assert (result.rows, result.new_rows, result.requests, result.resumed_from) == (336, 336, 4, None)
    assert result.validated and result.gaps == 0
    assert (result.first, result.last) == (SINCE, datetime(2024, 1, 14, 23, tzinfo=UTC))
    pd.testing.assert_frame_equal(read_candle_file(out), expected_frame(T0, T0 + 336 * HOUR_MS))
    # Same layout as the bundled file, so the loader and the tests read both the same way.
    assert pq.read_schema(out).remove_metadata() == pq.read_schema(sample_path()).remove_metadata()
    assert not out.with_name(out.name + ".partial").exists()


async def test_interrupted_download_resumes_without_duplicates(
    binance_server: BinanceServer,
    tmp_path: Path,
) -> None:
    out = tmp_path / "btc.parquet"
    cfg = config_for(binance_server)
    # Two pages go through, then the exchange fails for longer than the retries last.
    binance_server.inject("GET", "/api/v3/klines", Fault(times=2))
    binance_server.inject("GET", "/api/v3/klines", Fault.server_error(503, times=None))
    with structlog.testing.capture_logs() as logs, pytest.raises(TransientError, match="fetch_ohlcv"):
        await download_ohlcv_async("binance", "BTC/USDT", "1h", SINCE, UNTIL, out, config=cfg, progress=False)
    assert "ohlcv_download_interrupted" in [e["event"] for e in logs]
    partial = read_candle_file(out)
    pd.testing.assert_frame_equal(partial, expected_frame(T0, T0 + 200 * HOUR_MS))

    binance_server.clear_faults()
    binance_server.requests.clear()
    result = await download_ohlcv_async("binance", "BTC/USDT", "1h", SINCE, UNTIL, out, config=cfg, progress=False)
    assert result.resumed_from == datetime(2024, 1, 9, 8, tzinfo=UTC)  # 200 hours after SINCE
    assert (result.rows, result.new_rows) == (336, 136)
    first_request = binance_server.calls("GET", "/api/v3/klines")[0]
    assert int(first_request.params["startTime"]) == T0 + 200 * HOUR_MS
    final = read_candle_file(out)
    assert final["date"].is_unique and final["date"].is_monotonic_increasing
    pd.testing.assert_frame_equal(final, expected_frame(T0, T0 + 336 * HOUR_MS))


async def test_network_faults_are_retried(binance_server: BinanceServer, tmp_path: Path) -> None:
    out = tmp_path / "btc.parquet"
    binance_server.inject("GET", "/api/v3/klines", Fault(times=1))
    binance_server.inject("GET", "/api/v3/klines", Fault.server_error(502))
    binance_server.inject("GET", "/api/v3/klines", Fault.timeout())
    binance_server.inject("GET", "/api/v3/klines", Fault.rate_limited(retry_after_s=0))
    binance_server.inject("GET", "/api/v3/klines", Fault(latency_s=0.05, times=2))
    cfg = config_for(binance_server, retry=RetryConfig(attempts=4, base_delay_s=0.01, max_delay_s=0.02))
    result = await download_ohlcv_async("binance", "BTC/USDT", "1h", SINCE, UNTIL, out, config=cfg, progress=False)
    assert result.rows == 336
    assert len(binance_server.calls("GET", "/api/v3/klines")) == 4 + 3
    pd.testing.assert_frame_equal(read_candle_file(out), expected_frame(T0, T0 + 336 * HOUR_MS))


async def test_download_to_now_drops_the_candle_in_progress(
    binance_server: BinanceServer,
    tmp_path: Path,
) -> None:
    now = T0 + 250 * HOUR_MS + 17 * 60_000  # 17 minutes into candle 250
    binance_server.market_clock_ms = lambda: now
    out = tmp_path / "btc.parquet"
    with structlog.testing.capture_logs() as logs:
        result = await download_ohlcv_async(
            "binance",
            "BTC/USDT",
            "1h",
            SINCE,
            None,
            out,
            config=config_for(binance_server),
            clock_ms=lambda: now,
        )
    assert result.rows == 250 and result.last == datetime(2024, 1, 11, 9, tzinfo=UTC)
    pages = [e for e in logs if e["event"] == "ohlcv_page_downloaded"]  # progress off a terminal: log lines
    assert [p["candles"] for p in pages] == [100, 100, 50]
    # Up to date: running again fetches nothing new and leaves the file as it is.
    again = await download_ohlcv_async(
        "binance",
        "BTC/USDT",
        "1h",
        SINCE,
        None,
        out,
        config=config_for(binance_server),
        clock_ms=lambda: now,
    )
    assert (again.rows, again.new_rows) == (250, 0)


async def test_sync_entry_point_runs_its_own_loop(binance_server: BinanceServer, tmp_path: Path) -> None:
    out = tmp_path / "btc.parquet"
    # The CLI entry point calls asyncio.run; run it in a thread so this test's loop keeps serving.
    result = await asyncio.to_thread(
        download_ohlcv,
        "binance",
        "BTC/USDT",
        "1h",
        SINCE,
        datetime(2024, 1, 2, tzinfo=UTC),
        out,
        config=config_for(binance_server),
        progress=False,
    )
    assert result.rows == 24
    assert np.array_equal(read_candle_file(out)["date"].to_numpy(), T0 + HOUR_MS * np.arange(24))


async def test_bad_input_is_a_clear_error(binance_server: BinanceServer, tmp_path: Path) -> None:
    out = tmp_path / "x.parquet"
    cfg = config_for(binance_server)
    with pytest.raises(InvalidOrder, match="unknown symbol 'DOGE/USDT'"):
        await download_ohlcv_async("binance", "DOGE/USDT", "1h", SINCE, UNTIL, out, config=cfg, progress=False)
    with pytest.raises(FatalError, match="not a ccxt exchange"):
        await download_ohlcv_async("nosuchx", "BTC/USDT", "1h", SINCE, UNTIL, out, config=cfg, progress=False)
    with pytest.raises(ValueError, match="must be after --since"):
        await download_ohlcv_async("binance", "BTC/USDT", "1h", UNTIL, SINCE, out, config=cfg, progress=False)
    assert not out.exists()
    out.write_text("not parquet")
    with pytest.raises(DataError, match="cannot read it as parquet"):
        await download_ohlcv_async("binance", "BTC/USDT", "1h", SINCE, UNTIL, out, config=cfg, progress=False)
    later = tmp_path / "later.parquet"
    await download_ohlcv_async(
        "binance", "BTC/USDT", "1h", UNTIL, datetime(2024, 1, 16, tzinfo=UTC), later, config=cfg, progress=False
    )
    with pytest.raises(DataError, match=r"starts at 2024-01-15.*after --since 2024-01-01"):
        await download_ohlcv_async("binance", "BTC/USDT", "1h", SINCE, UNTIL, later, config=cfg, progress=False)


async def test_progress_is_checkpointed_while_downloading_and_kept_on_cancel(
    binance_server: BinanceServer,
    tmp_path: Path,
) -> None:
    out = tmp_path / "btc.parquet"
    cfg = config_for(binance_server, timeout_ms=30_000)
    binance_server.inject("GET", "/api/v3/klines", Fault(times=2))
    binance_server.inject("GET", "/api/v3/klines", Fault.timeout(hang_s=60))
    task = asyncio.create_task(
        download_ohlcv_async(
            "binance", "BTC/USDT", "1h", SINCE, UNTIL, out, config=cfg, progress=False, checkpoint_pages=1
        ),
        name="download",
    )
    await binance_server.wait_for_calls("GET", "/api/v3/klines", 3)  # the third page hangs
    # A process killed now (no finally blocks) would still leave the first two pages behind.
    pd.testing.assert_frame_equal(read_candle_file(out), expected_frame(T0, T0 + 200 * HOUR_MS))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pd.testing.assert_frame_equal(read_candle_file(out), expected_frame(T0, T0 + 200 * HOUR_MS))
