"""Synthetic candles with a known answer: a market with a planted, learnable edge, and one with none.

They tell a user whether a result on real candles can mean anything: a pipeline that finds no edge where one
was planted cannot be trusted to find a real one, and one that "finds" an edge in a random walk overfits.

- **regime**: the log return of each bar is `drift × regime + volatility × noise`, where the regime (+1 up,
  -1 down) is a hidden two-state Markov chain that switches with probability `1 / regime_bars` per bar. The
  regime also tilts the candles' wicks (long lower wicks while it is up, long upper wicks while it is down, by
  `signal`), so the policy's observation window (which holds the wicks) tells the regime of the next bar. A
  policy that reads it holds through up regimes and stays out of down ones, trading about twice per
  `2 × regime_bars` bars: after costs it beats buy-and-hold, whose expected drift is zero.
- **random-walk**: the same volatility, no drift, independent returns. Its wicks follow a regime of their own
  that the returns ignore, so the two markets look alike and differ only in whether the feature predicts:
  nothing observable predicts the next bar, and no policy beats buy-and-hold after costs except by luck.

Both build a canonical OHLCV frame: a UTC DatetimeIndex with one bar per `timeframe`, open equal to the
previous close, high and low outside open and close by a half-normal wick, and a log-normal volume that
carries no information. Everything comes from `numpy.random.default_rng(seed)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from adapters.data.frame import COLUMNS, TIME_UNIT, timeframe_to_timedelta
from adapters.errors import DataError

Market = Literal["regime", "random-walk"]
MARKETS: Final[tuple[Market, ...]] = ("regime", "random-walk")

START: Final = pd.Timestamp("2020-01-01", tz="UTC")
"""First bar's open time of every synthetic file (the dates carry no information)."""


@dataclass(frozen=True)
class SyntheticSpec:
    """How a synthetic market is drawn."""

    market: Market = "regime"
    """`regime` (a planted edge) or `random-walk` (none)."""
    bars: int = 20_000
    """Number of candles."""
    seed: int = 0
    """Seed of `numpy.random.default_rng`."""
    drift: float = 0.0015
    """Per-bar log-return drift inside a regime (regime market only), e.g. 0.0015 = 15 bps a bar."""
    volatility: float = 0.005
    """Per-bar standard deviation of the log-return noise."""
    regime_bars: float = 100.0
    """Mean regime length in bars (regime market only)."""
    signal: float = 0.8
    """Wick asymmetry in [0, 1) that follows the regime (0: the regime shows only in the returns)."""
    timeframe: str = "1h"
    """Bar spacing, a ccxt-style timeframe."""
    start_price: float = 100.0
    """First open."""

    def __post_init__(self) -> None:
        if self.market not in MARKETS:
            raise DataError(f"synthetic market must be one of {', '.join(MARKETS)}, was {self.market!r}")
        if self.bars < 2:
            raise DataError(f"synthetic market needs at least 2 bars, was {self.bars}")
        if not self.volatility > 0:
            raise DataError(f"synthetic volatility must be > 0, was {self.volatility}")
        if not 0.0 <= self.signal < 1.0:
            raise DataError(f"synthetic signal must be in [0, 1), was {self.signal}")
        if self.regime_bars <= 1:
            raise DataError(f"synthetic regime_bars must be > 1, was {self.regime_bars}")
        if not self.start_price > 0:
            raise DataError(f"synthetic start_price must be > 0, was {self.start_price}")
        timeframe_to_timedelta(self.timeframe)


def regimes(bars: int, regime_bars: float, rng: np.random.Generator) -> npt.NDArray[np.int8]:
    """A two-state Markov chain (+1/-1) of `bars` steps that switches with probability 1/regime_bars a step."""
    switches = rng.random(bars) < 1.0 / regime_bars
    switches[0] = False
    start = 1 if rng.random() < 0.5 else -1
    # Each switch flips the sign: the state is the start times (-1) ** (switches so far).
    flips = np.cumsum(switches) % 2
    return np.where(flips == 0, start, -start).astype(np.int8)


def log_returns(spec: SyntheticSpec, rng: np.random.Generator) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int8]]:
    """Per-bar log returns and the hidden regime (all zeros for the random walk)."""
    noise = rng.standard_normal(spec.bars) * spec.volatility
    if spec.market == "random-walk":
        return noise, np.zeros(spec.bars, dtype=np.int8)
    state = regimes(spec.bars, spec.regime_bars, rng)
    return spec.drift * state + noise, state


def synthetic_candles(spec: SyntheticSpec) -> pd.DataFrame:
    """Draw the market `spec` describes as a canonical OHLCV frame (UTC index named `date`).

    The hidden regime is kept in `frame.attrs["regime"]` (a list of +1/-1, zeros for the random walk) so a test
    can score the oracle; it is not a column, so nothing the policy sees carries it.
    """
    rng = np.random.default_rng(spec.seed)
    returns, state = log_returns(spec, rng)
    close = spec.start_price * np.exp(np.cumsum(returns))
    open_ = np.concatenate(([spec.start_price], close[:-1]))
    # Wick asymmetry follows the regime (long lower wicks while it is up): a feature the policy observes at
    # bar t that tells the regime, hence the drift of bar t + 1. The random walk's wicks follow a regime of
    # their own that its returns ignore, so the two markets differ only in whether the feature predicts.
    wick_state = state if spec.market == "regime" else regimes(spec.bars, spec.regime_bars, rng)
    tilt = spec.signal * wick_state
    wick = np.abs(rng.standard_normal((2, spec.bars))) * (spec.volatility / 2)
    high = np.maximum(open_, close) * np.exp(wick[0] * (1 - tilt))
    low = np.minimum(open_, close) * np.exp(-wick[1] * (1 + tilt))
    volume = np.exp(rng.normal(3.0, 0.5, spec.bars))
    step = timeframe_to_timedelta(spec.timeframe)
    index = pd.date_range(START, periods=spec.bars, freq=step, name="date").as_unit(TIME_UNIT)
    frame = pd.DataFrame(dict(zip(COLUMNS, (open_, high, low, close, volume), strict=True)), index=index)
    frame.attrs["regime"] = state.tolist()
    return frame


def oracle_positions(frame: pd.DataFrame) -> npt.NDArray[np.float64]:
    """Long (1) through every up regime and flat otherwise, known in advance: the edge's upper bound."""
    state = np.asarray(frame.attrs.get("regime", []), dtype=np.float64)
    if len(state) != len(frame):
        raise DataError("the frame carries no hidden regime (attrs['regime']): only synthetic_candles' do")
    return (state > 0).astype(np.float64)


def write_synthetic(spec: SyntheticSpec, path: str) -> pd.DataFrame:
    """Draw `spec` and write it as parquet or feather (by suffix) with a `date` column; return the frame.

    The suffix is checked before anything is drawn or created; the file's folder is made when missing.
    """
    if not path.endswith((".feather", ".parquet")):
        raise DataError(f"synthetic output must end in .parquet or .feather, was {path!r}")
    frame = synthetic_candles(spec)
    table = frame.reset_index()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if path.endswith(".feather"):
        table.to_feather(path)
    else:
        table.to_parquet(path, index=False)
    return frame
