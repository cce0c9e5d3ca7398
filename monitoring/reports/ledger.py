"""Trade reports from a daemon's ledger: `ai-trading report --ledger` and the daemon's scheduled daily report.

The report has the run trade report's sections (`monitoring.reports.trades`) over a `monitoring.reports.ledger_run`
window. `write_daily_report` writes one UTC day's report as ``report.md`` and ``report.json`` (charts beside
them when matplotlib is installed; the base install serves the daemon without it) into
``<output_dir>/reports/<bot_id>/<YYYY-MM-DD>/``; a rerun for the same day replaces the files. It blocks (SQL,
pandas, matplotlib): the daemon runs it in a worker thread. Torch-free (DESIGN.md).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import structlog

from bot.clock import utc_now
from bot.ledger.store import Ledger
from monitoring.reports.ledger_run import LedgerRun, read_ledger_run
from monitoring.reports.model import Report
from monitoring.reports.render import render_json, render_markdown
from monitoring.reports.trades import TradeScope, build_trade_report
from monitoring.runs import finite

log = structlog.get_logger()

DAILY_FORMATS = ("md", "json")
"""The files a daily report holds."""


def has_matplotlib() -> bool:
    """Whether charts can be drawn (matplotlib is in the `train` and `dashboard` extras, not the base install)."""
    return importlib.util.find_spec("matplotlib") is not None


def build_ledger_report(run: LedgerRun, out_dir: Path, *, title: str | None = None, draw_charts: bool = True) -> Report:
    """Return the trade report of a ledger window (charts written into `out_dir` when `draw_charts`)."""
    test = run.summary().get("test", {})
    initial = float(run.equity.iloc[0]) if len(run.equity) else 10_000.0
    scope = TradeScope(
        title=title or f"Trade analysis of ledger {run.window()}",
        meta={"ledger": run.location, "window (UTC)": run.window()},
        data={
            "ledger": run.location,
            "since": None if run.since is None else run.since.isoformat(),
            "until": None if run.until is None else run.until.isoformat(),
            "bot_ids": list(run.bot_ids),
            "test": test,
            "metrics_from": "equity snapshots (one bar per snapshot interval) and closed trades"
            if test
            else "no equity snapshot in the window",
        },
        metrics_heading="Ledger metrics (after fees; bars are equity-snapshot intervals)",
        no_trades=f"The ledger has no trades closed in {run.window()}.",
        covers=f"closed in {run.window()} (UTC)",
        period="the window",
    )
    return build_trade_report(scope, test, run.trades, run.equity, initial, out_dir, draw_charts=draw_charts)


def headline(report: Report) -> dict[str, Any]:
    """Return the figures a log line or alert carries: trades, win rate, P&L, return, final equity."""
    stats = report.data.get("trade_stats", {})
    policy = report.data.get("test", {}).get("policy", {})
    return {
        "trades": int(stats.get("trades", 0)),
        "win_rate": finite(stats.get("win_rate")),
        "total_pnl": finite(stats.get("total_pnl")) or 0.0,
        "total_return": finite(policy.get("total_return")),
        "final_equity": finite(policy.get("final_equity")),
    }


@dataclass(frozen=True)
class DailyReport:
    """Where one day's report went and its headline figures."""

    day: date
    directory: Path
    files: dict[str, Path]
    """Format (md, json) -> file."""
    headline: dict[str, Any]


def day_window(day: date) -> tuple[datetime, datetime]:
    """Return [00:00, next 00:00) UTC of `day`."""
    start = datetime.combine(day, time(0), tzinfo=UTC)
    return start, start + timedelta(days=1)


def write_daily_report(
    ledger: Ledger,
    *,
    bot_id: str,
    day: date,
    output_dir: Path | str,
    draw_charts: bool | None = None,
    generated: datetime | None = None,
) -> DailyReport:
    """Write `day`'s (UTC) report from the ledger into ``<output_dir>/reports/<bot_id>/<day>/``; return it."""
    since, until = day_window(day)
    out_dir = Path(output_dir) / "reports" / bot_id / day.isoformat()
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.png"):
        stale.unlink()
    run = read_ledger_run(ledger, since, until)
    report = build_ledger_report(
        run,
        out_dir,
        title=f"Daily report of {bot_id}, {day.isoformat()} (UTC)",
        draw_charts=has_matplotlib() if draw_charts is None else draw_charts,
    )
    report.meta = {
        "generated (UTC)": (generated or utc_now()).isoformat(),
        "bot": bot_id,
        "source": f"ledger: {ledger.url}",
        **report.meta,
    }
    files: dict[str, Path] = {}
    for fmt, render in (("md", render_markdown), ("json", render_json)):
        path = out_dir / f"report.{fmt}"
        tmp = path.with_suffix(f".{fmt}.tmp")
        tmp.write_text(render(report), encoding="utf-8")
        tmp.replace(path)
        files[fmt] = path
    return DailyReport(day=day, directory=out_dir, files=files, headline=headline(report))
