"""Trading evaluation metrics for a policy and its baselines, after the same fees and slippage.

Shared by training's evaluation and the daemon's backtest report (numpy/pandas only, no torch).

Execution convention (the same as the training env): a target position decided at the close of bar ``t``
fills at the open of bar ``t + 1`` and is then held through bar ``t + 1``. Positions are fractions of
equity in ``[-1, 1]`` (1 = fully long, -1 = fully short); the portfolio is marked to market at every open
and close. Rebalancing from ``p_old`` to ``p_new`` at an open costs
``|p_new - p_old| * equity * (taker fee + slippage fraction)`` from `adapters.costs.CostModel`, with the
slippage's participation computed from the traded quantity (``|Δp| * equity / open``) and the bar's volume.
The paper venue's participation cap is not simulated (fills are complete), as in the env. The target decided
at the last bar's close never fills. The equity curve holds one value per bar: the
equity at that bar's close (bar 0 is the start, flat, at ``initial_equity``).

Conventions of the figures:

- Returns are per bar, simple, risk-free rate 0. ``periods_per_year`` comes from the timeframe with crypto
  trading 24/7 on a 365-day year: ``1h`` -> 24 * 365 = 8760, ``5m`` -> 105120, ``1d`` -> 365.
- Sharpe = ``mean(r) / std(r, ddof=1) * sqrt(periods_per_year)``. Sortino = ``mean(r) / downside * sqrt(P)``
  with ``downside = sqrt(mean(min(r, 0)^2))`` over all bars. Both are 0.0 when every return is 0, NaN with
  fewer than two returns, and Sortino is +inf when no return is negative but the mean is positive.
- CAGR = ``(final / initial) ** (1 / years) - 1`` with ``years = (bars - 1) / periods_per_year`` (the returns'
  count over a 24/7 year, as empyrical's ``annual_return``); NaN with fewer than two bars. Calmar = CAGR / max
  drawdown; NaN without a drawdown. Sharpe, Sortino, max drawdown, CAGR and Calmar agree with empyrical-reloaded
  to 1e-9 relative, profit factor with quantstats' definition applied to trade PnLs (tests/test_metrics_peer.py).
- Max drawdown is a positive fraction of the running peak; its duration counts bars from that peak to the
  first close back at or above it (or to the last bar, with ``max_drawdown_recovered = False``).
- Trades run from an entry (flat -> non-zero, or a sign flip) to an exit (back to flat, or a flip);
  resizing without a sign change stays within the trade. Each trade's PnL is the equity change its position
  caused (open gaps, intrabar moves, its share of the costs). A position still open after the last bar is
  reported as a trade marked to the last close with ``is_open=True`` (no exit cost) and counts in the trade
  figures.
- Win rate = winners (PnL > 0) / trades; NaN with no trades. Profit factor = gross profit / gross loss;
  +inf with winners and no losers, NaN with no trades or no PnL at all.
- Exposure = share of bars 1..n-1 (the bars that can hold a position) with a non-zero position.
- Turnover: ``total_turnover`` = sum |Δ position| (in units of equity); ``turnover_per_year`` =
  ``total_turnover / (n - 1) * periods_per_year``.
- JSON (`EvaluationReport.to_dict`): NaN -> ``null``, +inf -> the string ``"inf"``, -inf -> ``"-inf"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from adapters.costs import CostModel
from adapters.types import timeframe_seconds

FloatArray = npt.NDArray[np.float64]

SECONDS_PER_YEAR = 365 * 24 * 3600
_PRICE_COLUMNS = ("open", "high", "low", "close", "volume")


def periods_per_year(timeframe: str) -> float:
    """Return how many bars of `timeframe` a 24/7 market has in a 365-day year (1h -> 8760)."""
    return SECONDS_PER_YEAR / timeframe_seconds(timeframe)


@dataclass(frozen=True, slots=True)
class Trade:
    """One round trip of a position, from its entry fill to its exit fill (or the last close)."""

    direction: int
    """+1 long, -1 short."""
    entry_time: pd.Timestamp
    """Open time of the bar whose open filled the entry."""
    exit_time: pd.Timestamp
    """Open time of the bar whose open filled the exit; the last bar's open time for an open trade."""
    entry_price: float
    """Entry fill price: the open moved against the trade by slippage (a backtest's trade resized on the way: the
    ledger's average cost of what is held)."""
    exit_price: float
    """Exit fill price (open moved by slippage), or the last close for an open trade."""
    bars: int
    """Bars the position was held."""
    pnl: float
    """Equity change the trade caused, after its fees and slippage, in the quote currency."""
    return_fraction: float
    """PnL as a fraction of the equity at entry."""
    costs: float
    """Fees and slippage charged to this trade, in the quote currency."""
    is_open: bool = False
    """True when the position was still held after the last bar (marked to market, no exit cost)."""
    qty: float = 0.0
    """Base amount traded out of the position (a backtest: the ledger's closed amount, plus what is still held
    for an open trade); 0 where the simulation does not track it."""


