"""Look-ahead and recursion checks of features, as Freqtrade's `lookahead-analysis` and `recursive-analysis`.

`ai-trading data lookahead` runs them (`bot.cli` hands that subcommand to `main` here: the checks need
`bot.model.features`, which the adapters' data command may not import).

- **Look-ahead**: every feature is computed on the whole history and again on histories truncated at
  `cuts` bars spread over the data. A causal feature's value at bar t cannot change when bars after t are
  added; any value that differs between the truncated and the full computation is reported.
- **Recursion**: every feature is computed again on histories that start later (less history before each
  bar). Past its declared warm-up a feature must not depend on how much history precedes it (an
  exponential average or a cumulative sum does); any value that differs is reported with how many bars of
  history it had.

A feature function maps a candle frame (DatetimeIndex; open, high, low, close, volume) to a frame with one
column per feature on the same index, NaN where a value is not valid yet. Our own features come from
`bot.model.features` (each computed alone so its own look-back is its warm-up); user functions are loaded by
`module:function` name with a declared warm-up.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bot.model.features import FeatureSpec, candle_arrays, compute_features

FeatureFunction = Callable[[pd.DataFrame], pd.DataFrame]
"""Candles -> one column per feature, same index, NaN while not valid."""

TOLERANCE = 1e-9
"""Relative (and absolute, near zero) difference below which two values are the same (float rounding)."""


@dataclass(frozen=True)
class Finding:
    """One feature value that changed."""

    feature: str
    kind: str
    """`lookahead` (changed when later bars were added) or `recursion` (changed with more earlier history)."""
    time: str
    """The bar whose value changed (ISO time)."""
    value_full: float | None
    """The value computed on the full history."""
    value_other: float | None
    """The value computed on the truncated (look-ahead) or later-starting (recursion) history."""
    history_bars: int
    """Bars the other computation had up to and including that bar."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields."""
        return {
            "feature": self.feature,
            "kind": self.kind,
            "time": self.time,
            "value_full": self.value_full,
            "value_other": self.value_other,
            "history_bars": self.history_bars,
        }


@dataclass
class FeatureVerdict:
    """What the checks found for one feature."""

    feature: str
    warmup_bars: int
    lookahead_values: int = 0
    """Values that changed when future bars were added (over all cuts)."""
    recursion_values: int = 0
    """Values past the warm-up that changed with the amount of earlier history."""
    examples: list[Finding] = field(default_factory=list)

    @property
    def is_clean(self) -> bool:
        """No look-ahead and no recursion found."""
        return self.lookahead_values == 0 and self.recursion_values == 0


@dataclass
class AuditReport:
    """The checks over one candle history."""

    rows: int
    cuts: list[int]
    starts: list[int]
    verdicts: dict[str, FeatureVerdict]

    @property
    def is_clean(self) -> bool:
        """Every feature passed both checks."""
        return all(v.is_clean for v in self.verdicts.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe report."""
        return {
            "ok": self.is_clean,
            "rows": self.rows,
            "cuts": self.cuts,
            "starts": self.starts,
            "features": {
                name: {
                    "warmup_bars": v.warmup_bars,
                    "lookahead_values": v.lookahead_values,
                    "recursion_values": v.recursion_values,
                    "ok": v.is_clean,
                    "examples": [f.to_dict() for f in v.examples],
                }
                for name, v in self.verdicts.items()
            },
        }


def spec_features(spec: FeatureSpec) -> tuple[FeatureFunction, dict[str, int]]:
    """Our features of `spec` as a feature function, each computed alone, and their warm-ups."""
    singles = {name: FeatureSpec(names=(name,), window=1, params=dict(spec.params)) for name in spec.names}

    def compute(frame: pd.DataFrame) -> pd.DataFrame:
        arrays = candle_arrays(frame)
        columns: dict[str, np.ndarray[Any, Any]] = {}
        for name, single in singles.items():
            values, valid = compute_features(single, *arrays)
            columns[name] = np.where(valid, values[:, 0], np.nan)
        return pd.DataFrame(columns, index=frame.index)

    return compute, {name: single.warmup_bars for name, single in singles.items()}


def load_feature_function(reference: str) -> FeatureFunction:
    """Import `module:function`; ValueError names the problem."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"--feature {reference!r}: expected MODULE:FUNCTION")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--feature {reference!r}: cannot import {module_name}: {e}") from e
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ValueError(f"--feature {reference!r}: {module_name} has no function {attribute}")

    def compute(frame: pd.DataFrame) -> pd.DataFrame:
        result = function(frame)
        if isinstance(result, pd.Series):
            result = result.to_frame(name=str(result.name or attribute))
        if not isinstance(result, pd.DataFrame) or not result.index.equals(frame.index):
            raise ValueError(f"--feature {reference!r} must return a Series or DataFrame on the candles' index")
        return result.astype(float)

    return compute


