"""Configure structlog and stdlib logging into one redacting pipeline (the Enhanced Logger).

Entry points call :func:`configure_logging` once; libraries only do ``log = structlog.get_logger()``.
Every line, whether it comes from structlog or from a stdlib logger (ccxt, wandb, apscheduler,
aiomqtt, urllib3), passes the same processors: context variables merged first, ISO UTC timestamp,
exception text, secret redaction, the optional W&B bridge, then a JSON renderer (off a TTY) or the
console renderer (on one). Rendered lines go to stderr unless another stream is given.

Redaction works twice: on the event dict (values under secret-looking keys, known secret values
inside any string, nested dicts/lists included) and on the rendered line (known secret values
anywhere, which covers tracebacks the console renderer formats itself and ``repr`` of objects).
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import logging
import os
import pathlib
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from monitoring.redaction import MASK, redact_text, register_secret
from monitoring.redaction import forget_secrets as forget_secret_values

if TYPE_CHECKING:
    from monitoring.wandb_bridge import WandbBridge


LEVEL_ENV_VAR = "AI_TRADING_LOG_LEVEL"
"""Environment variable read for the level when ``configure_logging`` gets none."""

NOISY_LOGGERS: tuple[str, ...] = (
    "ccxt",
    "wandb",
    "apscheduler",
    "aiomqtt",
    "urllib3",
    "filelock",
    "git",
    "matplotlib",
    "PIL",
    "sentry_sdk",
    "httpx",
    "httpcore",
)
"""Third-party loggers held at WARNING unless the configured level is DEBUG."""

_LEVEL_NAMES: dict[str, int] = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
    "FATAL": logging.CRITICAL,
}

# Matched against the key lower-cased with everything but letters and digits removed, so
# "apiKey", "API_KEY", "x-mbx-apikey" and "wandb_api_key" all normalise to something containing "apikey".
_SECRET_KEY_FRAGMENTS: tuple[str, ...] = (
    "apikey",
    "apisecret",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "privatekey",
    "authorization",
    "credential",
    "cookie",
    "bearer",
    "accesskey",
)
# Suffix-only so that e.g. "max_tokens" or "token_count" stay readable while "access_token",
# "bot_token" and plain "token" are redacted.
_SECRET_KEY_SUFFIXES: tuple[str, ...] = ("token", "pwd")

# Keys structlog uses internally for objects that must reach the renderer untouched.
_PASSTHROUGH_KEYS = frozenset({"_record", "_from_structlog", "exc_info", "stack_info"})

_MAX_DEPTH = 8


_secret_key_cache: dict[str, bool] = {}


def is_secret_key(key: object) -> bool:
    """Tell whether a key name looks like it holds a secret (case- and separator-insensitive)."""
    name = key if isinstance(key, str) else str(key)
    cached = _secret_key_cache.get(name)
    if cached is not None:
        return cached
    normalised = re.sub(r"[^a-z0-9]", "", name.lower())
    result = any(f in normalised for f in _SECRET_KEY_FRAGMENTS) or normalised.endswith(_SECRET_KEY_SUFFIXES)
    if len(_secret_key_cache) < 4096:
        _secret_key_cache[name] = result
    return result


def _scrub(value: Any, depth: int) -> Any:
    """Return a copy of *value* with secret-keyed entries masked and known secrets replaced."""
    if isinstance(value, str):
        return redact_text(value)
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {k: _scrub_item(k, v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, depth + 1) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_scrub(v, depth + 1) for v in value)
    return value


def _scrub_item(key: object, value: Any, depth: int) -> Any:
    # None and "" reveal nothing and tell a reader the secret is missing, so they stay.
    if is_secret_key(key) and value is not None and value != "":
        return MASK
    return _scrub(value, depth)


def redact_event(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Mask values under secret-looking keys and known secret values anywhere in the event dict."""
    try:
        for key, value in event_dict.items():
            if key in _PASSTHROUGH_KEYS:
                continue
            event_dict[key] = _scrub_item(key, value, 0)
    except Exception as e:  # a processor must never raise into the logging call
        # Drop the payload rather than risk printing an unredacted value.
        return {
            "event": "log_redaction_failed",
            "level": event_dict.get("level", method_name),
            "timestamp": event_dict.get("timestamp"),
            "error": type(e).__name__,
        }
    return event_dict


def _redact_rendered(logger: WrappedLogger, method_name: str, rendered: Any) -> Any:
    """Replace known secret values in the rendered line (tracebacks, reprs, anything else)."""
    if isinstance(rendered, str):
        return redact_text(rendered)
    if isinstance(rendered, bytes):
        return redact_text(rendered.decode("utf-8", "replace")).encode("utf-8")
    return rendered


def _add_record_logger_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Name the stdlib logger a foreign record came from under ``logger``."""
    record = event_dict.get("_record")
    if record is not None and "logger" not in event_dict:
        event_dict["logger"] = record.name
    return event_dict


_LEADING_KEYS = ("timestamp", "level", "logger", "event")


def _order_keys(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Put timestamp, level, logger and event first so JSON lines read well in journalctl."""
    ordered = {k: event_dict[k] for k in _LEADING_KEYS if k in event_dict}
    ordered.update(event_dict)
    return ordered


def _json_default(obj: Any) -> Any:
    if isinstance(obj, decimal.Decimal | pathlib.PurePath | BaseException):
        return str(obj)
    if isinstance(obj, dt.datetime | dt.date | dt.time):
        return obj.isoformat()
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    return repr(obj)


