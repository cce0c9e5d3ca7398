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

KNOWN_PROBLEMS: dict[str, dict[str, int]] = {
    # Binance's own outages (28 gaps, 128 missing hours) and 4 hours without a trade; see bundled/README.md.
    "BTC_USDT-1h.parquet": {"gap": 28, "zero_volume": 4},
}
"""Problems of the bundled files that are known and documented: kind -> the count validation reports."""


def is_known_problem(source: str | Path, kind: str, count: int) -> bool:
    """Tell whether `source` is a bundled file and `kind` × `count` is one of its documented problems."""
    path = Path(source)
    known = KNOWN_PROBLEMS.get(path.name)
    if known is None or known.get(kind) != count:
        return False
    try:
        return path.resolve().parent == _bundled_dir().resolve()
    except OSError:
        return False


def _bundled_dir() -> Path:
    return Path(str(files("adapters").joinpath("bundled")))


def sample_path(name: str = DEFAULT_SAMPLE) -> Path:
    """Return the path of a bundled candle file by `SYMBOL-timeframe` name."""
    try:
        filename = BUNDLED[name]
    except KeyError:
        raise KeyError(f"no bundled sample {name!r}; available: {', '.join(sorted(BUNDLED))}") from None
    return Path(str(files("adapters").joinpath("bundled", filename)))
