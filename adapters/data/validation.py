"""Validate raw OHLCV rows, report every problem, and apply the chosen policy to each one.

Validation runs on the *raw* rows, in file order, before anything is sorted or de-duplicated, so a
problem that sorting would hide (a duplicate timestamp, an out-of-order row) is still seen and
reported by its row number and timestamp.

Problems and their policies (`Policy`):

| kind | found when | policies (default first) |
| --- | --- | --- |
| `empty` | the file holds no rows | always an error |
| `bad_timestamp` | a timestamp is missing or unparseable | `error`, `drop` (field `non_finite`) |
| `non_finite` | open/high/low/close/volume is NaN or ±inf | `error`, `drop` |
| `non_positive_price` | open/high/low/close ≤ 0 | `error`, `drop` (field `non_positive`) |
| `negative_volume` | volume < 0 | `error`, `drop` (field `non_positive`) |
| `high_below_low` | high < low | `error`, `drop` |
| `open_outside_range`, `close_outside_range` | open/close outside [low, high] | `error`, `drop` (`out_of_range`) |
| `misaligned` | a timestamp is off the timeframe's grid | `error`, `drop` |
| `duplicate` | several rows share a timestamp (identical or conflicting) | `error`, `drop` |
| `zero_volume` | volume == 0 | `ignore` (a warning), `drop`, `error` |
| `gap` | bars are missing between two timestamps | `error`, `allow`, `ffill`, `drop` |

A problem whose policy is `error` has severity `error`; any other policy makes it a `warning`.
`error` is the default for everything that would corrupt training. Policies mean:

- `drop` (row problems): remove the offending rows. Identical duplicates keep their first row;
  conflicting duplicates (same timestamp, different values) are all removed, since picking one would
  be a guess.
- `drop` (gaps): keep only the longest gap-free run of bars.
- `ffill` (gaps): insert a flat candle at the previous close (open = high = low = close) with volume 0
  for every missing bar.
- `allow` (gaps) / `ignore` (zero volume): keep the data as it is; the problem is still reported.

Nothing is removed or filled silently: `apply_policy` returns the cleaned frame together with one
`Action` per dropped row or filled gap, and the caller logs them (see `adapters.data.ohlcv.load_ohlcv`).

`Policy()` is strict (`gaps="error"`) for callers that build one themselves; the loader
(`load_ohlcv`) and `ai-trading data check` share one default, `DEFAULT_GAPS` = `allow`: the real Binance
history has genuine exchange outages (28 gaps, 128 missing hours in BTC_USDT-1h), a check that failed on
the very file training uses would only teach people to ignore it, and filling would invent prices. Gaps
are always reported; `--gaps error` (check) or `data.gaps=error` / `ffill` (training, daemon) choose
otherwise. Problems of the bundled files that are known and documented (`adapters.data.sample`) are
reported as information, not warnings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from adapters.data.frame import (
    COLUMNS,
    NAT,
    PRICE_COLUMNS,
    as_raw,
    infer_timeframe,
    timedelta_to_timeframe,
    timeframe_from_name,
    timeframe_to_timedelta,
    timestamp_from_us,
    to_us,
    unique_counts,
)
from adapters.data.policy import (
    KINDS,
    Policy,
)
from adapters.data.report import (
    Duplicate,
    Finding,
    Gap,
    ValidationReport,
    find_gaps,
)
from adapters.errors import DataError


def validate_ohlcv(
    frame_or_raw: pd.DataFrame,
    *,
    source: str,
    timeframe: str | pd.Timedelta | None = None,
    policy: Policy | None = None,
) -> ValidationReport:
    """Check raw OHLCV rows (file order) and report every problem; raises nothing for bad data.

    The timeframe is, in order: the one given, the token in `source`'s file name (`-1h.`), or the most
    common spacing in the data.
    """
    policy = policy or Policy()
    raw = as_raw(frame_or_raw, source=source)
    n = len(raw)
    if n == 0:
        return ValidationReport(source, 0, None, None, None, True, policy)
    ts = to_us(raw["date"])
    valid_ts = ts != NAT
    values = {name: raw[name].to_numpy(dtype=np.float64) for name in COLUMNS}
    findings: list[Finding] = []

    def add(kind: str, mask: npt.NDArray[np.bool_], column: str | None, detail: Any) -> None:
        for row in np.flatnonzero(mask):
            findings.append(Finding(kind, int(row), timestamp_from_us(int(ts[row])), column, detail(int(row))))

    bad_times: Mapping[int, str] = frame_or_raw.attrs.get("bad_times", {})
    add(
        "bad_timestamp",
        ~valid_ts,
        "date",
        lambda r: f"timestamp {bad_times.get(r, 'NaT')} is missing, unparseable or out of range",
    )
    for name in COLUMNS:
        col = values[name]
        add(
            "non_finite",
            ~np.isfinite(col),
            name,
            lambda r, name=name, col=col: f"{name} is {col[r]}",
        )
    o, h, lo, c, v = (values[name] for name in COLUMNS)
    with np.errstate(invalid="ignore"):
        for name in PRICE_COLUMNS:
            col = values[name]
            add(
                "non_positive_price",
                col <= 0,
                name,
                lambda r, name=name, col=col: f"{name} {float(col[r])!r} is not positive",
            )
        add("negative_volume", v < 0, "volume", lambda r: f"volume {float(v[r])!r} is negative")
        add("high_below_low", h < lo, "high", lambda r: f"high {float(h[r])!r} < low {float(lo[r])!r}")
        add(
            "open_outside_range",
            (o < lo) | (o > h),
            "open",
            lambda r: f"open {float(o[r])!r} outside [low {float(lo[r])!r}, high {float(h[r])!r}]",
        )
        add(
            "close_outside_range",
            (c < lo) | (c > h),
            "close",
            lambda r: f"close {float(c[r])!r} outside [low {float(lo[r])!r}, high {float(h[r])!r}]",
        )
        add("zero_volume", v == 0, "volume", lambda r: "volume is 0")

    good_ts = ts[valid_ts]
    input_sorted = bool(np.all(np.diff(good_ts) >= 0))
    unique_ts, _ = unique_counts(good_ts)
    step = _resolve_timeframe(timeframe, source, unique_ts)
    gaps: tuple[Gap, ...] = ()
    if step is not None:
        step_us = int(step / pd.Timedelta(microseconds=1))
        phase = _grid_phase(unique_ts, step_us)
        off_grid = valid_ts & ((ts - phase) % step_us != 0)
        add(
            "misaligned",
            off_grid,
            "date",
            lambda r: f"timestamp is off the {timedelta_to_timeframe(step)} grid",
        )
        gaps = find_gaps(unique_ts[(unique_ts - phase) % step_us == 0], step_us)
    duplicates = _find_duplicates(raw, ts, valid_ts)
    findings.sort(key=lambda f: (f.row, KINDS.index(f.kind)))
    return ValidationReport(
        source=source,
        rows=n,
        first=timestamp_from_us(int(unique_ts[0])) if len(unique_ts) else None,
        last=timestamp_from_us(int(unique_ts[-1])) if len(unique_ts) else None,
        timeframe=None if step is None else timedelta_to_timeframe(step),
        input_sorted=input_sorted,
        policy=policy,
        gaps=gaps,
        duplicates=duplicates,
        findings=tuple(findings),
    )


def _resolve_timeframe(
    timeframe: str | pd.Timedelta | None, source: str, unique_ts: npt.NDArray[np.int64]
) -> pd.Timedelta | None:
    if isinstance(timeframe, pd.Timedelta):
        if timeframe <= pd.Timedelta(0):
            raise DataError(f"{source}: timeframe must be positive, was {timeframe}")
        return timeframe
    if timeframe is not None:
        return timeframe_to_timedelta(timeframe)
    from_name = timeframe_from_name(source.replace("\\", "/").rsplit("/", 1)[-1])
    if from_name is not None:
        return timeframe_to_timedelta(from_name)
    if len(unique_ts) < 2:
        return None
    return infer_timeframe(pd.DatetimeIndex(pd.to_datetime(unique_ts, unit="us", utc=True)))


def _grid_phase(unique_ts: npt.NDArray[np.int64], step_us: int) -> int:
    """Return the most common offset of the timestamps within a step: the grid they are meant to be on."""
    offsets, counts = unique_counts(unique_ts % step_us)
    return int(offsets[np.argmax(counts)])


def _find_duplicates(
    raw: pd.DataFrame, ts: npt.NDArray[np.int64], valid_ts: npt.NDArray[np.bool_]
) -> tuple[Duplicate, ...]:
    dup_mask = pd.Series(ts).duplicated(keep=False).to_numpy() & valid_ts
    if not dup_mask.any():
        return ()
    rows = np.flatnonzero(dup_mask)
    sub = raw.iloc[rows]
    result: list[Duplicate] = []
    for value, group in sub.groupby(ts[rows], sort=True):
        identical = len(group.drop_duplicates()) == 1
        result.append(
            Duplicate(
                timestamp=pd.Timestamp(int(value), unit="us", tz="UTC"),  # type: ignore[call-overload]
                rows=tuple(int(r) for r in group.index),
                identical=identical,
            )
        )
    return tuple(result)
