"""What a report is (sections of text, tables and charts) before it is rendered, and the helpers the builders share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitoring.reports.analytics import TEST_METRICS, format_metric
from monitoring.runs import RunInfo

_INTEGER_KEYS = frozenset({"trade_count", "bars", "max_drawdown_duration_bars"})
METRIC_COLUMNS: tuple[tuple[str, str], ...] = (*TEST_METRICS, ("turnover_per_year", "turnover / year"))


class ReportError(RuntimeError):
    """A report cannot be made (no runs, unknown run id, ...); the message says what and where."""


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


def save_chart(figure: Any, path: Path, title: str, caption: str = "") -> Chart:
    """Write a figure as a PNG chart beside the report."""
    figure.savefig(path, dpi=90, format="png")
    return Chart(title, path, caption)


def finished_runs(runs: Sequence[RunInfo]) -> tuple[list[tuple[RunInfo, str | None, dict[str, Any]]], list[str]]:
    """Split runs into (run, fold, test metrics) of those with test results, and the run ids of the rest."""
    done, skipped = [], []
    for run in runs:
        fold, test = run.test_metrics()
        if test.get("policy"):
            done.append((run, fold, test))
        else:
            skipped.append(run.run_id)
    return done, skipped
