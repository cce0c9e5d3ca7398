"""Trade and training-curve analytics shared by the web dashboard and the reports (`training.reports`).

Pure pandas on the frames `monitoring.runs` returns: a run's trades (one row per trade, ``pnl`` after costs),
its equity curve and its metrics history. Win rate is the evaluation's definition everywhere: the share of
trades with P&L > 0 (a trade still open at the end of the split included). Hours and weekdays are UTC, by entry
time.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import pandas as pd

from monitoring.runs import finite

STRATEGIES = ("policy", "buy_and_hold", "sma_crossover")
"""The policy and the two baselines it is compared with on the same bars."""
STRATEGY_LABELS = {"policy": "policy", "buy_and_hold": "buy & hold", "sma_crossover": "SMA crossover"}
TEST_METRICS: tuple[tuple[str, str], ...] = (
    ("total_return", "total return"),
    ("sharpe", "sharpe"),
    ("sortino", "sortino"),
    ("max_drawdown", "max drawdown"),
    ("win_rate", "win rate"),
    ("profit_factor", "profit factor"),
    ("trade_count", "trades"),
    ("exposure", "exposure"),
)
"""(key, title) of the evaluation metrics both the dashboard and the reports tabulate per strategy."""
PERCENT_KEYS = frozenset({"total_return", "max_drawdown", "win_rate", "exposure"})
"""Metrics shown as percentages."""
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
DURATION_BUCKETS: tuple[tuple[float, str], ...] = (
    (1.0, "<=1h"),
    (4.0, "1-4h"),
    (12.0, "4-12h"),
    (24.0, "12-24h"),
    (72.0, "1-3d"),
    (168.0, "3-7d"),
    (float("inf"), ">7d"),
)
"""Trade-duration buckets: (upper bound in hours, inclusive; label)."""


def format_metric(key: str, value: Any, integer_keys: Collection[str]) -> str:
    """Format a metric: percentages for returns and rates, whole numbers for `integer_keys`, else 3 decimals."""
    number = finite(value)
    if number is None:
        return "n/a"
    if key in PERCENT_KEYS:
        return f"{number:.2%}"
    if key in integer_keys:
        return str(int(number))
    return f"{number:.3f}"


def compare_with_baselines(
    results: Mapping[str, Mapping[str, Any]],
) -> tuple[dict[str, float | None], float | None, bool]:
    """Return ({strategy: total return}, policy's excess return over buy-and-hold, whether it beats both)."""
    returns = {s: finite(results.get(s, {}).get("total_return")) for s in STRATEGIES}
    policy = returns["policy"]
    excess = None if policy is None or returns["buy_and_hold"] is None else policy - returns["buy_and_hold"]
    beats = [policy > r for s, r in returns.items() if s != "policy" and r is not None and policy is not None]
    return returns, excess, bool(beats) and all(beats)


def metric_series(history: pd.DataFrame, key: str) -> pd.Series:
    """One metric against step, NaN rows dropped, repeated steps averaged; fold runs use the last fold."""
    columns = [c for c in history.columns if c == key or (c.startswith("fold") and c.split("/", 1)[-1] == key)]
    if not columns:
        return pd.Series(dtype="float64")
    column = sorted(columns)[-1]
    frame = history[["step", column]].dropna()
    if frame.empty:
        return pd.Series(dtype="float64")
    return frame.groupby("step")[column].mean().astype("float64")


def prepare_trades(trades: pd.DataFrame) -> pd.DataFrame:
    """Return trades with UTC times, float P&L and `duration_seconds` (derived from the times if absent)."""
    frame = trades.copy()
    for column in ("entry_time", "exit_time"):
        if column in frame.columns:
            frame[column] = pd.to_datetime(frame[column], utc=True)
    if "duration_seconds" not in frame.columns and {"entry_time", "exit_time"} <= set(frame.columns):
        frame["duration_seconds"] = (frame["exit_time"] - frame["entry_time"]).dt.total_seconds()
    frame["pnl"] = frame["pnl"].astype("float64")
    return frame


def trade_stats(frame: pd.DataFrame, missing: float | None = None) -> dict[str, Any]:
    """Return counts, win rate and P&L, duration and cost figures; `missing` stands for a figure without data."""
    pnl = frame["pnl"]
    wins, losses = pnl[pnl > 0], pnl[pnl <= 0]
    hours = frame["duration_seconds"].astype("float64") / 3600.0 if "duration_seconds" in frame else pd.Series([])
    return {
        "trades": len(frame),
        "wins": len(wins),
        "losses": len(losses),
        "win_rate": float((pnl > 0).mean()) if len(pnl) else missing,
        "total_pnl": float(pnl.sum()),
        "average_win": float(wins.mean()) if len(wins) else missing,
        "average_loss": float(losses.mean()) if len(losses) else missing,
        "largest_win": float(pnl.max()) if len(pnl) else missing,
        "largest_loss": float(pnl.min()) if len(pnl) else missing,
        "average_duration_hours": float(hours.mean()) if len(hours) else missing,
        "total_costs": float(frame["costs"].sum()) if "costs" in frame else missing,
    }


def duration_bucket(hours: float) -> str:
    """Return the `DURATION_BUCKETS` label of a trade lasting `hours`."""
    return next(label for upper, label in DURATION_BUCKETS if hours <= upper)


def win_loss_by(frame: pd.DataFrame, by: str) -> list[dict[str, Any]]:
    """Return win/loss rows grouped by "hour" or "weekday" of entry (UTC) or by "duration" bucket, in order."""
    if by == "hour" and "entry_time" in frame:
        keys, labels = frame["entry_time"].dt.hour, {h: f"{h:02d}:00" for h in range(24)}
    elif by == "weekday" and "entry_time" in frame:
        keys, labels = frame["entry_time"].dt.day_of_week, dict(enumerate(WEEKDAYS))
    elif by == "duration" and "duration_seconds" in frame:
        order = {label: i for i, (_, label) in enumerate(DURATION_BUCKETS)}
        keys = (frame["duration_seconds"].astype("float64") / 3600.0).map(lambda h: order[duration_bucket(h)])
        labels = {i: label for label, i in order.items()}
    else:
        return []
    rows = []
    for key, group in frame.groupby(keys.to_numpy(), sort=True):
        pnl = group["pnl"]
        rows.append(
            {
                by: labels[int(key)],
                "trades": len(pnl),
                "wins": int((pnl > 0).sum()),
                "losses": int((pnl <= 0).sum()),
                "win_rate": float((pnl > 0).mean()),
                "total_pnl": float(pnl.sum()),
                "mean_pnl": float(pnl.mean()),
            }
        )
    return rows


def win_rate_by_hour(frame: pd.DataFrame) -> pd.DataFrame:
    """Return a table of trades, win rate and mean P&L per hour of entry (UTC, column `hour_utc`)."""
    if "entry_time" not in frame.columns:
        return pd.DataFrame(columns=["hour_utc", "trades", "win_rate", "mean_pnl"])
    hours = frame["entry_time"].dt.hour.rename("hour_utc")
    grouped = frame.assign(win=frame["pnl"] > 0).groupby(hours)
    table = pd.DataFrame(
        {"trades": grouped.size(), "win_rate": grouped["win"].mean(), "mean_pnl": grouped["pnl"].mean()}
    )
    return table.reset_index()


def pnl_histogram(pnl: pd.Series, bins: int = 30) -> dict[str, list[float] | list[int]]:
    """Return shared bin edges and the counts of winning and losing trades per bin."""
    values = pnl.to_numpy(dtype="float64")
    if not len(values):
        return {"edges": [], "wins": [], "losses": []}
    edges = np.histogram_bin_edges(values, bins=max(1, min(bins, len(values))))
    wins, _ = np.histogram(values[values > 0], bins=edges)
    losses, _ = np.histogram(values[values <= 0], bins=edges)
    return {"edges": edges.tolist(), "wins": wins.tolist(), "losses": losses.tolist()}


def equity_curve(equity: pd.Series, trades: pd.DataFrame, initial: float) -> tuple[pd.Series, str]:
    """Return the run's equity curve, or one rebuilt from trade P&L at exit times when none was stored."""
    if len(equity):
        return equity, "equity curve of the split (every bar)"
    if len(trades) and "exit_time" in trades:
        ordered = trades.sort_values("exit_time")
        curve = initial + ordered["pnl"].cumsum()
        return pd.Series(curve.to_numpy(), index=pd.DatetimeIndex(ordered["exit_time"]), name="equity"), (
            "initial equity plus cumulative trade P&L at each exit"
        )
    return pd.Series(dtype="float64", name="equity"), "no equity data"
