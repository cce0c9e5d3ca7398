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
`Action` per dropped row or filled gap, and the caller logs them (see `adapters.ohlcv.load_ohlcv`).

Why `gaps="error"` here but `gaps="allow"` in `load_ohlcv`: a validation run (`python -m
adapters.data_cli check`) exists to show a person every deviation, so it is strict; the real Binance
history has genuine exchange outages (28 gaps, 128 missing hours in BTC_USDT-1h), and a loader that
refused them would make the bundled data unusable, while filling them would invent prices. So loading
keeps them and logs them; pass `gaps="ffill"` or `gaps="error"` to choose otherwise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from adapters.errors import DataError

PRICE_COLUMNS = ("open", "high", "low", "close")
COLUMNS = (*PRICE_COLUMNS, "volume")
TIME_UNIT: Final = "us"
"""Resolution of the canonical DatetimeIndex (pandas 3's default unit)."""
RAW_DTYPE = f"datetime64[{TIME_UNIT}, UTC]"

RowPolicy = Literal["error", "drop"]
GapPolicy = Literal["error", "drop", "ffill", "allow"]
ZeroVolumePolicy = Literal["ignore", "drop", "error"]
Severity = Literal["error", "warning"]

ROW_POLICIES: tuple[RowPolicy, ...] = ("error", "drop")
GAP_POLICIES: tuple[GapPolicy, ...] = ("error", "drop", "ffill", "allow")
ZERO_VOLUME_POLICIES: tuple[ZeroVolumePolicy, ...] = ("ignore", "drop", "error")

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TIMEFRAME_RE = re.compile(r"^(\d+)([smhdw])$")
_TIMEFRAME_IN_NAME_RE = re.compile(r"(?<![A-Za-z0-9])(\d+)([smhdw])(?![A-Za-z0-9])")
# ffill must not turn a sparse file into a giant one; beyond this many inserted bars it refuses.
MAX_FILLED_BARS = 5_000_000
# How many examples an error message lists before "and N more".
MESSAGE_EXAMPLES = 5


def timeframe_to_timedelta(timeframe: str) -> pd.Timedelta:
    """Convert a ccxt-style timeframe ("1m", "5m", "1h", "1d", "1w") to a Timedelta."""
    match = _TIMEFRAME_RE.match(timeframe.strip()) if isinstance(timeframe, str) else None
    if match is None or int(match.group(1)) <= 0:
        raise DataError(f"unknown timeframe {timeframe!r}: expected a count and a unit s/m/h/d/w, like '5m'")
    return pd.Timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def timedelta_to_timeframe(step: pd.Timedelta) -> str:
    """Convert a Timedelta to the largest whole ccxt-style unit ("1h", "5m"); sub-second steps use "ms"."""
    total_us = int(step / pd.Timedelta(microseconds=1))
    if total_us <= 0:
        raise DataError(f"timeframe must be positive, was {step}")
    for unit in ("w", "d", "h", "m", "s"):
        unit_us = _UNIT_SECONDS[unit] * 1_000_000
        if total_us % unit_us == 0:
            return f"{total_us // unit_us}{unit}"
    return f"{total_us / 1000:g}ms"


def timeframe_from_name(name: str) -> str | None:
    """Return the timeframe token in a file name like `BTC_USDT-1h.parquet`, or None."""
    tokens = _TIMEFRAME_IN_NAME_RE.findall(name)
    return f"{tokens[0][0]}{tokens[0][1]}" if len(tokens) == 1 else None


def infer_timeframe(frame: pd.DataFrame | pd.DatetimeIndex | pd.Series) -> pd.Timedelta:
    """Return the most common spacing between consecutive distinct timestamps."""
    times: pd.Index | pd.Series
    if isinstance(frame, pd.DataFrame):
        times = frame.index if "date" not in frame.columns else pd.DatetimeIndex(frame["date"])
    else:
        times = frame
    values, _ = _unique_counts(_to_us(pd.DatetimeIndex(times)))
    values = values[values != _NAT]
    if len(values) < 2:
        raise DataError(f"cannot infer a timeframe from {len(values)} distinct timestamp(s); pass timeframe=")
    diffs = np.diff(values)
    steps, counts = _unique_counts(diffs)
    # Ties go to the smaller step: with sparse data the true bar is the smallest common spacing.
    return pd.Timedelta(microseconds=int(steps[np.argmax(counts)]))


_NAT = np.iinfo(np.int64).min


