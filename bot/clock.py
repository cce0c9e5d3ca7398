"""The wall clock the daemon reads (replaceable by a market clock in tests and benchmarks)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from adapters.types import Candle


def utc_now() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)


class MarketClock:
    """A clock that follows replayed candles: it reads the close time of the last candle it was shown.

    A backtest passes it as the engine's clock and `follow` as its candle hook, so the risk manager's daily
    baseline, cooldowns, order ages and ledger timestamps run on market time.
    """

    def __init__(self, start: datetime, timeframe: timedelta) -> None:
        """Start at `start` (the first replayed candle's open); each candle moves it to that candle's close."""
        self.now = start
        self.timeframe = timeframe

    def __call__(self) -> datetime:
        """The close time of the last candle followed (before any: the start)."""
        return self.now

    def follow(self, candle: Candle) -> None:
        """Move to `candle`'s close."""
        self.now = candle.open_time + self.timeframe