@dataclass(frozen=True)
class SimulationResult:
    """Equity curve, held positions and trades of one run of target positions over candles."""

    equity: pd.Series
    """Equity at each bar's close, indexed like the candle frame."""
    positions: pd.Series
    """Position held during each bar (0 at bar 0)."""
    trades: list[Trade]
    """Trades in entry order; the last may be open."""
    total_costs: float
    """Fees and slippage paid over the run, in the quote currency."""


def _check_frame(frame: pd.DataFrame) -> None:
    missing = [c for c in ("open", "close", "volume") if c not in frame.columns]
    if missing:
        raise ValueError(f"candle frame is missing columns {missing}; has {list(frame.columns)}")
    if len(frame) < 2:
        raise ValueError(f"candle frame needs at least 2 bars to simulate, has {len(frame)}")
    for column in ("open", "close"):
        values = frame[column].to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values) | (values <= 0)
        if bad.any():
            where = frame.index[int(np.argmax(bad))]
            raise ValueError(f"candle frame column {column!r} must be finite and > 0; bad value at {where}")


def _check_targets(frame: pd.DataFrame, target_positions: npt.ArrayLike) -> FloatArray:
    targets = np.asarray(target_positions, dtype=np.float64)
    if targets.shape != (len(frame),):
        raise ValueError(f"target_positions must have shape ({len(frame)},) like the frame, was {targets.shape}")
    bad = ~np.isfinite(targets) | (np.abs(targets) > 1.0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"target_positions must be finite and in [-1, 1]; was {targets[i]} at {frame.index[i]}")
    return targets


def simulate_positions(
    frame: pd.DataFrame,
    target_positions: npt.ArrayLike,
    costs: CostModel,
    initial_equity: float = 10_000.0,
) -> SimulationResult:
    """Run target positions (decided at each close, filled at the next open) over candles after costs."""
    _check_frame(frame)
    targets = _check_targets(frame, target_positions)
    if not math.isfinite(initial_equity) or initial_equity <= 0:
        raise ValueError(f"initial_equity must be finite and > 0, was {initial_equity}")
    opens = frame["open"].to_numpy(dtype=np.float64)
    closes = frame["close"].to_numpy(dtype=np.float64)
    volumes = frame["volume"].to_numpy(dtype=np.float64)
    n = len(frame)

    held = np.zeros(n)
    held[1:] = targets[:-1]
    delta = np.zeros(n)
    delta[1:] = np.abs(held[1:] - held[:-1])
    gap = np.zeros(n)
    gap[1:] = opens[1:] / closes[:-1] - 1.0
    intra = closes / opens - 1.0
    fee = costs.fee_fraction(is_maker=False)

    close_equity = np.empty(n)
    open_equity = np.zeros(n)
    cost = np.zeros(n)
    if costs.impact_bps == 0.0:
        # Without market impact the cost rate is constant, so the curve is one cumulative product.
        rate = np.full(n, fee + costs.slippage_fraction(0.0))
        growth = (1.0 + _previous(held) * gap) * (1.0 - rate * delta) * (1.0 + held * intra)
        growth[0] = 1.0
        close_equity[:] = initial_equity * np.cumprod(growth)
        open_equity[1:] = close_equity[:-1] * (1.0 + held[:-1] * gap[1:])
        cost = open_equity * rate * delta
    else:
        # Impact depends on the traded quantity, which depends on equity: walk the bars in order.
        rate = np.zeros(n)
        close_equity[0] = initial_equity
        for t in range(1, n):
            open_equity[t] = close_equity[t - 1] * (1.0 + held[t - 1] * gap[t])
            quantity = delta[t] * open_equity[t] / opens[t]
            participation = quantity / volumes[t] if volumes[t] > 0 else 1.0
            rate[t] = fee + costs.slippage_fraction(float(participation))
            cost[t] = open_equity[t] * rate[t] * delta[t]
            close_equity[t] = (open_equity[t] - cost[t]) * (1.0 + held[t] * intra[t])

    trades = _extract_trades(frame, held, close_equity, open_equity, cost, rate, gap, intra, fee)
    return SimulationResult(
        equity=pd.Series(close_equity, index=frame.index, name="equity"),
        positions=pd.Series(held, index=frame.index, name="position"),
        trades=trades,
        total_costs=float(cost.sum()),
    )


