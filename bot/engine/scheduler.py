"""Scheduled daemon jobs (equity snapshot, reconciliation, daily report) from cron strings, on the engine's event loop.

Jobs are coroutine functions run by apscheduler's `AsyncIOScheduler` (UTC, one instance of a job at a time,
missed runs coalesced). A job that raises is logged and counted; it never stops the scheduler or trading.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from bot.errors import ConfigError

log = structlog.get_logger()

Job = Callable[[], Awaitable[Any]]


@dataclass(frozen=True)
class ScheduleConfig:
    """Cron strings (5 fields, UTC; or 6 with seconds first) of the daemon's scheduled jobs; "" turns a job off."""

    equity_snapshot: str = "*/15 * * * *"
    """Record an equity snapshot in the ledger and publish it to the sinks."""
    reconciliation: str = "7,37 * * * *"
    """Reconcile the ledger with the venue (a failure halts new risk)."""
    daily_report: str = "5 0 * * *"
    """Write the previous UTC day's report (md + json) from the ledger into <output_dir>/reports/<bot_id>/<day>/."""
    model_staleness: str = "0 6 * * *"
    """Check the live model's age against bot.model_max_age_days (alert, or REDUCING with model_stale_action)."""
    clock_sync: str = "3 * * * *"
    """Measure the venue's clock again (a drifting machine clock; paper mode signs nothing that would notice)."""


def cron_trigger(expression: str, key: str) -> CronTrigger:
    """Parse a cron string (UTC): 5 fields, or 6 with seconds first; raise ConfigError naming `key` if it is neither."""
    fields = expression.split()
    try:
        if len(fields) == 6:
            second, minute, hour, day, month, day_of_week = fields
            return CronTrigger(
                second=second, minute=minute, hour=hour, day=day, month=month, day_of_week=day_of_week, timezone=UTC
            )
        return CronTrigger.from_crontab(expression, timezone=UTC)
    except ValueError as e:
        raise ConfigError(f"{key}: invalid cron expression {expression!r}: {e}") from None


@dataclass
class JobStats:
    """Runs and failures per job."""

    runs: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)


def build_scheduler(
    jobs: Mapping[str, tuple[str, Job]], *, prefix: str = "bot.schedule"
) -> tuple[AsyncIOScheduler, JobStats]:
    """Return an (unstarted) scheduler running each named job on its cron string, and its counters."""
    scheduler = AsyncIOScheduler(timezone=UTC)
    stats = JobStats()
    scheduled: dict[str, str] = {}
    for name, (expression, job) in jobs.items():
        if not expression.strip():
            continue
        scheduled[name] = expression.strip()
        trigger = cron_trigger(expression, f"{prefix}.{name}")
        scheduler.add_job(
            _guarded(name, job, stats),
            trigger,
            id=name,
            name=name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=60,
        )
    if scheduled:
        log.info("scheduled_jobs", jobs=scheduled, off=sorted(set(jobs) - set(scheduled)))
    return scheduler, stats


def _guarded(name: str, job: Job, stats: JobStats) -> Job:
    async def run() -> None:
        stats.runs[name] = stats.runs.get(name, 0) + 1
        try:
            await job()
        except Exception:
            stats.failures[name] = stats.failures.get(name, 0) + 1
            log.exception("scheduled_job_failed", job=name)

    run.__name__ = f"job_{name}"
    return run