def _unique_counts(values: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Return sorted unique values and their counts (sort-based: numpy's hash path is slow here)."""
    ordered = np.sort(values)
    if len(ordered) == 0:
        return ordered, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    counts = np.diff(np.concatenate((starts, [len(ordered)])))
    return ordered[starts], counts.astype(np.int64)


def _to_us(times: pd.DatetimeIndex | pd.Series) -> npt.NDArray[np.int64]:
    index = pd.DatetimeIndex(times)
    if index.tz is None:
        index = index.tz_localize("UTC")
    return np.asarray(index.as_unit(TIME_UNIT).asi8, dtype=np.int64)


@dataclass(frozen=True)
class Policy:
    """What to do with each kind of problem (see the module docstring)."""

    gaps: GapPolicy = "error"
    """Missing bars between timestamps: error, drop (keep the longest gap-free run), ffill, allow."""
    duplicates: RowPolicy = "error"
    """Rows sharing a timestamp: error or drop (identical: keep first; conflicting: drop all)."""
    non_finite: RowPolicy = "error"
    """NaN/inf values and missing or unparseable timestamps."""
    non_positive: RowPolicy = "error"
    """Prices ≤ 0 and negative volume."""
    high_low: RowPolicy = "error"
    """Bars whose high is below their low."""
    out_of_range: RowPolicy = "error"
    """Bars whose open or close lies outside [low, high]."""
    misaligned: RowPolicy = "error"
    """Timestamps off the timeframe's grid."""
    zero_volume: ZeroVolumePolicy = "ignore"
    """Bars with zero volume: ignore (reported as a warning), drop, or error."""

    def __post_init__(self) -> None:
        for name in ("duplicates", "non_finite", "non_positive", "high_low", "out_of_range", "misaligned"):
            _check_choice(name, getattr(self, name), ROW_POLICIES)
        _check_choice("gaps", self.gaps, GAP_POLICIES)
        _check_choice("zero_volume", self.zero_volume, ZERO_VOLUME_POLICIES)

    def for_kind(self, kind: str) -> str:
        """Return the policy that applies to a problem kind."""
        if kind == "empty":
            return "error"
        return str(getattr(self, _POLICY_FIELD[kind]))

    @classmethod
    def rows(cls, policy: RowPolicy, **overrides: Any) -> Policy:
        """Build a policy applying one row policy to every row-level corruption kind."""
        fields: dict[str, Any] = dict.fromkeys(
            ("non_finite", "non_positive", "high_low", "out_of_range", "misaligned"), policy
        )
        fields.update(overrides)
        return cls(**fields)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"policy {name}={value!r} is not one of {', '.join(choices)}")


_POLICY_FIELD = {
    "bad_timestamp": "non_finite",
    "non_finite": "non_finite",
    "non_positive_price": "non_positive",
    "negative_volume": "non_positive",
    "high_below_low": "high_low",
    "open_outside_range": "out_of_range",
    "close_outside_range": "out_of_range",
    "misaligned": "misaligned",
    "duplicate": "duplicates",
    "zero_volume": "zero_volume",
    "gap": "gaps",
}
KINDS = ("empty", *_POLICY_FIELD)


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


def _ts(value_us: int) -> pd.Timestamp | None:
    if value_us == _NAT:
        return None
    return pd.Timestamp(value_us, unit="us", tz="UTC")


def as_raw(frame: pd.DataFrame, *, source: str = "<frame>") -> pd.DataFrame:
    """Return raw rows (RangeIndex, `date` column, float64 OHLCV) from a raw or canonical frame."""
    if "date" in frame.columns:
        dates = frame["date"]
    elif isinstance(frame.index, pd.DatetimeIndex):
        dates = pd.Series(frame.index, name="date")
    else:
        raise DataError(f"{source}: no `date` column or DatetimeIndex; columns are {list(frame.columns)}")
    missing = [name for name in COLUMNS if name not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; columns are {list(frame.columns)}")
    if not isinstance(dates.dtype, pd.DatetimeTZDtype) and not pd.api.types.is_datetime64_dtype(dates.dtype):
        raise DataError(f"{source}: `date` must be datetime64, was {dates.dtype}")
    index = pd.DatetimeIndex(dates)
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    data: dict[str, Any] = {"date": index.as_unit(TIME_UNIT)}
    for name in COLUMNS:
        data[name] = pd.to_numeric(pd.Series(frame[name]).reset_index(drop=True), errors="coerce").astype("float64")
    raw = pd.DataFrame(data)
    raw.index = pd.RangeIndex(len(raw))
    return raw


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
    ts = _to_us(raw["date"])
    valid_ts = ts != _NAT
    values = {name: raw[name].to_numpy(dtype=np.float64) for name in COLUMNS}
    findings: list[Finding] = []

    def add(kind: str, mask: npt.NDArray[np.bool_], column: str | None, detail: Any) -> None:
        for row in np.flatnonzero(mask):
            findings.append(Finding(kind, int(row), _ts(int(ts[row])), column, detail(int(row))))

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
    unique_ts, _ = _unique_counts(good_ts)
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
        gaps = _find_gaps(unique_ts[(unique_ts - phase) % step_us == 0], step_us)
    duplicates = _find_duplicates(raw, ts, valid_ts)
    findings.sort(key=lambda f: (f.row, KINDS.index(f.kind)))
    return ValidationReport(
        source=source,
        rows=n,
        first=_ts(int(unique_ts[0])) if len(unique_ts) else None,
        last=_ts(int(unique_ts[-1])) if len(unique_ts) else None,
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
    offsets, counts = _unique_counts(unique_ts % step_us)
    return int(offsets[np.argmax(counts)])


def _find_gaps(grid_ts: npt.NDArray[np.int64], step_us: int) -> tuple[Gap, ...]:
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
    ts = _to_us(pd.DatetimeIndex(frame.index))
    found = _find_gaps(ts, step_us)
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
            Action("gap", "dropped", _ts(int(ts[0])), None, start, f"{start} bar(s) before the longest gap-free run")
        )
    if stop < len(ts):
        actions.append(
            Action(
                "gap",
                "dropped",
                _ts(int(ts[stop])),
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


def summarise_actions(actions: Iterable[Action]) -> Mapping[tuple[str, str], tuple[int, list[Action]]]:
    """Group actions by (kind, action) with their total count."""
    groups: dict[tuple[str, str], tuple[int, list[Action]]] = {}
    for action in actions:
        total, items = groups.get((action.kind, action.action), (0, []))
        items.append(action)
        groups[(action.kind, action.action)] = (total + action.count, items)
    return groups
