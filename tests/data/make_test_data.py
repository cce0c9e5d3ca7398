"""Rebuild the small real-data files under tests/data/ from the workspace's shared data (run once, by hand).

Usage: python tests/data/make_test_data.py /path/to/shared/data

Every file is real Binance market data (the freqtrade/ files come from the Freqtrade project's test data), cut
to the rows the tests need so a fresh clone carries a few hundred KB, not 30 MB. See tests/data/README.md.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent


def main(source: Path) -> None:
    """Write every file under tests/data/ from `source` (a shared/data folder)."""
    (HERE / "binance").mkdir(exist_ok=True)
    (HERE / "freqtrade" / "futures").mkdir(parents=True, exist_ok=True)
    # ADA/BTC 5m: two and a half days around the five real exchange gaps of 2018-01-15.
    ada = pd.read_feather(source / "freqtrade/ADA_BTC-5m.feather")
    ada = ada[(ada["date"] >= "2018-01-14 12:00") & (ada["date"] < "2018-01-17")].reset_index(drop=True)
    ada.to_feather(HERE / "freqtrade/ADA_BTC-5m.feather", compression="zstd")
    # XRP/ETH: sparse 1m (gaps everywhere) and its 5m resample, whole.
    for name in ("XRP_ETH-1m.feather", "XRP_ETH-5m.feather"):
        pd.read_feather(source / "freqtrade" / name).to_feather(HERE / "freqtrade" / name, compression="zstd")
    # Trades: the first 500 of the aggTrades file (the tests only need its shape).
    trades = json.loads(gzip.decompress((source / "freqtrade/XRP_ETH-trades.json.gz").read_bytes()))[:500]
    (HERE / "freqtrade/XRP_ETH-trades.json.gz").write_bytes(gzip.compress(json.dumps(trades).encode(), mtime=0))
    # Freqtrade JSON rows: the first 1000 minutes (with their real gaps).
    rows = json.loads((source / "freqtrade/UNITTEST_BTC-1m.json").read_text())[:1000]
    (HERE / "freqtrade/UNITTEST_BTC-1m.json").write_text(json.dumps(rows))
    futures = source / "freqtrade/futures"
    shutil.copyfile(
        futures / "XRP_USDT_USDT-1h-futures.json.gz", HERE / "freqtrade/futures/XRP_USDT_USDT-1h-futures.json.gz"
    )
    for name in ("XRP_USDT_USDT-5m-futures.feather", "XRP_USDT_USDT-8h-funding_rate.feather"):
        pd.read_feather(futures / name).to_feather(HERE / "freqtrade/futures" / name, compression="zstd")
    # BTC/USDT 5m: 1500 candles of June 2021; 1m klines: the first 6 hours of September 2025.
    five = pd.read_parquet(source / "binance/BTC_USDT-5m.parquet").iloc[400_000:401_500].reset_index(drop=True)
    five.to_parquet(HERE / "binance/BTC_USDT-5m.parquet", compression="zstd")
    klines = pd.read_parquet(source / "binance/BTCUSDT-1m-2025-09-to-11-klines.parquet").iloc[:360]
    klines.reset_index(drop=True).to_parquet(
        HERE / "binance/BTCUSDT-1m-2025-09-to-11-klines.parquet", compression="zstd"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data")
