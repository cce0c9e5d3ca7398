"""Apply a validation policy to raw OHLCV rows: drop bad rows and duplicates, fill or cut gaps, record each change."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from adapters.data.frame import (
    COLUMNS,
    PRICE_COLUMNS,
    TIME_UNIT,
    as_raw,
    timeframe_to_timedelta,
    timestamp_from_us,
    to_us,
)
from adapters.data.policy import GapPolicy
from adapters.data.report import MESSAGE_EXAMPLES, Action, ValidationReport, find_gaps
from adapters.errors import DataError

# ffill must not turn a sparse file into a giant one; beyond this many inserted bars it refuses.
MAX_FILLED_BARS = 5_000_000


@dataclass(frozen=True)
class CleanResult:
    """The canonical frame after applying a policy, and the report listing every change."""

    frame: pd.DataFrame
    report: ValidationReport
    actions: tuple[Action, ...] = field(default=())


def apply_policy(raw: pd.DataFrame, report: ValidationReport) -> CleanResult:
    """Apply the report's policy to the raw rows and return the canonical frame plus every change.

    Raises:
        DataError: the report has error-severity problems, or dropping rows opened gaps the gap policy
            forbids, or ffill would insert more than MAX_FILLED_BARS bars.
    """
    report.raise_for_errors()
    source = report.source
    raw = as_raw(raw, source=source)
    if len(raw) == 0:
        raise DataError(f"{source}: the file holds no candles")
    policy = report.policy
    actions: list[Action] = []
    drop = np.zeros(len(raw), dtype=bool)
    seen_rows: set[int] = set()
    for finding in report.findings:
        if policy.for_kind(finding.kind) == "drop" and finding.row not in seen_rows:
            seen_rows.add(finding.row)
            drop[finding.row] = True
            actions.append(Action(finding.kind, "dropped", finding.timestamp, finding.row, 1, finding.detail))
    kept = raw[~drop]
    if policy.duplicates == "drop":
        kept, dup_actions = _drop_duplicates(kept)
        actions.extend(dup_actions)
    frame = kept.sort_values("date", kind="stable").set_index("date")
    frame.index.name = "date"
    if frame.index.has_duplicates:
        raise DataError(f"{source}: duplicate timestamps remain after applying the policy")
    if len(frame) == 0:
        raise DataError(f"{source}: no candles left after dropping {len(raw)} bad row(s)")
    if report.timeframe is not None:
        step = timeframe_to_timedelta(report.timeframe)
        frame, gap_actions = _apply_gap_policy(frame, step, policy.gaps, report)
        actions.extend(gap_actions)
    frame = _canonical(frame)
    frame.attrs["source"] = source
    if report.timeframe is not None:
        frame.attrs["timeframe"] = report.timeframe
    frame.attrs["filled_bars"] = sum(a.count for a in actions if a.action == "filled")
    final_report = replace(report, actions=tuple(actions), output_rows=len(frame))
    return CleanResult(frame=frame, report=final_report, actions=tuple(actions))


def _drop_duplicates(kept: pd.DataFrame) -> tuple[pd.DataFrame, list[Action]]:
    dup_all = kept["date"].duplicated(keep=False) & kept["date"].notna()
    if not dup_all.any():
        return kept, []
    actions: list[Action] = []
    drop_rows: list[int] = []
    for value, group in kept[dup_all].groupby("date", sort=True):
        ts = pd.Timestamp(value)  # type: ignore[arg-type]
        if len(group.drop_duplicates()) == 1:
            for row in group.index[1:]:
                drop_rows.append(int(row))
                actions.append(
                    Action("duplicate", "dropped", ts, int(row), 1, f"identical repeat of row {group.index[0]}")
                )
        else:
            for row in group.index:
                drop_rows.append(int(row))
                actions.append(
                    Action(
                        "duplicate",
                        "dropped",
                        ts,
                        int(row),
                        1,
                        f"conflicts with rows {[int(r) for r in group.index if r != row]}",
                    )
                )
    return kept.drop(index=drop_rows), actions


def _apply_gap_policy(
    frame: pd.DataFrame, step: pd.Timedelta, gaps: GapPolicy, report: ValidationReport
) -> tuple[pd.DataFrame, list[Action]]:
    step_us = int(step / pd.Timedelta(microseconds=1))
    ts = to_us(pd.DatetimeIndex(frame.index))
    found = find_gaps(ts, step_us)
    if not found or gaps == "allow":
        return frame, []
    if gaps == "error":
        # Only reachable when dropped rows opened new gaps: the report had none (else it raised).
        listed = "; ".join(gap.describe() for gap in found[:MESSAGE_EXAMPLES])
        raise DataError(f"{report.source}: dropping rows opened {len(found)} gap(s) (policy gaps=error): {listed}")
    if gaps == "ffill":
        missing = sum(gap.missing_bars for gap in found)
        if missing > MAX_FILLED_BARS:
            raise DataError(
                f"{report.source}: gaps=ffill would insert {missing} bars (limit {MAX_FILLED_BARS}); "
                "check the timeframe or use gaps=allow"
            )
        index = pd.DatetimeIndex(frame.index)
        grid = pd.date_range(index[0], index[-1], freq=step, unit=TIME_UNIT, name="date")
        filled = frame.reindex(grid)
        is_new = filled["close"].isna().to_numpy() & ~grid.isin(frame.index)
        prev_close = filled["close"].ffill()
        for name in PRICE_COLUMNS:
            filled[name] = filled[name].where(~is_new, prev_close)
        filled["volume"] = filled["volume"].where(~is_new, 0.0)
        positions = pd.DatetimeIndex(frame.index).get_indexer(pd.DatetimeIndex([gap.after for gap in found]))
        closes = frame["close"].to_numpy(dtype=np.float64)[positions]
        actions = [
            Action(
                "gap",
                "filled",
                gap.after,
                None,
                gap.missing_bars,
                f"{gap.missing_bars} flat bar(s) at close {float(close)!r}, volume 0",
            )
            for gap, close in zip(found, closes, strict=True)
        ]
        return filled, actions
    # gaps == "drop": keep the longest gap-free run (earliest on ties).
    breaks = np.concatenate(([0], np.flatnonzero(np.diff(ts) > step_us) + 1, [len(ts)]))
    lengths = np.diff(breaks)
    best = int(np.argmax(lengths))
    start, stop = int(breaks[best]), int(breaks[best + 1])
    actions = []
    if start > 0:
        actions.append(
            Action(
                "gap",
                "dropped",
                timestamp_from_us(int(ts[0])),
                None,
                start,
                f"{start} bar(s) before the longest gap-free run",
            )
        )
    if stop < len(ts):
        actions.append(
            Action(
                "gap",
                "dropped",
                timestamp_from_us(int(ts[stop])),
                None,
                len(ts) - stop,
                f"{len(ts) - stop} bar(s) after the longest gap-free run",
            )
        )
    return frame.iloc[start:stop], actions


def _canonical(frame: pd.DataFrame) -> pd.DataFrame:
    index = pd.DatetimeIndex(frame.index, name="date").as_unit(TIME_UNIT)
    data = {name: frame[name].to_numpy(dtype=np.float64) for name in COLUMNS}
    return pd.DataFrame(data, index=index, columns=list(COLUMNS))
