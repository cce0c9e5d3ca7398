"""The daemon's backtest mode: replay candles from ``data.path`` through the decision core and the paper venue.

Replays ``[bot.start, bot.end)`` (`bot.backtest`); writes a run directory (config, equity curve, trades, summary
with the evaluation table) and prints the table and the candles/s to stdout. pandas and the evaluation code are
imported here only, so that the paper and live daemon do without them (issue 6).
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from adapters.types import Market
from bot.app_config import BotAppConfig
from bot.ledger import Ledger, default_ledger_url, split_symbol
from bot.policy import describe
from bot.risk import RiskManager
from bot.startup import StartupError, config_dict, load_policy, sinks_of, symbols_of, timeframe_of, trading_settings

if TYPE_CHECKING:
    from bot.backtest import BacktestResult


def _timestamp(value: str | None, key: str) -> datetime | None:
    if value is None:
        return None
    import pandas as pd  # backtest only: the paper and live daemon do without pandas (issue 6)

    try:
        stamp = pd.Timestamp(value)
    except ValueError as e:
        raise StartupError(f"{key}: not a date: {value!r} ({e})", exit_code=2) from None
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    result: datetime = stamp.to_pydatetime()
    return result


def run_backtest_mode(cfg: BotAppConfig, out: TextIO = sys.stdout) -> BacktestResult:
    """Run the backtest of the config, write its run directory, print the table and candles/s to `out`."""
    # Backtest only: pandas and the evaluation code stay out of the paper and live daemon (issue 6).
    import pandas as pd

    from adapters.ohlcv import load_ohlcv
    from adapters.sample_data import sample_path
    from bot.backtest import run_backtest
    from bot.metrics import format_table
    from monitoring.run_store import RunWriter, new_run_id

    symbols = symbols_of(cfg)
    if len(symbols) != 1:
        raise StartupError(f"bot.symbols: a backtest replays one symbol's candles, got {symbols}", exit_code=2)
    symbol = symbols[0]
    policy = load_policy(cfg)
    path = Path(cfg.data.path) if cfg.data.path else sample_path()
    try:
        frame = load_ohlcv(path, gaps=cfg.data.gaps)
    except (ValueError, OSError) as e:
        raise StartupError(f"data.path {path}: {e}") from e
    start = _timestamp(cfg.bot.start or cfg.data.start, "bot.start")
    end = _timestamp(cfg.bot.end or cfg.data.end, "bot.end")
    base, quote = split_symbol(symbol)
    rules = cfg.bot.market
    market = Market(symbol, base, quote, rules.amount_step, rules.price_step, rules.min_amount, rules.min_notional)
    ledger = None
    if cfg.bot.backtest_ledger:
        ledger = Ledger(cfg.bot.ledger_url or default_ledger_url("backtest", cfg.bot.ledger_dir))
    bus, sink = sinks_of(cfg, policy, with_logs=False)
    try:
        result = run_backtest(
            frame,
            symbol=symbol,
            policy=policy,
            market=market,
            risk=RiskManager(cfg.bot.risk, bot_id=cfg.bot.bot_id),
            costs=cfg.costs,
            settings=trading_settings(cfg),
            initial_quote=cfg.bot.initial_balance,
            start=start,
            end=end,
            ledger=ledger,
            bus=bus,
        )
    finally:
        if sink is not None:
            sink.close()
        if ledger is not None:
            ledger.close()
    reports = result.baselines(cfg.costs, timeframe_of(cfg), float(cfg.bot.initial_balance))
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
            "timeframe": timeframe_of(cfg),
            "window": {"start": str(result.frame.index[0]), "end": str(result.frame.index[-1])},
            "model": describe(policy),
            "evaluation": {"backtest": {name: report.to_dict() for name, report in reports.items()}},
            "candles": result.candles,
            "candles_per_s": result.candles_per_s,
            "orders": len(result.orders),
            "fills": len(result.fills),
        }
    )
    writer.close()
    out.write(format_table(reports) + "\n")
    out.write(f"run directory: {writer.dir}\n")
    out.write(
        f"backtest: {result.candles} candles in {result.elapsed_s:.3f} s = {result.candles_per_s:,.0f} candles/s\n"
    )
    out.flush()
    return result
