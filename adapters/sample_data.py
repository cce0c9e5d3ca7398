"""Paths of the real candles bundled with the package (see adapters/bundled/README.md)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

BUNDLED = {
    "BTC/USDT-1h": "BTC_USDT-1h.parquet",
    "ETH/BTC-5m": "ETH_BTC-5m.feather",
    "LTC/BTC-5m": "LTC_BTC-5m.feather",
}
DEFAULT_SAMPLE = "BTC/USDT-1h"


def sample_path(name: str = DEFAULT_SAMPLE) -> Path:
    """Return the path of a bundled candle file by `SYMBOL-timeframe` name."""
    try:
        filename = BUNDLED[name]
    except KeyError:
        raise KeyError(f"no bundled sample {name!r}; available: {', '.join(sorted(BUNDLED))}") from None
    return Path(str(files("adapters").joinpath("bundled", filename)))
