"""The trade report: one run's test-split trades, or a ledger's (P&L, win/loss, durations, hours, months, best/worst).

`build_trade` reads a run (`monitoring.runs`); `build_trade_report` takes the frames themselves, with a `TradeScope`
saying what they cover, so the ledger report (`monitoring.reports.ledger`) renders the same sections.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import structlog

from monitoring.charts import new_figure
from monitoring.reports.analytics import STRATEGIES, STRATEGY_LABELS, prepare_trades, trade_stats, win_rate_by_hour
from monitoring.reports.model import (
    METRIC_COLUMNS,
    Chart,
    Report,
    ReportError,
    Section,
    Table,
    finished_runs,
    fmt_metric,
    save_chart,
)
from monitoring.runs import RunInfo, RunNotFoundError, RunSource, finite

log = structlog.get_logger()


def _money(value: float) -> str:
    return f"{value:,.2f}"


def choose_split(source: RunSource, run: RunInfo, split: str | None) -> str:
    """Pick the split a trade report reads: `split` if given, else the run's test split, else its one split with trades.

    Raises:
        ReportError: `split` has no trades, or the run has trades in several splits and none is the test split.
    """
    available = source.trade_splits(run.run_id)
    if split is not None:
        if split not in available:
            shown = ", ".join(available) or "none"
            raise ReportError(f"run {run.run_id} has no trades in split {split!r}; its splits with trades: {shown}")
        return split
    default = run.default_split()
    if default in available or not available:
        return default
    if len(available) == 1:
        return available[0]
    raise ReportError(f"run {run.run_id} has trades in several splits ({', '.join(available)}); pass --split")


def build_trade(source: RunSource, run_id: str | None, out_dir: Path, split: str | None = None) -> Report:
    """Analyse the trades of one run (the newest finished run when `run_id` is None) in `split` (see choose_split)."""
    if run_id is None:
        finished, _ = finished_runs(source.list_runs(limit=20))
        if not finished:
            raise ReportError(f"no finished runs with test results in {source.location}; pass --run-id")
        run = finished[0][0]
        log.info("trade_report_run_chosen", run_id=run.run_id, reason="newest finished run")
    else:
        try:
            run = source.get_run(run_id)
        except RunNotFoundError as e:
            raise ReportError(str(e)) from None
    split = choose_split(source, run, split)
    test = run.split_metrics(split)
    is_test = split == run.default_split()
    trades = source.trades(run.run_id, split)
    equity = source.equity(run.run_id, split)
    initial = (
        finite(run.config.get("env", {}).get("initial_equity")) if isinstance(run.config.get("env"), Mapping) else None
    )
    initial = initial or (float(equity.iloc[0]) if len(equity) else 10_000.0)
    scope = TradeScope(
        title=f"Trade analysis of {run.run_id}",
        meta={"run_id": run.run_id},
        data={"run_id": run.run_id, "split": split, "url": run.url, "test": test},
        metrics_heading="Test-split metrics (out of sample, after costs)"
        if is_test
        else f"Metrics of split {split!r} (after costs)",
        no_trades=f"The run has no trades in split {split!r}.",
        covers=f"of the {split} split",
        period=f"the {split} split",
    )
    return build_trade_report(scope, test, trades, equity, initial, out_dir)


@dataclass(frozen=True)
class TradeScope:
    """What a trade report covers, in the words its sections use."""

    title: str
    """The report's title."""
    meta: dict[str, Any]
    """Report meta lines (rendered at the top)."""
    data: dict[str, Any]
    """Machine-readable fields put first in the report's data (JSON)."""
    metrics_heading: str
    """Heading of the metrics table."""
    no_trades: str
    """The sentence shown when there are no trades."""
    covers: str
    """What the trades are of, after "N trades": "of the test split"."""
    period: str
    """The span the cumulative P&L chart covers: "the test split"."""


