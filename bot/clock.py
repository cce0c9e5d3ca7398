"""The wall clock the daemon reads (replaceable by a market clock in tests and benchmarks)."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)
