"""The daemon application: its config schema, the start-up checks, and the three modes (backtest, paper, live).

- ``backtest``: replay candles from ``data.path`` (any loader format) over ``[bot.start, bot.end)`` through the
  decision core and the paper venue (`bot.backtest`); writes a run directory (config, equity curve, trades,
  summary with the evaluation table) and prints the table and the candles/s to stdout.
- ``paper`` (default): live candles from the exchange's public endpoints (ccxt, no key), paper venue fills, a
  ledger of its own (``paper.db``); restarts rebuild the paper account from the ledger.
- ``live``: real orders. Refused unless ``bot.confirm_live=true`` (or ``AI_TRADING_CONFIRM_LIVE=1``) AND API keys
  are present; at start it logs what it trades and under which limits.

Start-up refuses, with one line and exit 2 (`bot.errors`), a missing/corrupt/mismatched model card, a card whose
timeframe differs from the data's, a bad config or an unconfirmed live start.

Sinks of paper and live (`bot.startup.sinks_of`): every engine event goes to the log, and when enabled to W&B
(``wandb.enabled``), to MQTT (``mqtt.enabled``: `bot.mqtt.MqttBridge`, whose commands the engine answers) and to the
Prometheus metrics (``metrics.enabled``: `monitoring.metrics.BotMetrics`, served on ``metrics.host:metrics.port``
while the daemon runs). Each sink takes events without waiting (bounded queues that drop and count); all are closed
on SIGTERM.

The pieces: the config schema (`bot.app_config`), the start-up checks (`bot.startup`), the backtest mode
(`bot.backtest_mode`) and the paper/live daemon (`bot.daemon`); `run_mode` runs the configured one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
from typing import TextIO

import structlog

from bot.app_config import BotAppConfig
from bot.backtest_mode import run_backtest_mode
from bot.daemon import run_exchange_daemon
from bot.startup import check_card_agrees, check_live_start, load_policy, symbols_of, timeframe_of
from monitoring.run_store import json_safe

log = structlog.get_logger()


def run_mode(cfg: BotAppConfig, out: TextIO = sys.stdout) -> None:
    """Run the configured mode to its end; raise a `bot.errors` error (or the failure) when it cannot."""
    if cfg.bot.mode == "backtest":
        run_backtest_mode(cfg, out)
        return
    credentials = None
    if cfg.bot.mode == "live":
        credentials = check_live_start(cfg)
        from monitoring.logging import register_secret

        for value in credentials.secret_values():
            register_secret(value)
    policy = load_policy(cfg)
    # Before anything talks to the exchange: a model trained on other candles is refused (exit 2).
    check_card_agrees(policy, timeframe=timeframe_of(cfg), symbols=symbols_of(cfg), source="the feed")
    if cfg.bot.mode == "live":
        log.warning(
            "live_trading_start",
            exchange=cfg.exchange.exchange_id,
            symbols=symbols_of(cfg),
            limits=json_safe(dataclasses.asdict(cfg.bot.risk)),
            model_sha=policy.sha256,
        )
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(run_exchange_daemon(cfg, policy, credentials))
