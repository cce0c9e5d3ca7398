"""`python -m bot` / `ai-trading bot`: the trading daemon, configured by Hydra `key=value` overrides.

Exit codes (systemd conventions, `bot.errors`): 0 clean stop; 1 unexpected or transient failure (a restart may
help); 2 the configuration, command line, model/card or data cannot work (unknown key, wrong type, card invalid,
card timeframe != data timeframe, empty backtest window, unconfirmed live start, missing API keys); 3 the bot
refuses to trade until a human looks (reconciliation difference it cannot explain). Codes 2 and 3 print one line
on stderr, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import typing
from collections.abc import Sequence
from typing import Any, TextIO

import structlog

from adapters.errors import AdapterError
from bot.app_config import BotAppConfig, BotConfig
from bot.backtest.mode import run_backtest_mode
from bot.config import load_config, own_file_window
from bot.daemon import run_exchange_daemon
from bot.errors import BotError, ConfigError
from bot.startup import check_card_agrees, check_live_start, load_policy, load_shadows
from bot.wiring import symbols_of, timeframe_of
from monitoring.run_store import json_safe

log = structlog.get_logger()


def run_mode(cfg: BotAppConfig, out: TextIO = sys.stdout) -> None:
    """Run the configured mode to its end (backtest: `bot.backtest.mode`; paper and live: `bot.daemon`).

    Raise a `bot.errors` error (or the failure) when it cannot."""
    if cfg.bot.mode == "backtest":
        run_backtest_mode(cfg, out)
        return
    credentials = None
    if cfg.bot.mode == "live":
        credentials = check_live_start(cfg)
        from monitoring.redaction import register_secret

        for value in credentials.secret_values():
            register_secret(value)
    policy = load_policy(cfg)
    # Before anything talks to the exchange: a model trained on other candles is refused (exit 2).
    check_card_agrees(policy, timeframe=timeframe_of(cfg), symbols=symbols_of(cfg), source="the feed")
    shadows = load_shadows(cfg, policy, timeframe=timeframe_of(cfg))
    if cfg.bot.mode == "live":
        log.warning(
            "live_trading_start",
            exchange=cfg.exchange.exchange_id,
            symbols=symbols_of(cfg),
            limits=json_safe(dataclasses.asdict(cfg.bot.risk)),
            model_sha=policy.sha256,
        )
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(run_exchange_daemon(cfg, policy, credentials, shadows=shadows))


_SHORTHAND = frozenset({"mode", "model_path", "confirm_live"})
"""Keys of `bot` that may be given without the `bot.` prefix (`ai-trading bot mode=backtest`)."""

_HIDDEN = frozenset({"mqtt.heartbeat_interval_s"})
"""Schema keys that are not settings of the daemon (its heartbeat is bot.heartbeat_interval_s)."""

USAGE = """usage: ai-trading bot [KEY=VALUE ...]      (also: python -m bot)

Run the trading daemon. Modes:
  mode=backtest  replay candles (data.path, bot.start/bot.end) through the paper venue; prints the
                 evaluation table and candles/s, writes a run directory under output_dir
  mode=paper     live candles from the exchange (public endpoints, no key), paper fills (default)
  mode=live      real orders: needs bot.confirm_live=true (or AI_TRADING_CONFIRM_LIVE=1) and API keys
                 (AI_TRADING_<EXCHANGE>_API_KEY / _SECRET, or *_FILE, or exchange.secrets_file)

Examples:
  ai-trading bot mode=backtest bot.model_path=models/best_model.onnx data.path=adapters/bundled/BTC_USDT-1h.parquet \\
      bot.start=2025-01-01 bot.risk.max_drawdown=1
  ai-trading bot mode=paper wandb.enabled=true
  ai-trading bot mode=paper mqtt.enabled=true mqtt.host=broker.lan metrics.enabled=true
      (MQTT password: AI_TRADING_MQTT_PASSWORD or mqtt.password_file; metrics on 127.0.0.1:9108/metrics)

mode, model_path and confirm_live may be written without the `bot.` prefix.
data.path without data.start/data.end: the backtest covers the file's own span.
Exit codes: 0 ok, 1 error (a restart may help), 2 bad config, model or data, 3 refuses to trade until a human looks.

Overridable keys (defaults from config/):
"""


def _keys(cls: type[Any], prefix: str) -> list[str]:
    lines: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if key in _HIDDEN:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            lines += _keys(tp, key + ".")
        else:
            name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
            lines.append(f"  {key}: {name}")
    return lines


def usage() -> str:
    """Return the help text with every overridable key."""
    return USAGE + "\n".join(_keys(BotAppConfig, ""))


def normalise_overrides(argv: Sequence[str]) -> list[str]:
    """Rewrite the `bot.` shorthands (`mode=paper` -> `bot.mode=paper`); keep everything else."""
    bot_fields = {f.name for f in dataclasses.fields(BotConfig)}
    result: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in _SHORTHAND and key in bot_fields:
            result.append(f"bot.{key}={value}")
        else:
            result.append(arg)
    return own_file_window(result)


def _storage_error(error: BaseException) -> str | None:
    """The ledger failure inside `error` (an exception group, a chain), as one line; None when it is not one."""
    import sqlite3

    from sqlalchemy.exc import DBAPIError

    seen: set[int] = set()
    stack: list[BaseException] = [error]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DBAPIError) and e.orig is not None:
            return f"{type(e.orig).__name__}: {e.orig}"
        if isinstance(e, sqlite3.Error):
            return f"{type(e).__name__}: {e}"
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
        stack.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    return None


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def main(argv: list[str] | None = None) -> int:
    """Parse overrides, configure logging, run the mode; return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in args):
        print(usage())
        return 0
    bad = [a for a in args if "=" not in a]
    if bad:
        print(f"ai-trading bot: expected KEY=VALUE overrides, got {bad[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(BotAppConfig, normalise_overrides(args))
    except ConfigError as e:
        print(f"ai-trading bot: {e}", file=sys.stderr)
        return 2
    from monitoring.logging import configure_logging

    try:
        configure_logging(cfg.log_level, wandb_bridge=cfg.wandb.enabled)
    except ValueError as e:
        print(f"ai-trading bot: bad configuration: log_level: {e}", file=sys.stderr)
        return 2
    try:
        try:
            run_mode(cfg)
        except Exception as e:
            storage = _storage_error(e)
            if storage is None:
                raise
            # The ledger cannot record what the bot does (read-only, disk full, locked, corrupt): a restart will
            # not fix it and trading on would send orders it cannot record. Exit 3: a human must look.
            log.error("ledger_unusable", error=storage)
            print(f"ai-trading bot: ledger unusable, not trading: {storage}", file=sys.stderr)
            return 3
    except BotError as e:
        event = e.log_event or ("daemon_start_failed" if e.exit_code == 1 else None)
        if event is not None:
            log.error(event, error=str(e))
        headline = f"{e.headline}: " if e.headline else ""
        print(f"ai-trading bot: {headline}{e}", file=sys.stderr)
        return e.exit_code
    except AdapterError as e:
        log.error("daemon_failed", error=str(e))
        print(f"ai-trading bot: {e}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        leaf = _first_leaf(group)
        if isinstance(leaf, BotError):
            print(f"ai-trading bot: {leaf}", file=sys.stderr)
            return leaf.exit_code
        for error in group.exceptions:
            log.error("daemon_failed", error=f"{type(error).__name__}: {error}")
        print(f"ai-trading bot: {leaf}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