def _previous(held: FloatArray) -> FloatArray:
    previous = np.zeros_like(held)
    previous[1:] = held[:-1]
    return previous


def _extract_trades(
    frame: pd.DataFrame,
    held: FloatArray,
    close_equity: FloatArray,
    open_equity: FloatArray,
    cost: FloatArray,
    rate: FloatArray,
    gap: FloatArray,
    intra: FloatArray,
    fee: float,
) -> list[Trade]:
    n = len(held)
    sign = np.sign(held)
    previous_sign = np.sign(_previous(held))
    starts = np.flatnonzero((sign != 0) & (sign != previous_sign))
    if len(starts) == 0:
        return []
    trade_of_bar = np.full(n, -1)
    trade_of_bar[starts] = np.arange(len(starts))
    # A bar belongs to the trade started at or before it while the sign stays the same.
    running = np.maximum.accumulate(np.where(trade_of_bar >= 0, np.arange(n), -1))
    trade_of_bar = np.where(sign != 0, np.searchsorted(starts, running), -1)

    # Amounts decided at bar t's open: the gap belongs to the position held before it, the intrabar move
    # to the one held after it. A flip or close splits the cost into an exit part and an entry part.
    gap_pnl = np.zeros(n)
    gap_pnl[1:] = close_equity[:-1] * held[:-1] * gap[1:]
    intra_pnl = (open_equity - cost) * held * intra
    continuing = (sign == previous_sign) & (sign != 0)
    exit_cost = np.where(continuing, 0.0, open_equity * rate * np.abs(_previous(held)))
    entry_cost = cost - exit_cost
    old_owner = np.empty(n, dtype=np.int64)
    old_owner[0] = -1
    old_owner[1:] = trade_of_bar[:-1]

    count = len(starts)
    pnl = np.zeros(count)
    paid = np.zeros(count)
    for owner, amount, fee_amount in (
        (old_owner, gap_pnl - exit_cost, exit_cost),
        (trade_of_bar, intra_pnl - entry_cost, entry_cost),
    ):
        mask = owner >= 0
        pnl += np.bincount(owner[mask], weights=amount[mask], minlength=count)
        paid += np.bincount(owner[mask], weights=fee_amount[mask], minlength=count)

    opens = frame["open"].to_numpy(dtype=np.float64)
    closes = frame["close"].to_numpy(dtype=np.float64)
    slippage = rate - fee
    index = frame.index
    bar_counts = np.bincount(trade_of_bar[trade_of_bar >= 0], minlength=count)
    trades: list[Trade] = []
    for k, start in enumerate(starts.tolist()):
        end = start + int(bar_counts[k])  # first bar not held by this trade, n if still open
        direction = int(sign[start])
        is_open = end >= n
        entry_price = opens[start] * (1.0 + direction * slippage[start])
        exit_price = float(closes[-1]) if is_open else float(opens[end] * (1.0 - direction * slippage[end]))
        trades.append(
            Trade(
                direction=direction,
                entry_time=index[start],
                exit_time=index[n - 1] if is_open else index[end],
                entry_price=float(entry_price),
                exit_price=exit_price,
                bars=int(bar_counts[k]),
                pnl=float(pnl[k]),
                return_fraction=float(pnl[k] / open_equity[start]),
                costs=float(paid[k]),
                is_open=is_open,
            )
        )
    return trades


