"""Results of the reliability scenarios, gathered over a session (see conftest.py) and written as a table."""

from __future__ import annotations

import os
from pathlib import Path

RESULTS: dict[str, list[int]] = {}
"""Scenario → [runs, failures]."""


def record(scenario: str, *, failed: bool) -> None:
    """Count one run of `scenario`; also append the table to $AI_TRADING_RELIABILITY_REPORT when set."""
    runs = RESULTS.setdefault(scenario, [0, 0])
    runs[0] += 1
    runs[1] += int(failed)
    path = os.environ.get("AI_TRADING_RELIABILITY_REPORT")
    if path:
        Path(path).write_text(table() + "\n")


def table() -> str:
    """The summary table: one row per scenario, then the total."""
    width = max([len("scenario"), *(len(s) for s in RESULTS)])
    lines = [f"{'scenario':<{width}}  {'runs':>5}  {'failures':>8}", "-" * (width + 17)]
    for scenario, (runs, failures) in RESULTS.items():
        lines.append(f"{scenario:<{width}}  {runs:>5}  {failures:>8}")
    total_runs = sum(r for r, _ in RESULTS.values())
    total_failures = sum(f for _, f in RESULTS.values())
    lines += ["-" * (width + 17), f"{'total':<{width}}  {total_runs:>5}  {total_failures:>8}"]
    return "\n".join(lines)