def build_trade_report(
    scope: TradeScope,
    test: Mapping[str, Mapping[str, Any]],
    trades: pd.DataFrame,
    equity: pd.Series,
    initial: float,
    out_dir: Path,
    *,
    draw_charts: bool = True,
) -> Report:
    """Analyse trades (one row each, `pnl` after costs) and an equity curve; charts as PNGs in `out_dir`."""
    sections: list[Section] = []
    data: dict[str, Any] = dict(scope.data)
    if test:
        sections.append(
            Section(
                scope.metrics_heading,
                [],
                [
                    Table(
                        "Policy vs baselines",
                        ["metric"] + [STRATEGY_LABELS[s] for s in STRATEGIES if s in test],
                        [
                            [title] + [fmt_metric(key, test[s].get(key)) for s in STRATEGIES if s in test]
                            for key, title in METRIC_COLUMNS
                        ],
                    )
                ],
            )
        )
    if trades.empty or "pnl" not in trades.columns:
        sections.append(Section("Trades", [scope.no_trades]))
        data["trade_stats"] = {"trades": 0}
        return Report(scope.title, "trade", dict(scope.meta), sections, data)

    frame = prepare_trades(trades)
    if "is_open" not in frame.columns:
        frame["is_open"] = False
    stats = _with_open_counts(trade_stats(frame, missing=0.0), frame)
    data["trade_stats"] = stats
    stat_rows = [
        ["trades", str(stats["trades"])],
        ["closed / still open", f"{stats['closed']} / {stats['open']}"],
        ["wins / losses", f"{stats['wins']} / {stats['losses']}"],
        ["win rate", fmt_metric("win_rate", stats["win_rate"])],
        ["total P&L", _money(stats["total_pnl"])],
        ["average win / average loss", f"{_money(stats['average_win'])} / {_money(stats['average_loss'])}"],
        ["largest win / largest loss", f"{_money(stats['largest_win'])} / {_money(stats['largest_loss'])}"],
        ["average duration (hours)", f"{stats['average_duration_hours']:.1f}"],
        ["costs paid", _money(stats["total_costs"])],
    ]
    by_hour = win_rate_by_hour(frame)
    monthly, monthly_source = _monthly_returns(frame, equity, initial)
    data["win_rate_by_hour"] = by_hour.to_dict(orient="records")
    data["monthly_returns"] = [{"month": str(k), "return": finite(v)} for k, v in monthly.items()]
    data["monthly_returns_from"] = monthly_source
    charts = _trade_charts(frame, equity, by_hour, monthly, out_dir, scope.period) if draw_charts else []
    top = _top_trades(frame)
    data["top_trades"] = top
    sections.append(Section("Trade statistics", [], [Table("Trades", ["statistic", "value"], stat_rows)]))
    sections.append(
        Section(
            "Trading performance",
            [
                f"{stats['trades']} trades {scope.covers}; a trade runs from entry to exit (a resize keeps "
                "it open), P&L after fees and slippage. Hours are UTC, by entry time."
            ],
            [],
            [c for c in charts if c.path.stem != "monthly_returns"],
        )
    )
    sections.append(
        Section(
            "Monthly returns",
            [f"Computed from the {monthly_source}."],
            [
                Table(
                    "Monthly returns",
                    ["month", "return"],
                    [[str(k), fmt_metric("total_return", v)] for k, v in monthly.items()],
                )
            ],
            [c for c in charts if c.path.stem == "monthly_returns"],
        )
    )
    columns = ["entry (UTC)", "exit (UTC)", "side", "bars", "entry price", "exit price", "P&L", "return"]
    sections.append(
        Section(
            "Best and worst trades",
            [],
            [
                Table("Best trades", columns, [_trade_row(t) for t in top["best"]]),
                Table("Worst trades", columns, [_trade_row(t) for t in top["worst"]]),
            ],
        )
    )
    return Report(scope.title, "trade", dict(scope.meta), sections, data)


def _with_open_counts(stats: dict[str, Any], frame: pd.DataFrame) -> dict[str, Any]:
    # The trade table shows how many trades the split closed and how many it ended with still open.
    is_open = frame["is_open"].astype(bool)
    return {"trades": stats["trades"], "closed": int((~is_open).sum()), "open": int(is_open.sum()), **stats}


def _monthly_returns(frame: pd.DataFrame, equity: pd.Series, initial: float) -> tuple[pd.Series, str]:
    if len(equity) > 1 and isinstance(equity.index, pd.DatetimeIndex):
        month_end = equity.groupby(equity.index.strftime("%Y-%m")).last()
        previous = month_end.shift(1).fillna(float(equity.iloc[0]))
        return (month_end / previous - 1.0).astype("float64"), "equity curve (month-end equity)"
    months = frame["exit_time"].dt.strftime("%Y-%m")
    return (frame.groupby(months)["pnl"].sum() / initial).astype("float64"), "trade P&L by exit month / initial equity"


def _top_trades(frame: pd.DataFrame, count: int = 5) -> dict[str, list[dict[str, Any]]]:
    columns = [
        c
        for c in (
            "entry_time",
            "exit_time",
            "side",
            "bars",
            "entry_price",
            "exit_price",
            "pnl",
            "return_fraction",
            "is_open",
        )
        if c in frame.columns
    ]
    ordered = frame.sort_values("pnl", ascending=False)
    best = ordered.head(count)[columns]
    worst = ordered.tail(count).iloc[::-1][columns]
    return {
        "best": [{str(k): v for k, v in row.items()} for row in best.to_dict(orient="records")],
        "worst": [{str(k): v for k, v in row.items()} for row in worst.to_dict(orient="records")],
    }