def _resolve_level(level: str | int | None) -> int:
    """Turn the argument, else the environment, else INFO into a stdlib level number."""
    source = "argument level"
    if level is None:
        level = os.environ.get(LEVEL_ENV_VAR) or "INFO"
        source = f"environment variable {LEVEL_ENV_VAR}"
    if isinstance(level, bool):
        raise ValueError(f"{source}={level!r} is not a log level")
    if isinstance(level, int):
        if level < 0:
            raise ValueError(f"{source}={level!r} must be >= 0")
        return level
    text = level.strip().upper()
    if text.isdigit():
        return int(text)
    if text not in _LEVEL_NAMES:
        raise ValueError(f"{source}={level!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return _LEVEL_NAMES[text]


def _is_tty(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    if isatty is None:
        return False
    try:
        return bool(isatty())
    except (ValueError, OSError):  # closed or detached stream
        return False


class _PipelineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Root handler that renders stdlib records through the structlog pipeline (marker type)."""


_state_lock = threading.Lock()
_bridge: WandbBridge | None = None
_noisy_saved: dict[str, int] | None = None
_renders_json: bool | None = None
"""Whether the configured pipeline renders JSON lines; None before configure_logging (or after a reset)."""


def configure_logging(
    level: str | int | None = None,
    *,
    json: bool | None = None,
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
    wandb_bridge: bool | WandbBridge = False,
) -> None:
    """Configure structlog and stdlib logging once for an entry point; calling again replaces it.

    Args:
        level: Level name or number; None reads ``AI_TRADING_LOG_LEVEL``, else INFO.
        json: True for JSON lines, False for the console renderer, None to pick by ``stream.isatty()``.
        stream: Where lines go; default ``sys.stderr`` (stdout is for machine-readable output).
        secrets: Known secret values to redact wherever they appear (same as ``register_secret``).
        wandb_bridge: True to count warnings/errors into the active W&B run and alert on critical
            events, or a ready ``WandbBridge`` to use (e.g. with other intervals).

    Raises:
        ValueError: The level (argument or environment) is not a log level.
    """
    global _bridge, _noisy_saved, _renders_json
    numeric_level = _resolve_level(level)
    out: TextIO = stream if stream is not None else sys.stderr
    for value in secrets:
        register_secret(value)
    as_json = (not _is_tty(out)) if json is None else json

    bridge: WandbBridge | None = None
    if wandb_bridge is True:
        from monitoring.wandb_bridge import WandbBridge

        bridge = WandbBridge()
    elif wandb_bridge is not False:
        bridge = wandb_bridge

    renderer: Processor
    if as_json:
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False, default=_json_default)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=_is_tty(out))

    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    # Shared tail: everything after the event dict is complete, up to the rendered string.
    tail: list[Processor] = [structlog.processors.StackInfoRenderer()]
    if as_json:
        tail += [structlog.processors.format_exc_info, _order_keys]
    tail.append(redact_event)
    if bridge is not None:
        tail.append(bridge)
    tail += [renderer, _redact_rendered]

    native_chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        timestamper,
        *tail,
    ]
    foreign_pre_chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_record_logger_name,
        structlog.stdlib.ExtraAdder(),
        timestamper,
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=foreign_pre_chain,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    )

    with _state_lock:
        # cache_logger_on_first_use stays False: tests and reconfiguration must reach loggers that
        # modules created at import time, and structlog.testing.capture_logs needs uncached loggers.
        structlog.configure(
            processors=native_chain,
            wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
            logger_factory=structlog.WriteLoggerFactory(file=out),
            context_class=dict,
            cache_logger_on_first_use=False,
        )
        root = logging.getLogger()
        for existing in [h for h in root.handlers if isinstance(h, _PipelineHandler)]:
            root.removeHandler(existing)
        handler = _PipelineHandler(out)
        handler.setFormatter(formatter)
        root.addHandler(handler)
        root.setLevel(numeric_level)
        if _noisy_saved is None:
            _noisy_saved = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
        noisy_level = logging.NOTSET if numeric_level <= logging.DEBUG else max(numeric_level, logging.WARNING)
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(noisy_level)
        _bridge = bridge
        # An error line filtered out by the level would leave the user with nothing: print it plain then.
        _renders_json = as_json and numeric_level <= logging.ERROR


def report_error(prog: str, error: BaseException | str, *, event: str = "command_failed", **context: Any) -> None:
    """Tell the user about an expected failure exactly once.

    Logging configured for JSON (stderr is not a terminal, e.g. a pipe or the journal): one `error` log
    line carrying `prog` and the message, for whatever collects the JSON. Otherwise (a terminal, or logging
    not configured yet): the plain `<prog>: <message>` line on stderr.
    """
    message = str(error)
    if _renders_json:
        structlog.get_logger().error(event, prog=prog, error=message, **context)
        return
    sys.stderr.write(f"{prog}: {message}\n")


def current_wandb_bridge() -> WandbBridge | None:
    """Return the W&B bridge the last ``configure_logging`` installed, if any (to flush it)."""
    return _bridge


def reset_logging(*, forget_secrets: bool = True) -> None:
    """Undo ``configure_logging``: structlog defaults, our root handler removed (for tests)."""
    global _bridge, _noisy_saved, _renders_json
    with _state_lock:
        structlog.reset_defaults()
        root = logging.getLogger()
        for existing in [h for h in root.handlers if isinstance(h, _PipelineHandler)]:
            root.removeHandler(existing)
        root.setLevel(logging.WARNING)
        if _noisy_saved is not None:
            for name, saved in _noisy_saved.items():
                logging.getLogger(name).setLevel(saved)
        _bridge = None
        _noisy_saved = None
        _renders_json = None
    if forget_secrets:
        forget_secret_values()
