"""The daemon's scheduled daily report: the previous UTC day's trades and equity from the ledger, as md + json.

Runs on ``bot.schedule.daily_report`` (cron, UTC; default 00:05). The report itself is
`monitoring.reports.ledger.write_daily_report` (torch-free); it reads SQL, runs pandas and may draw charts, so it
runs in a worker thread and never delays a candle, and is imported when the first report is due (the daemon starts
without pandas). When it is written, a ``daily_report_written`` log line and an
``info`` alert (code ``daily_report_written``) carry its path and headline figures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from bot.events import AlertEvent
from bot.ledger.store import Ledger
from bot.sinks.bus import EventBus

if TYPE_CHECKING:
    from monitoring.reports.ledger import DailyReport

log = structlog.get_logger()


def previous_utc_day(now: datetime) -> date:
    """Return the UTC day before `now`'s."""
    return (now.astimezone(UTC) - timedelta(days=1)).date()


class DailyReportJob:
    """The scheduled job: write yesterday's report, log it and publish an alert with its headline figures."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        bot_id: str,
        output_dir: Path | str,
        bus: EventBus | None = None,
        clock: Callable[[], datetime],
    ) -> None:
        self.ledger = ledger
        self.bot_id = bot_id
        self.output_dir = Path(output_dir)
        self.bus = bus
        self.clock = clock

    async def __call__(self) -> DailyReport:
        """Write the previous UTC day's report and return where it went."""
        # pandas (74 MB) is imported by the first report, not at start: a daemon that never writes one stays without it.
        from monitoring.reports.ledger import write_daily_report

        now = self.clock()
        day = previous_utc_day(now)
        # SQL reads, pandas and matplotlib block for a while: in a worker thread, off the event loop.
        report = await asyncio.to_thread(
            write_daily_report,
            self.ledger,
            bot_id=self.bot_id,
            day=day,
            output_dir=self.output_dir,
            generated=now,
        )
        path = str(report.files["md"])
        figures = report.headline
        log.info("daily_report_written", bot_id=self.bot_id, day=day.isoformat(), path=path, **figures)
        if self.bus is not None:
            self.bus.publish(
                AlertEvent(
                    ts=now,
                    bot_id=self.bot_id,
                    level="info",
                    code="daily_report_written",
                    message=f"daily report {day.isoformat()}: {path} ({_describe(figures)})",
                )
            )
        return report


def _describe(figures: Mapping[str, Any]) -> str:
    def shown(key: str, spec: str) -> str:
        value = figures.get(key)
        return "n/a" if value is None else format(value, spec)

    return (
        f"trades={figures.get('trades', 0)} win_rate={shown('win_rate', '.1%')} "
        f"pnl={shown('total_pnl', ',.2f')} return={shown('total_return', '.2%')}"
    )