def _trade_row(trade: Mapping[str, Any]) -> list[str]:
    def when(value: Any) -> str:
        return pd.Timestamp(value).strftime("%Y-%m-%d %H:%M") if value is not None else "?"

    returned = finite(trade.get("return_fraction"))
    return [
        when(trade.get("entry_time")),
        when(trade.get("exit_time")) + (" (open)" if trade.get("is_open") else ""),
        str(trade.get("side", "?")),
        str(trade.get("bars", "?")),
        _money(float(trade.get("entry_price", math.nan))),
        _money(float(trade.get("exit_price", math.nan))),
        _money(float(trade["pnl"])),
        f"{returned:.2%}" if returned is not None else "n/a",
    ]


def _trade_charts(
    frame: pd.DataFrame, equity: pd.Series, by_hour: pd.DataFrame, monthly: pd.Series, out_dir: Path, period: str
) -> list[Chart]:
    charts: list[Chart] = []
    pnl = frame["pnl"].to_numpy()
    order = frame.sort_values("exit_time") if "exit_time" in frame.columns else frame
    rows = 2 if len(equity) > 1 else 1
    figure, axes = new_figure(rows, 1, size=(8.0, 3.2 * rows))
    ax = axes[0, 0]
    x = order["exit_time"] if "exit_time" in order.columns else np.arange(1, len(order) + 1)
    ax.step(x, order["pnl"].cumsum().to_numpy(), where="post")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_title("Cumulative P&L (by trade exit)")
    ax.set_ylabel("P&L (quote currency)")
    if rows == 2:
        axes[1, 0].plot(equity.index, equity.to_numpy(), color="tab:gray")
        axes[1, 0].set_title("Equity curve")
        axes[1, 0].set_ylabel("equity")
    charts.append(save_chart(figure, out_dir / "cumulative_pnl.png", "Cumulative P&L", f"Profit growth over {period}."))

    figure, axes = new_figure()
    ax = axes[0, 0]
    returns = 100 * (frame["return_fraction"].to_numpy() if "return_fraction" in frame else pnl)
    bins = np.histogram_bin_edges(returns, bins=min(40, max(5, len(returns) // 3)))
    ax.hist(returns[pnl > 0], bins=bins, color="tab:green", alpha=0.8, label=f"wins ({int((pnl > 0).sum())})")
    ax.hist(returns[pnl <= 0], bins=bins, color="tab:red", alpha=0.8, label=f"losses ({int((pnl <= 0).sum())})")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("trade return (%)" if "return_fraction" in frame else "trade P&L")
    ax.set_ylabel("trades")
    ax.set_title("Win/loss distribution")
    ax.legend(fontsize=8)
    charts.append(
        save_chart(
            figure,
            out_dir / "win_loss_distribution.png",
            "Win/Loss Distribution",
            "Breakdown of gains vs losses per trade.",
        )
    )

    if "duration_seconds" in frame.columns:
        figure, axes = new_figure()
        ax = axes[0, 0]
        hours = frame["duration_seconds"].to_numpy(dtype=np.float64) / 3600.0
        ax.scatter(hours, returns, c=np.where(pnl > 0, "tab:green", "tab:red"), s=14, alpha=0.7)
        ax.axhline(0, color="black", linewidth=0.8)
        if hours.min() > 0 and hours.max() / hours.min() > 50:
            ax.set_xscale("log")
        ax.set_xlabel("holding time (hours)")
        ax.set_ylabel("trade return (%)")
        ax.set_title("Trade duration vs return")
        charts.append(
            save_chart(
                figure, out_dir / "trade_duration.png", "Trade Duration Analysis", "Impact of holding time on returns."
            )
        )

    if len(by_hour):
        figure, axes = new_figure()
        ax = axes[0, 0]
        ax.bar(by_hour["hour_utc"], 100 * by_hour["win_rate"], color="tab:blue")
        for hour, rate, count in zip(by_hour["hour_utc"], by_hour["win_rate"], by_hour["trades"], strict=True):
            ax.annotate(str(int(count)), (hour, 100 * rate), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(0, 24, 2))
        ax.set_xlim(-0.7, 23.7)
        ax.set_ylim(0, 110)
        ax.set_xlabel("hour of entry (UTC); labels: trades")
        ax.set_ylabel("win rate (%)")
        ax.set_title("Win rate by hour")
        charts.append(
            save_chart(figure, out_dir / "win_rate_by_hour.png", "Win Rate by Hour", "Most profitable hours.")
        )

    if len(monthly):
        figure, axes = new_figure()
        ax = axes[0, 0]
        values = 100 * monthly.to_numpy()
        ax.bar(list(monthly.index), values, color=np.where(values >= 0, "tab:green", "tab:red"))
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel("return (%)")
        ax.set_title("Monthly returns")
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        charts.append(save_chart(figure, out_dir / "monthly_returns.png", "Monthly returns chart"))
    return charts
