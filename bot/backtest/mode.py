"""The daemon's backtest mode: replay candles from ``data.path`` through the decision core and the paper venue.

Replays ``[bot.start, bot.end)`` (`bot.backtest.run`); writes a run directory (config, equity curve, trades, summary
with the evaluation table) and prints the table and the candles/s to stdout. pandas and the evaluation code are
imported here only, so that the paper and live daemon do without them (issue 6).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import structlog

from adapters.types import timeframe_seconds
from bot.app_config import BotAppConfig
from bot.errors import ConfigError, DataMismatch
from bot.ledger.schema import default_ledger_url
from bot.ledger.store import Ledger
from bot.model.policy import describe
from bot.risk import RiskManager
from bot.startup import check_card_agrees, load_policy
from bot.wiring import backtest_market, config_dict, sinks_of, symbols_of, timeframe_of, trading_settings

log = structlog.get_logger()

if TYPE_CHECKING:
    import pandas as pd

    from bot.backtest.run import BacktestDrift, BacktestResult


def _timestamp(value: str | None, key: str) -> datetime | None:
    if value is None:
        return None
    import pandas as pd  # backtest only: the paper and live daemon do without pandas (issue 6)

    try:
        stamp = pd.Timestamp(value)
    except ValueError as e:
        raise ConfigError(f"{key}: not a date: {value!r} ({e})") from None
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    result: datetime = stamp.to_pydatetime()
    return result


def backtest_window(cfg: BotAppConfig, frame: pd.DataFrame, path: Path) -> tuple[datetime | None, datetime | None]:
    """Return [start, end) of the backtest: bot.start/bot.end, else data.start/data.end, else the file's span.

    Raise DataMismatch (one line naming the values) when the window holds fewer than two candles of the file.
    """
    start_key = "bot.start" if cfg.bot.start else "data.start"
    end_key = "bot.end" if cfg.bot.end else "data.end"
    start = _timestamp(cfg.bot.start or cfg.data.start, start_key)
    end = _timestamp(cfg.bot.end or cfg.data.end, end_key)
    if frame.empty:
        raise DataMismatch(f"data.path {path}: the file holds no candles")
    first, last = frame.index[0].to_pydatetime(), frame.index[-1].to_pydatetime()
    span = f"the file {path.name} holds {first:%Y-%m-%d %H:%M} .. {last:%Y-%m-%d %H:%M}"
    if start is not None and end is not None and end <= start:
        raise DataMismatch(f"{end_key} {end:%Y-%m-%d %H:%M} is not after {start_key} {start:%Y-%m-%d %H:%M}")
    if start is not None and start > last:
        raise DataMismatch(f"{start_key} {start:%Y-%m-%d %H:%M} is after the data: {span}")
    if end is not None and end <= first:
        raise DataMismatch(f"{end_key} {end:%Y-%m-%d %H:%M} is before the data: {span}")
    index = frame.index
    begin = 0 if start is None else int(index.searchsorted(start, side="left"))
    stop = len(index) if end is None else int(index.searchsorted(end, side="left"))
    if stop - begin < 2:
        raise DataMismatch(
            f"backtest window [{start_key}, {end_key}) holds {max(stop - begin, 0)} candles, it needs at least 2: "
            f"{span}"
        )
    return start, end


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameters (malloc.h)."""


def return_freed_memory() -> bool:
    """Make the process give freed memory back to the kernel instead of keeping it at its peak; True if it did.

    A backtest's arrays (a copy of the candles, features, the report's series) are a few MB each and live for
    one phase. Two allocators kept their memory: pyarrow's mimalloc pool held what the parquet read used (37 MB
    on 200,000 candles), and glibc, whose mmap threshold rises to the largest block freed so far, served the
    later arrays from its heap and kept them there. With arrow allocating through glibc, blocks of 128 KiB and
    more mapped on their own and the heap trimmed above 4 MiB free, `mode=backtest` on 200,000 5m candles
    peaked at 297 MB instead of 352 MB at the same candles/s. Call it before pandas (which loads pyarrow) is
    imported. Applies to the whole process from then on; glibc's part is a no-op where the C library is not
    glibc (False).
    """
    if "pyarrow" not in sys.modules:
        # Arrow's C++ default pool (the one its parquet reader takes) is chosen when the library loads, from the
        # environment only; a user's own choice wins.
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc's own symbol: other C libraries read other options
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 128 << 10) == 1 and mallopt(_M_TRIM_THRESHOLD, 4 << 20) == 1)


