"""Errors of the daemon, named for what the caller should do about them; `bot.__main__` maps them to exit codes.

Exit codes follow systemd's conventions (the unit has ``RestartPreventExitStatus=2 3``): 1 a restart may help,
2 the user's configuration, model or data cannot work (a restart cannot fix it), 3 the bot refuses to trade until
a human looks. Codes 2 and 3 print one line naming the problem, never a traceback.
"""

from __future__ import annotations


class BotError(Exception):
    """Base class of the daemon's own errors; `exit_code` is what `ai-trading bot` exits with."""

    exit_code = 1
    headline: str | None = None
    """What `ai-trading bot` prints before the message ("refusing to trade: ..."); None: the message alone."""
    log_event: str | None = None
    """The event the daemon logs the error as; None: `daemon_start_failed` for exit code 1, else none."""


class StartupError(BotError):
    """The daemon could not start for a reason a restart may cure (exchange or W&B unreachable): retry later."""


class ConfigError(BotError, ValueError):
    """The configuration is invalid (the message names the key and the problem): fix the config; exit 2."""

    exit_code = 2


class ModelRefused(BotError):
    """The model or its card cannot be used (missing, corrupt, sha mismatch): export or point at another; exit 2."""

    exit_code = 2


class DataMismatch(BotError, ValueError):
    """The data cannot work with this model or window (timeframe differs from the card's, empty window): change
    the data, the window or the model; exit 2."""

    exit_code = 2


class RefuseToTrade(BotError):
    """The bot will not trade until a human looks (unexplained reconciliation difference, unusable ledger):
    inspect the account and the ledger, then restart; exit 3."""

    exit_code = 3
    headline = "refusing to trade"
    log_event = "daemon_refused_to_trade"