def _positions(low: int, high: int, count: int) -> list[int]:
    if high <= low:
        return []
    return sorted({int(p) for p in np.linspace(low, high, num=min(count, high - low + 1))})


def _differs(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any], tolerance: float) -> np.ndarray[Any, Any]:
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    with np.errstate(invalid="ignore"):
        close = np.abs(a - b) <= tolerance * np.maximum(1.0, np.maximum(np.abs(a), np.abs(b)))
    differs: np.ndarray[Any, Any] = (nan_a != nan_b) | (~nan_a & ~nan_b & ~close)
    return differs


def audit(
    frame: pd.DataFrame,
    functions: Sequence[tuple[FeatureFunction, Mapping[str, int]]],
    *,
    cuts: int = 20,
    starts: int = 5,
    tolerance: float = TOLERANCE,
    examples: int = 3,
) -> AuditReport:
    """Run the look-ahead and recursion checks of every feature of `functions` over `frame`."""
    n = len(frame)
    longest = max((w for _, warmups in functions for w in warmups.values()), default=0)
    if n < 2 * longest + 10:
        raise ValueError(f"{n} candles are too few to check features with a warm-up of {longest} bars")
    cut_rows = _positions(longest + 1, n - 2, cuts)
    start_rows = _positions(1, n - longest - 10, starts)
    verdicts: dict[str, FeatureVerdict] = {}
    for compute, warmups in functions:
        full = compute(frame)
        for name in full.columns:
            verdicts[str(name)] = FeatureVerdict(str(name), int(warmups.get(str(name), 0)))
        index = frame.index

        def record(
            name: str,
            kind: str,
            rows: np.ndarray[Any, Any],
            other: pd.Series,
            offset: int,
            full: pd.DataFrame = full,
            index: pd.Index = index,
        ) -> None:
            verdict = verdicts[name]
            if kind == "lookahead":
                verdict.lookahead_values += len(rows)
            else:
                verdict.recursion_values += len(rows)
            for row in rows[: max(0, examples - len(verdict.examples))]:
                full_value, other_value = full[name].iloc[row], other.iloc[row - offset]
                verdict.examples.append(
                    Finding(
                        name,
                        kind,
                        pd.Timestamp(index[row]).isoformat(),
                        None if np.isnan(full_value) else float(full_value),
                        None if np.isnan(other_value) else float(other_value),
                        int(row - offset + 1),
                    )
                )

        for cut in cut_rows:  # look-ahead: bars 0..cut only
            truncated = compute(frame.iloc[: cut + 1])
            for name in full.columns:
                a = full[name].to_numpy(dtype=float)[: cut + 1]
                b = truncated[name].to_numpy(dtype=float)
                record(str(name), "lookahead", np.flatnonzero(_differs(a, b, tolerance)), truncated[name], 0)
        for start in start_rows:  # recursion: bars start..n-1, compared past each feature's warm-up
            later = compute(frame.iloc[start:])
            for name in full.columns:
                warmup = verdicts[str(name)].warmup_bars
                a = full[name].to_numpy(dtype=float)[start + warmup :]
                b = later[name].to_numpy(dtype=float)[warmup:]
                rows = np.flatnonzero(_differs(a, b, tolerance)) + start + warmup
                record(str(name), "recursion", rows, later[name], start)
    return AuditReport(n, cut_rows, start_rows, verdicts)