def run_backtest_mode(cfg: BotAppConfig, out: TextIO = sys.stdout) -> BacktestResult:
    """Run the backtest of the config, write its run directory, print the table and candles/s to `out`."""
    return_freed_memory()
    # Backtest only: pandas and the evaluation code stay out of the paper and live daemon (issue 6).
    import pandas as pd

    from adapters.data.ohlcv import load_ohlcv
    from adapters.data.sample import sample_path
    from bot.backtest.run import run_backtest, window_bounds
    from bot.evaluation import format_table
    from monitoring.progress import Progress
    from monitoring.run_store import RunWriter, new_run_id

    symbols = symbols_of(cfg)
    if len(symbols) != 1:
        raise ConfigError(f"bot.symbols: a backtest replays one symbol's candles, got {symbols}")
    symbol = symbols[0]
    policy = load_policy(cfg)
    if cfg.bot.shadow_models:
        # A backtest of a shadow is a backtest of its model: run one per model to compare them.
        log.warning("shadow_models_ignored_in_backtest", shadow_models=list(cfg.bot.shadow_models))
    path = Path(cfg.data.path) if cfg.data.path else sample_path()
    try:
        frame = load_ohlcv(path, gaps=cfg.data.gaps)
    except (ValueError, OSError) as e:
        raise DataMismatch(f"data.path {path}: {e}") from e
    file_timeframe = str(frame.attrs.get("timeframe") or timeframe_of(cfg))
    if cfg.bot.timeframe is not None and timeframe_seconds(cfg.bot.timeframe) != timeframe_seconds(file_timeframe):
        raise DataMismatch(f"bot.timeframe {cfg.bot.timeframe} != the file {path.name}'s timeframe {file_timeframe}")
    check_card_agrees(policy, timeframe=file_timeframe, symbols=symbols, source=f"the file {path.name}")
    start, end = backtest_window(cfg, frame, path)
    market = backtest_market(cfg, symbol)
    ledger = None
    if cfg.bot.backtest_ledger:
        ledger = Ledger(cfg.bot.ledger_url or default_ledger_url("backtest", cfg.bot.ledger_dir))
    bus, sink = sinks_of(cfg, policy, with_logs=False)
    risk = RiskManager(cfg.bot.risk, bot_id=cfg.bot.bot_id)
    begin, stop = window_bounds(frame, start, end)
    # A bar with rate and ETA on a terminal; off one (logs, CI) a line at each quarter and one at the end.
    progress = Progress(stop - begin, desc="backtest", unit="candle")
    try:
        result = run_backtest(
            frame,
            symbol=symbol,
            policy=policy,
            market=market,
            risk=risk,
            costs=cfg.costs,
            settings=dataclasses.replace(trading_settings(cfg), timeframe=file_timeframe),
            initial_quote=cfg.bot.initial_balance,
            start=start,
            end=end,
            ledger=ledger,
            bus=bus,
            on_bar=lambda _bar, _equity: progress.update(),
            drift=cfg.bot.drift,
        )
    except BaseException:
        progress.close(failed=True)
        raise
    else:
        progress.close()
    finally:
        if sink is not None:
            sink.close()
        if ledger is not None:
            ledger.close()
    reports = result.baselines(cfg.costs, file_timeframe, float(cfg.bot.initial_balance))
    writer = RunWriter(cfg.output_dir, cfg.run_name or new_run_id("backtest"), config=config_dict(cfg))
    writer.write_trades(result.trade_records(), split="backtest")
    writer.write_frame(
        "equity-backtest",
        pd.DataFrame(
            {"equity": result.equity, "position": result.positions, "target": result.targets},
            index=result.frame.index,
        ),
    )
    writer.write_summary(
        {
            "mode": "backtest",
            "symbol": symbol,
            "timeframe": file_timeframe,
            "window": {"start": str(result.frame.index[0]), "end": str(result.frame.index[-1])},
            "model": describe(policy),
            "evaluation": {"backtest": {name: report.to_dict() for name, report in reports.items()}},
            "candles": result.candles,
            "candles_per_s": result.candles_per_s,
            "orders": len(result.orders),
            "fills": len(result.fills),
            "decisions_ahead": result.decisions_ahead,
            "risk_refusals": risk.refusal_counts(),
            "drift": None if result.drift is None else result.drift.to_dict(),
        }
    )
    writer.close()
    out.write(format_table(reports) + "\n")
    out.write(f"run directory: {writer.dir}\n")
    if result.drift is not None:
        out.write(_drift_line(result.drift) + "\n")
    refusals = risk.refusal_counts()
    if refusals:
        out.write("risk refusals: " + ", ".join(f"{k} {v}" for k, v in sorted(refusals.items())) + "\n")
    out.write(
        f"backtest: {result.candles} candles in {result.elapsed_s:.3f} s = {result.candles_per_s:,.0f} candles/s\n"
    )
    out.flush()
    return result


def _drift_line(drift: BacktestDrift) -> str:
    """One line on the features' drift from the card's training distribution over the backtest."""
    if not drift.checks:
        return f"feature drift: not checked (the window holds fewer than {drift.every} candles)"
    if not drift.first_drifted:
        return f"feature drift: none in {drift.checks} checks (every {drift.every} candles)"
    named = ", ".join(
        f"{name} from {ts:%Y-%m-%d}"
        + (f" (PSI {drift.last[name][0]:.2f}, KS {drift.last[name][1]:.2f} at the end)" if name in drift.last else "")
        for name, ts in sorted(drift.first_drifted.items(), key=lambda item: item[1])
    )
    return f"feature drift from the model's training data in {drift.checks} checks: {named}"