@dataclass(frozen=True)
class EvaluationReport:
    """Performance figures of one strategy over one split, after costs (conventions in the module doc)."""

    total_return: float
    """Final equity / initial equity - 1."""
    sharpe: float
    """Annualised Sharpe ratio of per-bar returns (risk-free 0)."""
    sortino: float
    """Annualised Sortino ratio of per-bar returns (target 0)."""
    max_drawdown: float
    """Largest fall from a running peak, as a positive fraction of that peak."""
    max_drawdown_duration_bars: int
    """Bars from the max drawdown's peak to its recovery (or to the last bar)."""
    max_drawdown_recovered: bool
    """Whether equity got back to the max drawdown's peak."""
    win_rate: float
    """Winning trades / trades (NaN without trades)."""
    profit_factor: float
    """Gross profit / gross loss (+inf without losers, NaN without trades)."""
    trade_count: int
    """Number of trades, including a final open one."""
    exposure: float
    """Share of bars with a non-zero position."""
    total_turnover: float
    """Sum of |Δ position| over the run, in units of equity."""
    turnover_per_year: float
    """Total turnover per bar times periods per year."""
    avg_trade_bars: float
    """Mean bars held per trade (NaN without trades)."""
    final_equity: float
    """Equity at the last close, in the quote currency."""
    total_costs: float
    """Fees and slippage paid, in the quote currency (NaN when unknown)."""
    bars: int
    """Bars in the equity curve."""
    periods_per_year: float
    """Bars per year used to annualise."""
    cagr: float = math.nan
    """Compound annual growth rate over the run (NaN with fewer than two bars)."""
    calmar: float = math.nan
    """CAGR / max drawdown (NaN without a drawdown)."""

    def to_dict(self) -> dict[str, Any]:
        """Return the figures as a JSON-safe dict (NaN -> None, ±inf -> "inf"/"-inf")."""
        return {f.name: _json_number(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationReport:
        """Rebuild a report from `to_dict` output; figures added later (CAGR, Calmar) are NaN when absent."""
        names = {f.name for f in fields(cls) if f.default is MISSING}
        missing = names - set(data)
        if missing:
            raise ValueError(f"evaluation report is missing keys {sorted(missing)}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            raw = data[f.name]
            if f.name in ("max_drawdown_duration_bars", "trade_count", "bars"):
                values[f.name] = int(raw)
            elif f.name == "max_drawdown_recovered":
                values[f.name] = bool(raw)
            else:
                values[f.name] = _number_from_json(raw, f.name)
        return cls(**values)


def _json_number(value: object) -> object:
    if isinstance(value, bool | int | str) or value is None:
        return value
    number = float(value)  # type: ignore[arg-type]
    if math.isnan(number):
        return None
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    return number


def _number_from_json(raw: object, key: str) -> float:
    if raw is None:
        return math.nan
    if raw in ("inf", "-inf"):
        return float(str(raw))
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    raise ValueError(f"evaluation report key {key!r} must be a number, null, 'inf' or '-inf', was {raw!r}")


def _ratio(numerator: float, denominator: float, *, zero_numerator: float) -> float:
    if denominator > 0:
        return numerator / denominator
    if numerator == 0:
        return zero_numerator
    return math.inf if numerator > 0 else -math.inf


def compute_metrics(
    equity: npt.ArrayLike,
    positions: npt.ArrayLike,
    trades: Sequence[Trade],
    periods_per_year: float,
    total_costs: float = math.nan,
) -> EvaluationReport:
    """Compute the evaluation figures from a per-bar equity curve, held positions and trades."""
    curve = np.asarray(equity, dtype=np.float64)
    held = np.asarray(positions, dtype=np.float64)
    if curve.ndim != 1 or len(curve) < 1:
        raise ValueError(f"equity must be a non-empty 1-d curve, had shape {curve.shape}")
    if held.shape != curve.shape:
        raise ValueError(f"positions must have the equity curve's shape {curve.shape}, was {held.shape}")
    if not np.isfinite(curve).all() or (curve <= 0).any():
        raise ValueError(f"equity must be finite and > 0 at every bar; first bad bar {_first_bad(curve)}")
    if not periods_per_year > 0:
        raise ValueError(f"periods_per_year must be > 0, was {periods_per_year}")

    returns = curve[1:] / curve[:-1] - 1.0
    scale = math.sqrt(periods_per_year)
    if len(returns) < 2:
        sharpe = sortino = math.nan
    else:
        mean = float(returns.mean())
        std = float(returns.std(ddof=1))
        downside = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2)))
        sharpe = _ratio(mean, std, zero_numerator=0.0) * scale if std > 0 or mean == 0 else math.nan
        sortino = _ratio(mean, downside, zero_numerator=0.0) * scale

    peaks = np.maximum.accumulate(curve)
    drawdowns = 1.0 - curve / peaks
    trough = int(np.argmax(drawdowns))
    max_drawdown = float(drawdowns[trough])
    if max_drawdown > 0:
        peak = int(np.argmax(curve[: trough + 1]))
        recovered_at = np.flatnonzero(curve[trough:] >= curve[peak])
        recovered = len(recovered_at) > 0
        end = trough + int(recovered_at[0]) if recovered else len(curve) - 1
        duration = end - peak
    else:
        recovered, duration = True, 0

    pnls = np.array([t.pnl for t in trades], dtype=np.float64)
    gross_profit = float(pnls[pnls > 0].sum())
    gross_loss = float(-pnls[pnls < 0].sum())
    trade_count = len(trades)
    win_rate = float((pnls > 0).mean()) if trade_count else math.nan
    if trade_count == 0 or (gross_profit == 0 and gross_loss == 0):
        profit_factor = math.nan
    else:
        profit_factor = _ratio(gross_profit, gross_loss, zero_numerator=0.0)

    bars_with_return = len(curve) - 1
    cagr = math.nan
    if bars_with_return >= 1:
        try:  # a short, large return annualises beyond a float: +inf, not a warning
            cagr = math.exp(math.log(float(curve[-1] / curve[0])) * periods_per_year / bars_with_return) - 1.0
        except OverflowError:
            cagr = math.inf
    calmar = cagr / max_drawdown if max_drawdown > 0 else math.nan
    turnover = float(np.abs(np.diff(held)).sum())
    return EvaluationReport(
        total_return=float(curve[-1] / curve[0] - 1.0),
        sharpe=float(sharpe),
        sortino=float(sortino),
        max_drawdown=max_drawdown,
        max_drawdown_duration_bars=duration,
        max_drawdown_recovered=recovered,
        win_rate=win_rate,
        profit_factor=profit_factor,
        trade_count=trade_count,
        exposure=float((held[1:] != 0).mean()) if bars_with_return else 0.0,
        total_turnover=turnover,
        turnover_per_year=turnover / bars_with_return * periods_per_year if bars_with_return else 0.0,
        avg_trade_bars=float(np.mean([t.bars for t in trades])) if trades else math.nan,
        final_equity=float(curve[-1]),
        total_costs=float(total_costs),
        bars=len(curve),
        periods_per_year=float(periods_per_year),
        cagr=cagr,
        calmar=calmar,
    )


