"""`ai-trading report` / `python -m training.reports`: performance and trade reports from runs.

The user guide's Report Generator, same options::

    ai-trading report --project ai-trading --report-type performance --limit 5
    ai-trading report --project ai-trading --report-type trade --run-id abc123
    ai-trading report --project ai-trading --format md --output-dir ./my-reports

Runs are read through `monitoring.runs` (the local `outputs/` tree, or a W&B server when one is
configured; the report says which). A report is a directory ``<output-dir>/<type>-...-<UTC time>/`` holding
``report.md`` (default), ``report.html`` (the same, charts embedded) or ``report.json`` (machine-readable),
with the matplotlib PNG charts beside it.

- ``performance``: the last ``--limit`` finished runs side by side: out-of-sample test metrics after costs,
  against buy-and-hold and the SMA rule on the same bars; training progress: reward curves, loss components,
  gradient norms, and the validation metric and exposure (how the policy's action mix evolved: share of
  validation bars it held a position).
- ``trade``: one run's test-split trades: cumulative P&L, win/loss distribution, trade duration vs return,
  win rate by hour of entry, monthly returns, best and worst trades.

`generate_report(...)` is the function the daemon's scheduler calls for a daily report. With a W&B source,
``--publish-wandb`` also saves a W&B Report through ``wandb_workspaces`` when that package is installed (it is
not a dependency; that path needs a server and is untested here).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import structlog

from monitoring.run_store import json_safe
from monitoring.runs import (
    Backend,
    RunInfo,
    RunNotFoundError,
    RunSource,
    RunSourceError,
    finite,
    open_runs,
    utc_now,
)
from monitoring.trade_analytics import (
    STRATEGIES,
    STRATEGY_LABELS,
    TEST_METRICS,
    compare_with_baselines,
    format_metric,
    metric_series,
    prepare_trades,
    trade_stats,
    win_rate_by_hour,
)

log = structlog.get_logger()

ReportType = Literal["performance", "trade"]
Format = Literal["md", "html", "json"]
REPORT_TYPES: tuple[str, ...] = ("performance", "trade")
FORMATS: tuple[str, ...] = ("md", "html", "json")
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

_INTEGER_KEYS = frozenset({"trade_count", "bars", "max_drawdown_duration_bars"})
_METRIC_COLUMNS: tuple[tuple[str, str], ...] = (*TEST_METRICS, ("turnover_per_year", "turnover / year"))


class ReportError(RuntimeError):
    """A report cannot be made (no runs, unknown run id, ...); the message says what and where."""


# --- the report model ---------------------------------------------------------------------------------------


@dataclass
class Table:
    """A table of preformatted strings."""

    title: str
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Chart:
    """A PNG chart written beside the report."""

    title: str
    path: Path
    caption: str = ""


@dataclass
class Section:
    """A heading with text, tables and charts."""

    heading: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)


@dataclass
class Report:
    """What the renderers turn into md, html or json."""

    title: str
    report_type: str
    meta: dict[str, Any]
    sections: list[Section]
    data: dict[str, Any]


def fmt_metric(key: str, value: Any) -> str:
    """Format a metric the way the training table does (percentages for returns and rates)."""
    return format_metric(key, value, _INTEGER_KEYS)


def _money(value: float) -> str:
    return f"{value:,.2f}"


# --- charts -------------------------------------------------------------------------------------------------


def _figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (8.0, 4.0)) -> tuple[Any, Any]:
    # matplotlib's object API without pyplot: no global backend state, safe in a worker thread.
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, axes


def _save(figure: Any, path: Path, title: str, caption: str = "") -> Chart:
    figure.savefig(path, dpi=90, format="png")
    return Chart(title, path, caption)


# --- performance report -------------------------------------------------------------------------------------


PROGRESS_KEYS = (
    "charts/episodic_return",
    "losses/policy_loss",
    "losses/value_loss",
    "losses/entropy",
    "grad_norm/total",
    "validation/sharpe",
    "validation/exposure",
)


def _finished(runs: Sequence[RunInfo]) -> tuple[list[tuple[RunInfo, str | None, dict[str, Any]]], list[str]]:
    done, skipped = [], []
    for run in runs:
        fold, test = run.test_metrics()
        if test.get("policy"):
            done.append((run, fold, test))
        else:
            skipped.append(run.run_id)
    return done, skipped


def build_performance(source: RunSource, limit: int, out_dir: Path) -> Report:
    """Compare the newest `limit` finished runs: test metrics vs baselines and training progress."""
    if limit < 1:
        raise ReportError(f"--limit must be >= 1, was {limit}")
    candidates = source.list_runs(limit=max(4 * limit, 20))
    if not candidates:
        raise ReportError(f"no runs found in {source.location} ({source.kind}); train one with `ai-trading train`")
    finished, skipped = _finished(candidates)
    finished = finished[:limit]
    if not finished:
        raise ReportError(
            f"no finished runs with test results in {source.location}; found only runs without a summary: "
            f"{', '.join(skipped[:10])}"
        )
    label = {run.run_id: run.run_id if fold is None else f"{run.run_id} ({fold})" for run, fold, _ in finished}

    metric_rows: list[list[str]] = []
    baseline_rows: list[list[str]] = []
    runs_data: list[dict[str, Any]] = []
    for run, fold, test in finished:
        policy = test.get("policy", {})
        model = run.config.get("model", {}) if isinstance(run.config.get("model"), Mapping) else {}
        steps = (
            run.config.get("training", {}).get("total_timesteps")
            if isinstance(run.config.get("training"), Mapping)
            else None
        )
        created = run.created.strftime("%Y-%m-%d %H:%M") if run.created else "?"
        metric_rows.append(
            [label[run.run_id], created, str(model.get("name", "?")), str(steps or "?")]
            + [fmt_metric(k, policy.get(k)) for k, _ in _METRIC_COLUMNS]
        )
        returns, excess, beats_baselines = compare_with_baselines(test)
        sharpes = {s: finite(test.get(s, {}).get("sharpe")) for s in STRATEGIES}
        baseline_rows.append(
            [label[run.run_id]]
            + [fmt_metric("total_return", returns[s]) for s in STRATEGIES]
            + [fmt_metric("total_return", excess)]
            + [fmt_metric("sharpe", sharpes[s]) for s in STRATEGIES]
            + ["yes" if beats_baselines else "no"]
        )
        runs_data.append(
            {
                "run_id": run.run_id,
                "fold": fold,
                "created": run.created,
                "url": run.url,
                "model": model,
                "total_timesteps": steps,
                "test": test,
                "excess_return_vs_buy_and_hold": excess,
                "beats_baselines": beats_baselines,
            }
        )

    histories = {run.run_id: source.history(run.run_id) for run, _, _ in finished}
    charts = _performance_charts(finished, histories, label, out_dir)
    progress_data = {
        run_id: {key: _last(metric_series(frame, key)) for key in PROGRESS_KEYS} for run_id, frame in histories.items()
    }
    for entry in runs_data:
        entry["final_training_values"] = progress_data[entry["run_id"]]

    results = Section(
        "Out-of-sample test results",
        [
            "Each run's selected checkpoint traded its held-out test split once, after fees and slippage "
            "(the paper venue's cost model); newest run first."
        ],
        [
            Table(
                "Policy metrics (test split)",
                ["run", "created (UTC)", "model", "timesteps"] + [title for _, title in _METRIC_COLUMNS],
                metric_rows,
            ),
            Table(
                "Against the baselines (same bars, same costs)",
                [
                    "run",
                    "policy return",
                    "buy & hold return",
                    "SMA return",
                    "excess vs buy & hold",
                    "policy sharpe",
                    "buy & hold sharpe",
                    "SMA sharpe",
                    "beats both",
                ],
                baseline_rows,
            ),
        ],
        [c for c in charts if c.path.stem == "returns_comparison"],
    )
    progress = Section(
        "Training progress",
        [
            "Reward curves, loss components and gradient norms as logged during PPO updates; the validation "
            "panel shows the checkpoint-selection metric and the share of validation bars the deterministic "
            "policy held a position (how its action mix evolved)."
        ],
        [],
        [c for c in charts if c.path.stem != "returns_comparison"],
    )
    paragraphs = []
    if skipped:
        paragraphs.append(f"Skipped {len(skipped)} run(s) without test results: {', '.join(skipped[:10])}.")
    sections = [results, progress]
    if paragraphs:
        sections.append(Section("Notes", paragraphs))
    return Report(
        f"Performance comparison of the last {len(finished)} run(s)",
        "performance",
        {},
        sections,
        {"runs": runs_data, "skipped_runs": skipped},
    )


def _last(series: pd.Series) -> float | None:
    return finite(series.iloc[-1]) if len(series) else None


def _performance_charts(
    finished: Sequence[tuple[RunInfo, str | None, dict[str, Any]]],
    histories: Mapping[str, pd.DataFrame],
    label: Mapping[str, str],
    out_dir: Path,
) -> list[Chart]:
    charts: list[Chart] = []
    names = [label[run.run_id] for run, _, _ in finished]
    figure, axes = _figure(size=(max(6.0, 1.6 * len(names) + 3), 4.0))
    ax = axes[0, 0]
    width = 0.26
    x = np.arange(len(finished))
    for i, strategy in enumerate(STRATEGIES):
        values = [100 * (finite(test.get(strategy, {}).get("total_return")) or 0.0) for _, _, test in finished]
        ax.bar(x + (i - 1) * width, values, width, label=STRATEGY_LABELS[strategy])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, [n[-22:] for n in names], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("total return (%)")
    ax.set_title("Test-split total return after costs")
    ax.legend(fontsize=8)
    charts.append(_save(figure, out_dir / "returns_comparison.png", "Test-split returns vs baselines"))

    def lines(keys: Sequence[tuple[str, str]], file: str, title: str, caption: str, log_y: bool = False) -> None:
        figure, axes = _figure(1, len(keys), size=(4.2 * len(keys), 3.6))
        plotted = False
        for j, (key, key_title) in enumerate(keys):
            ax = axes[0, j]
            for run, _, _ in finished:
                series = metric_series(histories[run.run_id], key)
                if series.empty:
                    continue
                plotted = True
                if key == "charts/episodic_return" and len(series) > 5:
                    ax.plot(series.index, series.to_numpy(), alpha=0.25, linewidth=0.8)
                    smooth = series.rolling(max(2, len(series) // 10), min_periods=1).mean()
                    ax.plot(smooth.index, smooth.to_numpy(), label=label[run.run_id][-22:])
                else:
                    ax.plot(
                        series.index,
                        series.to_numpy(),
                        marker="." if len(series) < 30 else None,
                        label=label[run.run_id][-22:],
                    )
            ax.set_title(key_title, fontsize=10)
            ax.set_xlabel("environment step")
            if log_y and ax.has_data():
                ax.set_yscale("log")
        if plotted:
            axes[0, 0].legend(fontsize=7)
            figure.suptitle(title)
            charts.append(_save(figure, out_dir / file, title, caption))

    lines(
        [("charts/episodic_return", "episodic return")],
        "reward_curves.png",
        "Reward curves",
        "Episode returns (sum of log-equity rewards) during training; faint: raw, solid: rolling mean.",
    )
    lines(
        [("losses/policy_loss", "policy loss"), ("losses/value_loss", "value loss"), ("losses/entropy", "entropy")],
        "loss_components.png",
        "Loss components",
        "Policy (clipped surrogate) vs value-function loss, and the policy entropy.",
    )
    lines(
        [("grad_norm/total", "total gradient norm (before clipping)")],
        "gradient_norms.png",
        "Gradient norms",
        "Spikes point at optimisation instabilities.",
        log_y=True,
    )
    lines(
        [
            ("validation/sharpe", "validation sharpe"),
            ("validation/exposure", "validation exposure (share in position)"),
        ],
        "validation_progress.png",
        "Validation and action distribution",
        "Checkpoint-selection metric and how often the policy chose to hold a position, per validation pass.",
    )
    return charts


# --- trade report -------------------------------------------------------------------------------------------


def build_trade(source: RunSource, run_id: str | None, out_dir: Path) -> Report:
    """Analyse the test-split trades of one run (the newest finished run when `run_id` is None)."""
    if run_id is None:
        finished, _ = _finished(source.list_runs(limit=20))
        if not finished:
            raise ReportError(f"no finished runs with test results in {source.location}; pass --run-id")
        run = finished[0][0]
        log.info("trade_report_run_chosen", run_id=run.run_id, reason="newest finished run")
    else:
        try:
            run = source.get_run(run_id)
        except RunNotFoundError as e:
            raise ReportError(str(e)) from None
    fold, test = run.test_metrics()
    split = "test" if fold is None else f"{fold}-test"
    trades = source.trades(run.run_id, split)
    equity = source.equity(run.run_id, split)
    initial = (
        finite(run.config.get("env", {}).get("initial_equity")) if isinstance(run.config.get("env"), Mapping) else None
    )
    initial = initial or (float(equity.iloc[0]) if len(equity) else 10_000.0)

    sections: list[Section] = []
    data: dict[str, Any] = {"run_id": run.run_id, "split": split, "url": run.url, "test": test}
    if test:
        sections.append(
            Section(
                "Test-split metrics (out of sample, after costs)",
                [],
                [
                    Table(
                        "Policy vs baselines",
                        ["metric"] + [STRATEGY_LABELS[s] for s in STRATEGIES if s in test],
                        [
                            [title] + [fmt_metric(key, test[s].get(key)) for s in STRATEGIES if s in test]
                            for key, title in _METRIC_COLUMNS
                        ],
                    )
                ],
            )
        )
    if trades.empty or "pnl" not in trades.columns:
        sections.append(Section("Trades", [f"The run has no trades in split {split!r}."]))
        data["trade_stats"] = {"trades": 0}
        return Report(f"Trade analysis of {run.run_id}", "trade", {"run_id": run.run_id}, sections, data)

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
    charts = _trade_charts(frame, equity, by_hour, monthly, out_dir)
    top = _top_trades(frame)
    data["top_trades"] = top
    sections.append(Section("Trade statistics", [], [Table("Trades", ["statistic", "value"], stat_rows)]))
    sections.append(
        Section(
            "Trading performance",
            [
                f"{stats['trades']} trades of the {split} split; a trade runs from entry to exit (a resize keeps "
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
    return Report(f"Trade analysis of {run.run_id}", "trade", {"run_id": run.run_id}, sections, data)


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
    frame: pd.DataFrame, equity: pd.Series, by_hour: pd.DataFrame, monthly: pd.Series, out_dir: Path
) -> list[Chart]:
    charts: list[Chart] = []
    pnl = frame["pnl"].to_numpy()
    order = frame.sort_values("exit_time") if "exit_time" in frame.columns else frame
    rows = 2 if len(equity) > 1 else 1
    figure, axes = _figure(rows, 1, size=(8.0, 3.2 * rows))
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
    charts.append(_save(figure, out_dir / "cumulative_pnl.png", "Cumulative P&L", "Profit growth over the test split."))

    figure, axes = _figure()
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
        _save(
            figure,
            out_dir / "win_loss_distribution.png",
            "Win/Loss Distribution",
            "Breakdown of gains vs losses per trade.",
        )
    )

    if "duration_seconds" in frame.columns:
        figure, axes = _figure()
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
            _save(
                figure, out_dir / "trade_duration.png", "Trade Duration Analysis", "Impact of holding time on returns."
            )
        )

    if len(by_hour):
        figure, axes = _figure()
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
        charts.append(_save(figure, out_dir / "win_rate_by_hour.png", "Win Rate by Hour", "Most profitable hours."))

    if len(monthly):
        figure, axes = _figure()
        ax = axes[0, 0]
        values = 100 * monthly.to_numpy()
        ax.bar(list(monthly.index), values, color=np.where(values >= 0, "tab:green", "tab:red"))
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel("return (%)")
        ax.set_title("Monthly returns")
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        charts.append(_save(figure, out_dir / "monthly_returns.png", "Monthly returns chart"))
    return charts


# --- rendering ------------------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report) -> str:
    """Render a report as Markdown (charts linked by file name)."""
    lines = [f"# {report.title}", ""]
    lines += [f"- **{key}**: {value}" for key, value in report.meta.items()]
    for section in report.sections:
        lines += ["", f"## {section.heading}", ""]
        for paragraph in section.paragraphs:
            lines += [paragraph, ""]
        for table in section.tables:
            lines += [f"**{table.title}**", ""]
            lines.append("| " + " | ".join(_md_cell(c) for c in table.columns) + " |")
            lines.append("|" + "|".join("---" for _ in table.columns) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
            lines.append("")
        for chart in section.charts:
            lines += [f"### {chart.title}", "", f"![{chart.title}]({chart.path.name})", ""]
            if chart.caption:
                lines += [f"*{chart.caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.9em}"
    "th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:right}th{background:#f3f3f3}"
    "td:first-child,th:first-child{text-align:left}img{max-width:100%}figcaption{color:#555;font-style:italic}"
)


def render_html(report: Report) -> str:
    """Render a report as one self-contained HTML page (charts embedded as base64 PNG)."""
    esc = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(report.title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{esc(report.title)}</h1><ul>",
    ]
    parts += [f"<li><b>{esc(str(k))}</b>: {esc(str(v))}</li>" for k, v in report.meta.items()]
    parts.append("</ul>")
    for section in report.sections:
        parts.append(f"<h2>{esc(section.heading)}</h2>")
        parts += [f"<p>{esc(p)}</p>" for p in section.paragraphs]
        for table in section.tables:
            parts.append(f"<table><caption>{esc(table.title)}</caption><tr>")
            parts += [f"<th>{esc(c)}</th>" for c in table.columns]
            parts.append("</tr>")
            for row in table.rows:
                parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
            parts.append("</table>")
        for chart in section.charts:
            encoded = base64.b64encode(chart.path.read_bytes()).decode("ascii")
            parts.append(
                f"<figure><h3>{esc(chart.title)}</h3><img alt='{esc(chart.title)}' "
                f"src='data:image/png;base64,{encoded}'><figcaption>{esc(chart.caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def render_json(report: Report) -> str:
    """Render a report as JSON: meta, the figures behind every table, and the chart files."""
    payload = {
        "title": report.title,
        "report_type": report.report_type,
        "meta": report.meta,
        **report.data,
        "charts": [
            {"title": c.title, "file": c.path.name, "caption": c.caption} for s in report.sections for c in s.charts
        ],
    }
    return json.dumps(json_safe(payload), indent=2, sort_keys=False) + "\n"


RENDERERS: dict[str, Callable[[Report], str]] = {"md": render_markdown, "html": render_html, "json": render_json}


# --- entry points ---------------------------------------------------------------------------------------------


def _report_dir(output_dir: Path, name: str) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    candidate = output_dir / name
    counter = 2
    while candidate.exists():
        candidate = output_dir / f"{name}-{counter}"
        counter += 1
    candidate.mkdir()
    return candidate


def generate_report(
    report_type: str = "performance",
    *,
    project: str = "ai-trading",
    entity: str | None = None,
    runs_dir: Path | str = "outputs",
    backend: Backend = "auto",
    run_id: str | None = None,
    limit: int = 5,
    fmt: str = "md",
    output_dir: Path | str = "reports",
    source: RunSource | None = None,
    publish_wandb: bool = False,
) -> Path:
    """Write a report and return the path of its main file (charts beside it); ReportError if impossible."""
    if report_type not in REPORT_TYPES:
        raise ReportError(f"report type must be one of {list(REPORT_TYPES)}, was {report_type!r}")
    if fmt not in FORMATS:
        raise ReportError(f"format must be one of {list(FORMATS)}, was {fmt!r}")
    if source is None:
        source = open_runs(project, entity, runs_dir, backend)
    now = utc_now()
    stamp = now.strftime("%Y%m%d-%H%M%S")
    name = f"performance-{stamp}" if report_type == "performance" else f"trade-{run_id or 'latest'}-{stamp}"
    out_dir = _report_dir(Path(output_dir), name)
    try:
        if report_type == "performance":
            report = build_performance(source, limit, out_dir)
        else:
            report = build_trade(source, run_id, out_dir)
    except BaseException:
        for path in out_dir.iterdir():
            path.unlink()
        out_dir.rmdir()
        raise
    report.meta = {
        "generated (UTC)": now.isoformat(),
        "project": project if entity is None else f"{entity}/{project}",
        "source": f"{source.kind}: {source.location}",
        "why this source": source.reason,
        **report.meta,
    }
    path = out_dir / f"report.{fmt}"
    path.write_text(RENDERERS[fmt](report), encoding="utf-8")
    log.info("report_written", path=str(path), report_type=report_type, format=fmt, source=source.kind)
    if publish_wandb:
        url = publish_wandb_report(report, source, project, entity)
        if url:
            log.info("wandb_report_saved", url=url)
    return path


def publish_wandb_report(report: Report, source: RunSource, project: str, entity: str | None) -> str | None:
    """Save a W&B Report with the training-progress panels (needs `wandb_workspaces` and a server; untested here)."""
    if source.kind != "wandb":
        log.warning("wandb_report_skipped", reason="the runs were read locally; a W&B Report needs a W&B server")
        return None
    try:
        import wandb_workspaces.reports.v2 as wr  # type: ignore[import-not-found]  # not a dependency: optional, see the module docstring
    except ImportError:
        log.warning("wandb_report_skipped", reason="wandb_workspaces is not installed (pip install wandb-workspaces)")
        return None
    runs = [r.get("run_id") for r in report.data.get("runs", [])] or [report.data.get("run_id")]
    runset = wr.Runset(entity=entity or "", project=project, filters=f"Metric('displayName') in {runs!r}")
    panels = [
        wr.LinePlot(title="Reward curves", x="Step", y=["charts/episodic_return"]),
        wr.LinePlot(title="Loss components", x="Step", y=["losses/policy_loss", "losses/value_loss"]),
        wr.LinePlot(title="Gradient norms", x="Step", y=["grad_norm/total"]),
        wr.BarPlot(title="Test return", metrics=["test/policy/total_return", "test/buy_and_hold/total_return"]),
        wr.RunComparer(diff_only=True),
    ]
    saved = wr.Report(
        project=project,
        entity=entity or "",
        title=report.title,
        description=f"ai-trading {report.report_type} report",
        blocks=[wr.PanelGrid(runsets=[runset], panels=panels)],
    ).save()
    return str(getattr(saved, "url", "")) or None


def build_parser() -> argparse.ArgumentParser:
    """Return the CLI parser (the user guide's options plus --runs-dir, --backend, --publish-wandb)."""
    parser = argparse.ArgumentParser(
        prog="ai-trading report",
        description="Write a performance-comparison or trade-analysis report from training runs.",
        epilog="Examples:\n  ai-trading report --project ai-trading --report-type performance --limit 5\n"
        "  ai-trading report --project ai-trading --report-type trade --run-id abc123\n"
        "  ai-trading report --project ai-trading --format md --output-dir ./my-reports",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--project",
        default=os.environ.get("WANDB_PROJECT") or "ai-trading",
        help="W&B project (recorded in the report; read from when the W&B backend is used)",
    )
    parser.add_argument("--entity", default=os.environ.get("WANDB_ENTITY") or None, help="W&B entity")
    parser.add_argument("--report-type", choices=REPORT_TYPES, default="performance")
    parser.add_argument("--limit", type=int, default=5, help="runs to compare (performance report)")
    parser.add_argument("--run-id", default=None, help="run to analyse (trade report; default: newest finished run)")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="md")
    parser.add_argument("--output-dir", default="reports", help="where report directories are written")
    parser.add_argument("--runs-dir", default="outputs", help="local run directory tree (local backend)")
    parser.add_argument(
        "--backend",
        choices=("auto", "local", "wandb"),
        default="auto",
        help="auto: W&B when an API key is configured and WANDB_MODE is not offline, else local",
    )
    parser.add_argument(
        "--publish-wandb",
        action="store_true",
        help="also save a W&B Report (needs a W&B server and the wandb-workspaces package)",
    )
    parser.add_argument("--log-level", default="WARNING")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the report CLI; print the report's path; exit 0 ok, 1 error, 2 bad usage."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    from monitoring.logging import configure_logging

    configure_logging(args.log_level)
    try:
        path = generate_report(
            args.report_type,
            project=args.project,
            entity=args.entity,
            runs_dir=args.runs_dir,
            backend=args.backend,
            run_id=args.run_id,
            limit=args.limit,
            fmt=args.fmt,
            output_dir=args.output_dir,
            publish_wandb=args.publish_wandb,
        )
    except (ReportError, RunSourceError) as e:
        print(f"ai-trading report: {e}", file=sys.stderr)
        return EXIT_ERROR
    print(path)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
