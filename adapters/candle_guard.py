"""Live candles the bot must not trade on: invalid values, duplicates, out-of-order candles and one-candle spikes.

A live feed can deliver what a validated file never holds: a NaN or zero price, a candle twice (a websocket that
reconnects), an older candle after a newer one, or a bad tick that moves one candle far from the last. The guard
judges each closed candle against the last one it accepted for that symbol and says why it refuses one:

- ``invalid``: a price not finite or <= 0, a negative volume, high below the open or close, low above them;
- ``duplicate``: the same open time as the last accepted candle;
- ``out_of_order``: an open time before it;
- ``spike``: open, high, low or close more than ``max_jump`` (a fraction) away from the last accepted close.

A refused candle is not accepted, so the next candle is judged against the last good one: a single bad tick is
skipped, while a real move that persists keeps being refused, which the engine turns into a halt after
``halt_after`` refusals in a row. A human looks, then resumes; `resume` re-anchors the engine's guards
(`CandleGuard.reanchor`), so the next valid candle is the new reference: without that, a real move beyond
``max_jump`` (BTC/USDT's high of 2019-04-02 05:00 was 27.8 % over the previous hour's close) would be refused for
ever. The paper venue asks the same question before it fills an order at a candle, so a glitch never makes a fill;
the same `resume` re-anchors its guards (`PaperVenue.reanchor_candle_guards`, handed to the engine by the wiring).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from adapters.types import Candle

Problem = Literal["invalid", "duplicate", "out_of_order", "spike"]


@dataclass(frozen=True)
class CandleGuardConfig:
    """What the guard refuses (config/bot/default.yaml, ``bot.candle_guard``)."""

    max_jump: float = 0.25
    """Largest move of any price of a candle from the last accepted close (0.25: 25 %); 0 turns the check off."""
    halt_after: int = 3
    """Refusals in a row (any reason) after which the engine halts trading; 0 never halts."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_jump) and self.max_jump >= 0):
            raise ValueError(f"bot.candle_guard.max_jump: must be a fraction >= 0 (0: off), was {self.max_jump}")
        if isinstance(self.halt_after, bool) or self.halt_after < 0:
            raise ValueError(f"bot.candle_guard.halt_after: must be an integer >= 0, was {self.halt_after!r}")


@dataclass(frozen=True)
class Refusal:
    """Why a candle was refused."""

    problem: Problem
    detail: str


def invalid_values(candle: Candle) -> str | None:
    """Say what is wrong with a candle's values, or None when they are a possible candle."""
    prices = {"open": candle.open, "high": candle.high, "low": candle.low, "close": candle.close}
    for name, value in prices.items():
        if not math.isfinite(value) or value <= 0:
            return f"{name} is {value}"
    if not math.isfinite(candle.volume) or candle.volume < 0:
        return f"volume is {candle.volume}"
    if candle.high < max(candle.open, candle.close):
        return f"high {candle.high} is below max(open, close)"
    if candle.low > min(candle.open, candle.close):
        return f"low {candle.low} is above min(open, close)"
    return None


class CandleGuard:
    """Judge one symbol's closed candles in arrival order against the last accepted one."""

    def __init__(self, config: CandleGuardConfig | None = None) -> None:
        """Start with no accepted candle (the first valid candle is accepted)."""
        self.config = config or CandleGuardConfig()
        self.last_open: datetime | None = None
        self.last_close: float | None = None
        self.refused_in_a_row = 0

    def check(self, candle: Candle) -> Refusal | None:
        """Return why `candle` is refused, or None after accepting it as the new reference."""
        refusal = self._judge(candle)
        if refusal is None:
            self.last_open, self.last_close = candle.open_time, candle.close
            self.refused_in_a_row = 0
        else:
            self.refused_in_a_row += 1
        return refusal

    def reanchor(self) -> None:
        """Forget the reference price, so the next valid candle (still in time order) is accepted as the new one."""
        self.last_close = None
        self.refused_in_a_row = 0

    def _judge(self, candle: Candle) -> Refusal | None:
        problem = invalid_values(candle)
        if problem is not None:
            return Refusal("invalid", problem)
        if self.last_open is not None:
            if candle.open_time == self.last_open:
                return Refusal("duplicate", f"candle {candle.open_time.isoformat()} again")
            if candle.open_time < self.last_open:
                return Refusal(
                    "out_of_order",
                    f"candle {candle.open_time.isoformat()} after {self.last_open.isoformat()}",
                )
        if self.config.max_jump > 0 and self.last_close is not None:
            reference = self.last_close
            prices = (("open", candle.open), ("high", candle.high), ("low", candle.low), ("close", candle.close))
            for name, value in prices:
                move = value / reference - 1.0
                if abs(move) > self.config.max_jump:
                    return Refusal(
                        "spike",
                        f"{name} {value} is {move:+.1%} from the last close {reference} "
                        f"(more than bot.candle_guard.max_jump={self.config.max_jump})",
                    )
        return None