def _first_bad(curve: FloatArray) -> int:
    bad = ~np.isfinite(curve) | (curve <= 0)
    return int(np.argmax(bad))


def evaluate_positions(
    frame: pd.DataFrame,
    target_positions: npt.ArrayLike,
    costs: CostModel,
    timeframe: str,
    initial_equity: float = 10_000.0,
) -> EvaluationReport:
    """Simulate target positions over candles and compute their evaluation figures."""
    result = simulate_positions(frame, target_positions, costs, initial_equity)
    return compute_metrics(
        result.equity.to_numpy(),
        result.positions.to_numpy(),
        result.trades,
        periods_per_year(timeframe),
        total_costs=result.total_costs,
    )


def buy_and_hold_targets(frame: pd.DataFrame) -> FloatArray:
    """Return targets that go fully long at the first close and hold to the end."""
    return np.ones(len(frame), dtype=np.float64)


def sma_crossover_targets(
    frame: pd.DataFrame, fast: int = 20, slow: int = 50, *, allow_short: bool = False
) -> FloatArray:
    """Return targets long (1) while SMA(fast) of closes > SMA(slow), else flat (or short with allow_short)."""
    if not 0 < fast < slow:
        raise ValueError(f"sma crossover needs 0 < fast < slow, was fast={fast} slow={slow}")
    close = frame["close"].astype("float64")
    fast_sma = close.rolling(fast, min_periods=fast).mean().to_numpy()
    slow_sma = close.rolling(slow, min_periods=slow).mean().to_numpy()
    # Until the slow average exists the rule has no opinion: stay flat.
    ready = np.isfinite(slow_sma)
    below = -1.0 if allow_short else 0.0
    return np.where(ready & (fast_sma > slow_sma), 1.0, np.where(ready, below, 0.0))


