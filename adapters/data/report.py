"""What validation found in one OHLCV file, and what a policy did about it: the report and how it reads.

A `ValidationReport` holds the findings (bad rows, gaps, duplicates) and, once `apply_policy` ran, the actions;
it summarises them per kind (`problems`), renders them for a person (`error_message`) and as JSON (`to_json`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from adapters.data.policy import KINDS, Policy
from adapters.errors import DataError

Severity = Literal["error", "warning"]

# How many examples an error message lists before "and N more".
MESSAGE_EXAMPLES = 5


@dataclass(frozen=True, slots=True)
class Finding:
    """One bad row: its kind, row number in the file (0-based), timestamp, column and what is wrong."""

    kind: str
    row: int
    timestamp: pd.Timestamp | None
    column: str | None
    detail: str

    def describe(self) -> str:
        """Describe the finding for a person: row, timestamp and problem."""
        return f"row {self.row} ({_fmt_ts(self.timestamp)}): {self.detail}"


@dataclass(frozen=True, slots=True)
class Gap:
    """Bars missing between two consecutive timestamps."""

    after: pd.Timestamp
    """Last timestamp before the gap."""
    before: pd.Timestamp
    """First timestamp after the gap."""
    missing_bars: int
    """How many bars of the timeframe are missing."""

    def describe(self) -> str:
        """Describe the gap for a person."""
        return f"{self.missing_bars} bar(s) missing after {_fmt_ts(self.after)} (next bar {_fmt_ts(self.before)})"


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Several rows sharing one timestamp."""

    timestamp: pd.Timestamp
    rows: tuple[int, ...]
    """Row numbers (0-based, file order) that carry this timestamp."""
    identical: bool
    """Whether all the rows hold the same values (a harmless repeat) or conflict."""

    def describe(self) -> str:
        """Describe the duplicate for a person."""
        what = "identical" if self.identical else "conflicting"
        return f"{len(self.rows)} {what} rows {list(self.rows)} at {_fmt_ts(self.timestamp)}"


@dataclass(frozen=True, slots=True)
class Action:
    """One change applied by a policy: a dropped row or a filled gap."""

    kind: str
    """Problem kind that caused it (`gap`, `duplicate`, `non_finite`, ...)."""
    action: Literal["dropped", "filled"]
    timestamp: pd.Timestamp | None
    """The dropped row's timestamp, or for a gap the last timestamp before it."""
    row: int | None
    """The dropped row's number in the file; None for a filled gap or a gap-drop range."""
    count: int
    """Rows dropped or bars filled by this action."""
    detail: str


@dataclass(frozen=True, slots=True)
class Problem:
    """All findings of one kind in one file, with their severity and policy."""

    kind: str
    severity: Severity
    policy: str
    count: int
    examples: tuple[str, ...]
    """Descriptions of the first few occurrences (row/timestamp and what is wrong)."""