def format_audit(report: AuditReport, source: str) -> str:
    """The report as a table with the first changed values of each failing feature."""
    lines = [
        f"{source}: {report.rows:,} candles; look-ahead checked at {len(report.cuts)} truncation points, "
        f"recursion with {len(report.starts)} later starts",
        f"  {'feature':<24} {'warm-up':>7} {'look-ahead':>11} {'recursion':>10}  result",
    ]
    for name, v in report.verdicts.items():
        result = "ok" if v.is_clean else "FAIL"
        lines.append(f"  {name:<24} {v.warmup_bars:>7} {v.lookahead_values:>11,} {v.recursion_values:>10,}  {result}")
    for v in report.verdicts.values():
        for f in v.examples:
            what = (
                "changed when later candles were added"
                if f.kind == "lookahead"
                else f"depends on earlier history beyond its warm-up of {v.warmup_bars} bars"
            )
            lines.append(
                f"  {f.feature} at {f.time} {what}: {f.value_full} with the full history, {f.value_other} with "
                f"{f.history_bars} bars"
            )
    bad = sum(not v.is_clean for v in report.verdicts.values())
    lines.append(f"{len(report.verdicts)} feature(s) checked: {len(report.verdicts) - bad} ok, {bad} failed")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line of `ai-trading data lookahead`."""
    parser = argparse.ArgumentParser(
        prog="ai-trading data lookahead",
        description="Check features for look-ahead (a value that changes when later candles are added) and "
        "recursion (a value that depends on how much history precedes it, beyond its warm-up). Exit 0 when "
        "every feature passes, 1 when one fails, 2 for bad arguments.",
    )
    parser.add_argument("--file", type=Path, help="candle file (default: the bundled BTC/USDT 1h candles)")
    parser.add_argument("--card", type=Path, help="a model card (best_model.json): check the features it uses")
    parser.add_argument("--window", type=int, default=FeatureSpec().window, help="observation window (no --card)")
    parser.add_argument(
        "--feature", action="append", metavar="MODULE:FUNCTION", help="also check a function of your own (repeatable)"
    )
    parser.add_argument("--warmup", type=int, default=0, help="the declared warm-up of --feature functions, in bars")
    parser.add_argument("--no-builtin", action="store_true", help="check only the --feature functions")
    parser.add_argument("--cuts", type=int, default=20, help="truncation points of the look-ahead check")
    parser.add_argument("--starts", type=int, default=5, help="later starts of the recursion check")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `ai-trading data lookahead`; 0 clean, 1 a feature failed or bad input, 2 bad arguments."""
    import json
    import sys

    from adapters.data.ohlcv import load_ohlcv
    from adapters.data.sample import sample_path
    from adapters.errors import DataError

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.cuts < 1 or args.starts < 1 or args.warmup < 0:
        sys.stderr.write("ai-trading data lookahead: --cuts and --starts must be >= 1, --warmup >= 0\n")
        return 2
    path = args.file or sample_path()
    try:
        frame = load_ohlcv(path, gaps="allow")
        if args.card is not None:
            card = json.loads(args.card.read_text())
            spec = FeatureSpec.from_dict(card["feature_spec"])
        else:
            spec = FeatureSpec(window=args.window)
        functions: list[tuple[FeatureFunction, Mapping[str, int]]] = []
        if not args.no_builtin:
            functions.append(spec_features(spec))
        for reference in args.feature or []:
            function = load_feature_function(reference)
            names = function(frame.iloc[: min(len(frame), 4 * args.warmup + 50)]).columns
            functions.append((function, {str(name): args.warmup for name in names}))
        if not functions:
            raise ValueError("nothing to check: --no-builtin without --feature")
        report = audit(frame, functions, cuts=args.cuts, starts=args.starts)
    except (DataError, OSError, ValueError, KeyError) as e:
        sys.stderr.write(f"ai-trading data lookahead: {e}\n")
        return 1
    if args.json:
        sys.stdout.write(json.dumps({"source": str(path), **report.to_dict()}) + "\n")
    else:
        sys.stdout.write(format_audit(report, str(path)) + "\n")
    return 0 if report.is_clean else 1