def evaluate_with_baselines(
    frame: pd.DataFrame,
    target_positions: npt.ArrayLike,
    costs: CostModel,
    timeframe: str,
    initial_equity: float = 10_000.0,
    sma_fast: int = 20,
    sma_slow: int = 50,
) -> dict[str, EvaluationReport]:
    """Evaluate a policy's targets next to buy-and-hold and an SMA crossover on the same candles and costs."""
    return {
        "policy": evaluate_positions(frame, target_positions, costs, timeframe, initial_equity),
        "buy_and_hold": evaluate_positions(frame, buy_and_hold_targets(frame), costs, timeframe, initial_equity),
        "sma_crossover": evaluate_positions(
            frame, sma_crossover_targets(frame, sma_fast, sma_slow), costs, timeframe, initial_equity
        ),
    }


_TABLE_ROWS: tuple[tuple[str, str, str], ...] = (
    ("total_return", "total return", "pct"),
    ("sharpe", "sharpe", "num"),
    ("sortino", "sortino", "num"),
    ("max_drawdown", "max drawdown", "pct"),
    ("max_drawdown_duration_bars", "max dd duration (bars)", "int"),
    ("cagr", "CAGR", "pct"),
    ("calmar", "calmar", "num"),
    ("win_rate", "win rate", "pct"),
    ("profit_factor", "profit factor", "num"),
    ("trade_count", "trades", "int"),
    ("exposure", "exposure", "pct"),
    ("turnover_per_year", "turnover / year", "num"),
    ("avg_trade_bars", "avg trade (bars)", "num"),
    ("final_equity", "final equity", "num"),
    ("total_costs", "costs paid", "num"),
)


def _format_cell(value: float | int, kind: str) -> str:
    if kind == "int":
        return str(int(value))
    number = float(value)
    if math.isnan(number):
        return "n/a"
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    return f"{number * 100:.2f}%" if kind == "pct" else f"{number:.3f}"


def format_table(reports: Mapping[str, EvaluationReport]) -> str:
    """Render reports side by side (one column per strategy) as a plain-text table."""
    if not reports:
        raise ValueError("format_table needs at least one report")
    names = list(reports)
    rows = [["metric", *names]]
    for key, label, kind in _TABLE_ROWS:
        rows.append([label, *(_format_cell(getattr(reports[name], key), kind) for name in names)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True))]
        lines.append("  ".join(cells))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
