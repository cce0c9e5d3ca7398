"""Command line for market data: `check` candle files, `download` history, draw a `synthetic` market.

    ai-trading data check data/BTC_USDT-1h.parquet --gaps error       (also: python -m adapters.data.cli ...)
    ai-trading data check data/*.feather --json
    ai-trading data download --exchange binance --symbol BTC/USDT --timeframe 1h \\
        --since 2024-01-01 --out data/BTC_USDT-1h.parquet
    ai-trading data synthetic --market regime --bars 30000 --seed 1 --out regime.parquet

`check` prints one validation report per file (a table, or JSON with `--json`) and exits 1 when any
file is unreadable or has an error-severity problem under the chosen policies, 0 otherwise. Exit 2 on
bad arguments. Reports go to stdout, logs to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, cast

import pandas as pd
import structlog

from adapters.data.cleaning import apply_policy
from adapters.data.frame import timeframe_to_timedelta
from adapters.data.ohlcv import read_ohlcv_raw
from adapters.data.policy import DEFAULT_GAPS, GAP_POLICIES, ROW_POLICIES, ZERO_VOLUME_POLICIES, Policy
from adapters.data.report import ValidationReport
from adapters.data.sample import is_known_problem
from adapters.data.synthetic import MARKETS, SyntheticSpec, write_synthetic
from adapters.data.validation import validate_ohlcv
from adapters.errors import AdapterError, DataError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def _timeframe(text: str) -> str:
    try:
        timeframe_to_timedelta(text)
    except DataError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return text


def parse_date(text: str) -> datetime:
    """Parse a date or ISO-8601 time (naive means UTC) into an aware UTC datetime."""
    try:
        stamp = pd.Timestamp(text)
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"not a date or ISO-8601 time: {text!r}") from e
    if pd.isna(stamp):
        raise argparse.ArgumentTypeError(f"not a date or ISO-8601 time: {text!r}")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.to_pydatetime().astimezone(UTC)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with the `check` and `download` subcommands."""
    parser = argparse.ArgumentParser(
        prog="ai-trading data",
        description=__doc__.splitlines()[0],
        epilog="also: ai-trading data lookahead [--file F] [--card best_model.json] [--feature MODULE:FUNCTION] "
        "checks features for look-ahead and recursion (its --help has the options)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check", help="validate candle files and print a report per file")
    check.add_argument("files", nargs="+", type=Path, metavar="FILE", help="candle files (parquet, feather, csv, json)")
    check.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    check.add_argument("--timeframe", type=_timeframe, help="bar size like 1h (default: from the name or the data)")
    check.add_argument(
        "--gaps",
        choices=GAP_POLICIES,
        default=DEFAULT_GAPS,
        help=f"policy for missing bars (default {DEFAULT_GAPS}, the loader's: reported, kept; error fails on any)",
    )
    check.add_argument("--duplicates", choices=ROW_POLICIES, default="error", help="policy for repeated timestamps")
    check.add_argument(
        "--invalid",
        choices=ROW_POLICIES,
        default="error",
        help="policy for NaN/inf, bad timestamps, prices <= 0, high < low, open/close outside the range, off-grid",
    )
    check.add_argument("--zero-volume", choices=ZERO_VOLUME_POLICIES, default="ignore", help="policy for volume == 0")
    check.add_argument("--examples", type=int, default=3, help="occurrences to show per problem in the table")

    download = commands.add_parser("download", help="download OHLCV history from an exchange into a file")
    download.add_argument("--exchange", default="binance", help="ccxt exchange id (default binance)")
    download.add_argument("--symbol", required=True, help="market symbol like BTC/USDT")
    download.add_argument("--timeframe", type=_timeframe, default="1h", help="bar size (default 1h)")
    download.add_argument("--since", type=parse_date, required=True, help="first bar, date or ISO time (UTC)")
    download.add_argument("--until", type=parse_date, help="end (exclusive), date or ISO time (UTC); default now")
    download.add_argument("--out", type=Path, required=True, help="output file (.parquet, .feather, .csv, .json)")
    download.add_argument("--sandbox", action="store_true", help="use the exchange's sandbox/testnet")
    download.add_argument(
        "--api-url",
        default=None,
        help="send the exchange's REST calls to this base URL (a mirror or a local test server)",
    )
    download.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )
    synthetic = commands.add_parser(
        "synthetic",
        help="write a synthetic market with a known answer: a planted edge (regime) or none (random-walk)",
        description="Draw a synthetic 1h market (adapters.data.synthetic) and write it as a candle file that "
        "`ai-trading train data.path=FILE` takes: `regime` has an edge a policy can learn (the wicks tell the next "
        "bar's drift), `random-walk` looks the same and has none. Train on both: a pipeline that finds no edge in "
        "the first, or one in the second, cannot be believed on real candles.",
    )
    defaults = SyntheticSpec()
    synthetic.add_argument("--market", choices=MARKETS, default=defaults.market, help="default regime")
    synthetic.add_argument("--bars", type=int, default=defaults.bars, help=f"candles (default {defaults.bars})")
    synthetic.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default 0)")
    synthetic.add_argument("--drift", type=float, default=defaults.drift, help="per-bar drift in a regime")
    synthetic.add_argument("--volatility", type=float, default=defaults.volatility, help="per-bar noise std")
    synthetic.add_argument("--regime-bars", type=float, default=defaults.regime_bars, help="mean regime length")
    synthetic.add_argument("--signal", type=float, default=defaults.signal, help="wick tilt in [0, 1)")
    synthetic.add_argument("--timeframe", type=_timeframe, default=defaults.timeframe, help="bar size (default 1h)")
    synthetic.add_argument("--out", type=Path, required=True, help="output file (.parquet or .feather)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the data command line and return its exit code."""
    if not structlog.is_configured():
        _configure_logging()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad arguments, 0 on --help
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if args.command == "check":
        return _check(args)
    if args.command == "synthetic":
        return _synthetic(args)
    if args.until is not None and args.until <= args.since:
        parser.print_usage(sys.stderr)
        _err(f"error: --until {args.until.isoformat()} must be after --since {args.since.isoformat()}")
        return EXIT_USAGE
    return _download(args)


def _synthetic(args: argparse.Namespace) -> int:
    try:
        # The options are named after the spec's fields (--regime-bars: regime_bars); start_price has none.
        spec = SyntheticSpec(**{f.name: getattr(args, f.name) for f in fields(SyntheticSpec) if hasattr(args, f.name)})
        frame = write_synthetic(spec, str(args.out))
    except DataError as e:
        _err(f"ai-trading data synthetic: error: {e}")
        return EXIT_USAGE
    except OSError as e:
        _err(f"ai-trading data synthetic: error: cannot write {args.out}: {e.strerror or e}")
        return EXIT_ERROR
    _out(
        f"{args.out}: {len(frame):,} {spec.timeframe} candles of a {spec.market} market (seed {spec.seed}), "
        f"{frame.index[0]} .. {frame.index[-1]}; train on it with: ai-trading train data.path={args.out}"
    )
    return EXIT_OK


def check_file(path: Path, *, policy: Policy, timeframe: str | None = None) -> dict[str, Any]:
    """Validate one file and return its report as a dict (with `error` set when it cannot be used)."""
    try:
        raw = read_ohlcv_raw(path)
    except DataError as e:
        return {"source": str(path), "ok": False, "error": str(e), "report": None}
    report = validate_ohlcv(raw, source=str(path), timeframe=timeframe, policy=policy)
    error: str | None = None
    if report.ok:
        try:
            report = apply_policy(raw, report).report
        except DataError as e:
            error = str(e)
    else:
        error = report.error_message()
    return {"source": str(path), "ok": error is None, "error": error, "report": report}


def _check(args: argparse.Namespace) -> int:
    policy = Policy.rows(args.invalid, gaps=args.gaps, duplicates=args.duplicates, zero_volume=args.zero_volume)
    results = [check_file(path, policy=policy, timeframe=args.timeframe) for path in args.files]
    all_ok = all(result["ok"] for result in results)
    if args.json:
        files = []
        for result in results:
            report: ValidationReport | None = result["report"]
            entry: dict[str, Any] = report.to_dict() if report is not None else {"source": result["source"]}
            entry["ok"] = result["ok"]
            problems = report.problems if report is not None else ()
            entry["known_problems"] = [
                p.kind
                for p in problems
                if p.severity != "error" and is_known_problem(result["source"], p.kind, p.count)
            ]
            entry["error"] = result["error"]
            files.append(entry)
        _out(json.dumps({"ok": all_ok, "files": files}))
    else:
        for result in results:
            _out(format_report(result, examples=args.examples))
        bad = sum(not result["ok"] for result in results)
        _out(f"{len(results)} file(s) checked: {len(results) - bad} ok, {bad} with errors")
    return EXIT_OK if all_ok else EXIT_ERROR


def _short_ts(ts: pd.Timestamp | None) -> str:
    return "-" if ts is None else ts.strftime("%Y-%m-%d %H:%M")


def format_report(result: dict[str, Any], *, examples: int = 3) -> str:
    """Render one file's check result as a human-readable block."""
    report: ValidationReport | None = result["report"]
    lines = [str(result["source"])]
    if report is None:
        lines.append(f"  unreadable: {result['error']}")
        lines.append("  result      ERROR")
        return "\n".join(lines) + "\n"
    order = "sorted" if report.input_sorted else "NOT sorted (will be sorted)"
    lines.append(f"  rows        {report.rows:,}")
    lines.append(
        f"  span        {_short_ts(report.first)} → {_short_ts(report.last)}  "
        f"(timeframe {report.timeframe or 'unknown'}, {order})"
    )
    largest = report.largest_gap
    gap_text = f"{len(report.gaps):,}"
    if largest is not None:
        gap_text += (
            f" ({report.missing_bars:,} missing bars;"
            f" largest {largest.missing_bars:,} after {_short_ts(largest.after)})"
        )
    lines.append(f"  gaps        {gap_text}")
    identical = sum(dup.identical for dup in report.duplicates)
    conflicting = len(report.duplicates) - identical
    lines.append(f"  duplicates  {len(report.duplicates):,} ({identical} identical, {conflicting} conflicting)")
    if report.problems:
        lines.append(f"  {'severity':<9} {'problem':<20} {'count':>8}  {'policy':<7} where")
        for problem in report.problems:
            shown = list(problem.examples[:examples])
            more = problem.count - len(shown)
            where = "; ".join(shown) + (f"; and {more} more" if more > 0 else "")
            known = problem.severity != "error" and is_known_problem(report.source, problem.kind, problem.count)
            severity = "ERROR" if problem.severity == "error" else "info" if known else "warning"
            if known:
                where = f"(known, see adapters/bundled/README.md) {where}"
            lines.append(f"  {severity:<9} {problem.kind:<20} {problem.count:>8,}  {problem.policy:<7} {where}")
    else:
        lines.append("  no problems found")
    if report.actions:
        dropped = sum(a.count for a in report.actions if a.action == "dropped")
        filled = sum(a.count for a in report.actions if a.action == "filled")
        lines.append(
            f"  applied     dropped {dropped:,} row(s), filled {filled:,} bar(s) → {report.output_rows:,} rows"
        )
    if result["error"] is not None and report.ok:
        lines.append(f"  error       {result['error']}")
    lines.append(f"  result      {'ok' if result['ok'] else 'ERROR'}")
    return "\n".join(lines) + "\n"


def _download(args: argparse.Namespace) -> int:
    try:
        from adapters.ccxt.config import CcxtConfig, profile_for
        from adapters.data.download import download_ohlcv
    except ImportError as e:
        _err(f"download is unavailable: {e}")
        return EXIT_ERROR
    progress = sys.stderr.isatty() if args.progress is None else bool(args.progress)
    # Spot candles only: skip Binance's futures/margin market loading (and its signed calls).
    options = profile_for(args.exchange).options(spot_only=True)
    config = CcxtConfig(exchange_id=args.exchange, api_url_override=args.api_url, options=options)
    try:
        result = download_ohlcv(
            exchange_id=args.exchange,
            symbol=args.symbol,
            timeframe=args.timeframe,
            since=args.since,
            until=args.until,
            out=args.out,
            sandbox=args.sandbox,
            progress=progress,
            config=config,
        )
    except (AdapterError, ValueError) as e:
        _err(f"download {args.exchange} {args.symbol} {args.timeframe} failed: {e}")
        return EXIT_ERROR
    summary = {
        "out": str(result.path),
        "rows": result.rows,
        "new_rows": result.new_rows,
        "first": result.first.isoformat() if result.first else None,
        "last": result.last.isoformat() if result.last else None,
        "resumed_from": result.resumed_from.isoformat() if result.resumed_from else None,
    }
    _out(json.dumps(summary))
    return EXIT_OK


def _configure_logging() -> None:
    """Send structlog output to stderr so stdout carries only the report."""
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(cast(TextIO, _Stderr())))


class _Stderr:
    """Whatever sys.stderr is at write time (tests and callers may swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


if __name__ == "__main__":
    raise SystemExit(main())