@dataclass(frozen=True)
class ValidationReport:
    """What validation found in one file, and (after `apply_policy`) what was done about it."""

    source: str
    rows: int
    first: pd.Timestamp | None
    last: pd.Timestamp | None
    timeframe: str | None
    input_sorted: bool
    policy: Policy
    gaps: tuple[Gap, ...] = ()
    duplicates: tuple[Duplicate, ...] = ()
    findings: tuple[Finding, ...] = ()
    actions: tuple[Action, ...] = ()
    output_rows: int | None = None
    """Rows in the cleaned frame, once a policy was applied."""

    @property
    def missing_bars(self) -> int:
        """Total bars missing across all gaps."""
        return sum(gap.missing_bars for gap in self.gaps)

    @property
    def largest_gap(self) -> Gap | None:
        """The gap with the most missing bars (earliest on ties), or None."""
        return max(self.gaps, key=lambda gap: gap.missing_bars, default=None)

    def counts(self) -> dict[str, int]:
        """Return the number of occurrences of each problem kind found."""
        result: dict[str, int] = {}
        if self.rows == 0:
            result["empty"] = 1
        for finding in self.findings:
            result[finding.kind] = result.get(finding.kind, 0) + 1
        if self.duplicates:
            result["duplicate"] = len(self.duplicates)
        if self.gaps:
            result["gap"] = len(self.gaps)
        return result

    @property
    def problems(self) -> tuple[Problem, ...]:
        """Summarise the findings per kind, errors first."""
        problems: list[Problem] = []
        for kind, count in self.counts().items():
            policy = self.policy.for_kind(kind)
            problems.append(
                Problem(
                    kind=kind,
                    severity="error" if policy == "error" else "warning",
                    policy=policy,
                    count=count,
                    examples=tuple(self._examples(kind)),
                )
            )
        order = {kind: i for i, kind in enumerate(KINDS)}
        problems.sort(key=lambda p: (p.severity != "error", order[p.kind]))
        return tuple(problems)

    def _examples(self, kind: str, limit: int = MESSAGE_EXAMPLES) -> list[str]:
        if kind == "empty":
            return ["the file holds no candles"]
        if kind == "gap":
            largest = sorted(self.gaps, key=lambda gap: -gap.missing_bars)[:limit]
            return [gap.describe() for gap in largest]
        if kind == "duplicate":
            return [dup.describe() for dup in self.duplicates[:limit]]
        examples: list[str] = []
        for finding in self.findings:
            if finding.kind == kind:
                examples.append(finding.describe())
                if len(examples) == limit:
                    break
        return examples

    @property
    def errors(self) -> tuple[Problem, ...]:
        """The problems whose policy is `error`."""
        return tuple(p for p in self.problems if p.severity == "error")

    @property
    def ok(self) -> bool:
        """Whether no problem has error severity."""
        return not self.errors

    def error_message(self) -> str:
        """Describe every error-severity problem, naming the file, rows and timestamps."""
        lines = [f"{self.source}: {len(self.errors)} data problem(s)"]
        for problem in self.errors:
            lines.append(f"  {_problem_line(problem)}")
        return "\n".join(lines)

    def raise_for_errors(self) -> None:
        """Raise DataError describing the errors, if there are any."""
        if not self.ok:
            raise DataError(self.error_message())

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of the report."""
        largest = self.largest_gap
        return {
            "source": self.source,
            "rows": self.rows,
            "first": _iso(self.first),
            "last": _iso(self.last),
            "timeframe": self.timeframe,
            "input_sorted": self.input_sorted,
            "ok": self.ok,
            "policy": {name: getattr(self.policy, name) for name in Policy.__dataclass_fields__},
            "gaps": {
                "count": len(self.gaps),
                "missing_bars": self.missing_bars,
                "largest": None
                if largest is None
                else {"after": _iso(largest.after), "missing_bars": largest.missing_bars},
                "where": [[_iso(gap.after), gap.missing_bars] for gap in self.gaps],
            },
            "duplicates": {
                "count": len(self.duplicates),
                "identical": sum(dup.identical for dup in self.duplicates),
                "conflicting": sum(not dup.identical for dup in self.duplicates),
                "which": [
                    {"timestamp": _iso(dup.timestamp), "rows": list(dup.rows), "identical": dup.identical}
                    for dup in self.duplicates
                ],
            },
            "problems": [
                {
                    "kind": p.kind,
                    "severity": p.severity,
                    "policy": p.policy,
                    "count": p.count,
                    "examples": list(p.examples),
                }
                for p in self.problems
            ],
            "findings": [
                {
                    "kind": f.kind,
                    "row": f.row,
                    "timestamp": _iso(f.timestamp),
                    "column": f.column,
                    "detail": f.detail,
                }
                for f in self.findings
            ],
            "actions": [
                {
                    "kind": a.kind,
                    "action": a.action,
                    "timestamp": _iso(a.timestamp),
                    "row": a.row,
                    "count": a.count,
                    "detail": a.detail,
                }
                for a in self.actions
            ],
            "output_rows": self.output_rows,
        }

    def to_json(self) -> str:
        """Return the report as a JSON string."""
        return json.dumps(self.to_dict())


def _problem_line(problem: Problem) -> str:
    more = problem.count - len(problem.examples)
    tail = f"; and {more} more" if more > 0 else ""
    return f"{problem.kind} x{problem.count} (policy {problem.policy}): {'; '.join(problem.examples)}{tail}"


def _fmt_ts(ts: pd.Timestamp | None) -> str:
    return "NaT" if ts is None else str(ts)


def _iso(ts: pd.Timestamp | None) -> str | None:
    return None if ts is None else ts.isoformat()


def find_gaps(grid_ts: npt.NDArray[np.int64], step_us: int) -> tuple[Gap, ...]:
    """Return the gaps between consecutive on-grid timestamps (sorted, distinct, in microseconds)."""
    diffs = np.diff(grid_ts)
    where = np.flatnonzero(diffs > step_us)
    return tuple(
        Gap(
            after=pd.Timestamp(int(grid_ts[i]), unit="us", tz="UTC"),
            before=pd.Timestamp(int(grid_ts[i + 1]), unit="us", tz="UTC"),
            missing_bars=int(diffs[i] // step_us) - 1,
        )
        for i in where
    )


def summarise_actions(actions: Iterable[Action]) -> Mapping[tuple[str, str], tuple[int, list[Action]]]:
    """Group actions by (kind, action) with their total count."""
    groups: dict[tuple[str, str], tuple[int, list[Action]]] = {}
    for action in actions:
        total, items = groups.get((action.kind, action.action), (0, []))
        items.append(action)
        groups[(action.kind, action.action)] = (total + action.count, items)
    return groups
