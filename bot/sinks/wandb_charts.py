"""The user guide's trading charts as W&B panels, from closed trades (training's evaluation and the daemon's runs).

Cumulative P&L, win/loss distribution, trade duration vs return and win rate by hour of entry, plus a trades
table, under ``<prefix>/...``. Building them costs pandas work and wandb media objects: call this from a worker
thread (the daemon's W&B sink thread), never on the event loop, and only when W&B logging is on.
"""

from __future__ import annotations

from typing import Any

import pandas as pd


def trade_plots(split: str, trades: pd.DataFrame) -> dict[str, Any]:
    """Return the trading charts of closed trades (columns pnl, entry_time, exit_time or duration_seconds)."""
    if trades.empty or "pnl" not in trades:
        return {}
    import wandb

    make_table: Any = wandb.Table  # wandb's stubs want list[Iterable]; rows here are plain lists

    frame = trades.copy()
    pnl = frame["pnl"].astype(float)
    if "duration_seconds" not in frame and {"entry_time", "exit_time"} <= set(frame.columns):
        frame["duration_seconds"] = (
            pd.to_datetime(frame["exit_time"], utc=True) - pd.to_datetime(frame["entry_time"], utc=True)
        ).dt.total_seconds()
    plots: dict[str, Any] = {}
    cumulative = pnl.cumsum().to_numpy()
    plots[f"{split}/cumulative_pnl"] = wandb.plot.line(
        make_table(data=[[i + 1, float(v)] for i, v in enumerate(cumulative)], columns=["trade", "cumulative_pnl"]),
        "trade",
        "cumulative_pnl",
        title=f"Cumulative P&L ({split})",
    )
    plots[f"{split}/win_loss_distribution"] = wandb.plot.histogram(
        make_table(data=[[float(v)] for v in pnl], columns=["pnl"]), "pnl", title=f"Win/loss distribution ({split})"
    )
    if "duration_seconds" in frame:
        rows = [[float(d) / 3600.0, float(p)] for d, p in zip(frame["duration_seconds"], pnl, strict=True)]
        plots[f"{split}/duration_vs_return"] = wandb.plot.scatter(
            make_table(data=rows, columns=["duration_hours", "pnl"]),
            "duration_hours",
            "pnl",
            title=f"Trade duration vs return ({split})",
        )
    if "entry_time" in frame:
        hours = pd.to_datetime(frame["entry_time"], utc=True).dt.hour
        by_hour = (pnl > 0).groupby(hours).mean()
        plots[f"{split}/win_rate_by_hour"] = wandb.plot.bar(
            make_table(
                data=[[int(h), float(r)] for h, r in zip(by_hour.index.astype(int), by_hour.to_numpy(), strict=True)],
                columns=["hour_utc", "win_rate"],
            ),
            "hour_utc",
            "win_rate",
            title=f"Win rate by hour of entry ({split})",
        )
    rows_frame = frame.copy()
    for column in rows_frame.columns:
        if pd.api.types.is_datetime64_any_dtype(rows_frame[column]):
            rows_frame[column] = rows_frame[column].astype(str)
    plots[f"{split}/trades"] = make_table(dataframe=rows_frame)
    return plots
