"""Count warning/error/critical log events into the active W&B run and raise W&B alerts.

:class:`WandbBridge` is a structlog processor. ``configure_logging(wandb_bridge=True)`` puts it in the
pipeline after redaction, so alert texts carry no secrets. It never imports wandb itself: with no
``wandb`` module loaded, or ``wandb.run`` None, an event costs a dict lookup and an attribute read.

While a run is active it keeps the counts in memory and hands them to ``run.log(..., commit=False)``
at most once per ``flush_interval_s`` (the next log line of any level after the interval flushes
pending counts), so they ride along with the next row the training loop or live logger commits.
Critical events, and events logged with ``alert=True``, become ``run.alert(...)`` at most once per
title per ``alert_interval_s``. Nothing here raises into the logging call: wandb failures are caught
and counted in :attr:`WandbBridge.stats`. In offline mode wandb 0.31 accepts ``run.alert`` (it is
written to the run file and sent on sync); on a finished run it raises ``UsageError``, which is counted.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from structlog.types import EventDict, WrappedLogger

from monitoring.metrics import SinkStats
from monitoring.redaction import redact_text

METRIC_KEYS: tuple[str, str, str] = ("logs/warnings", "logs/errors", "logs/critical")
"""W&B metric names the bridge logs, one per counted level."""

_LEVEL_TO_METRIC: dict[str, str] = {
    "warning": "logs/warnings",
    "warn": "logs/warnings",
    "error": "logs/errors",
    "exception": "logs/errors",
    "critical": "logs/critical",
    "fatal": "logs/critical",
}

ALERT_LEVELS: dict[str, str] = {
    "critical": "ERROR",
    "fatal": "ERROR",
    "error": "ERROR",
    "exception": "ERROR",
    "warning": "WARN",
    "warn": "WARN",
}
"""Log level to ``wandb.alert`` level; anything else is ``INFO``."""

_MAX_TITLE_CHARS = 63  # wandb requires titles shorter than 64 characters
_MAX_TEXT_CHARS = 4000
_TEXT_SKIP_KEYS = frozenset({"event", "_record", "_from_structlog", "exc_info", "exception", "stack_info", "alert"})


def active_wandb_run() -> Any:
    """Return ``wandb.run`` if wandb is imported and a run is active, else None (never imports wandb)."""
    wandb = sys.modules.get("wandb")
    if wandb is None:
        return None
    return getattr(wandb, "run", None)


class WandbBridge:
    """Structlog processor that counts warnings/errors/critical into W&B and alerts on critical events."""

    def __init__(
        self,
        *,
        flush_interval_s: float = 30.0,
        alert_interval_s: float = 300.0,
        commit: bool = False,
        clock: Callable[[], float] = time.monotonic,
        get_run: Callable[[], Any] = active_wandb_run,
    ) -> None:
        """Set how often counts are flushed and alerts repeat; ``clock``/``get_run`` are seams for tests.

        Args:
            flush_interval_s: Least seconds between two ``run.log`` calls of the counts.
            alert_interval_s: Least seconds between two alerts with the same title.
            commit: Passed to ``run.log``; False lets the counts join the caller's next committed row.
            clock: Monotonic seconds.
            get_run: Returns the active run or None.
        """
        if flush_interval_s < 0:
            raise ValueError(f"flush_interval_s must be >= 0, was {flush_interval_s}")
        if alert_interval_s < 0:
            raise ValueError(f"alert_interval_s must be >= 0, was {alert_interval_s}")
        self.flush_interval_s = flush_interval_s
        self.alert_interval_s = alert_interval_s
        self.commit = commit
        self.stats = SinkStats()
        """The count rows: delivered = `run.log` calls, failures = those that raised and the bridge's own errors."""
        self.alert_stats = SinkStats()
        """The alerts: delivered = `run.alert` calls, dropped = over the per-title rate limit, failures = raised."""
        self.last_flushed: dict[str, int] | None = None
        """The payload of the last successful ``run.log`` call."""
        self._clock = clock
        self._get_run = get_run
        self._lock = threading.Lock()
        self._local = threading.local()
        self._run_id: object = None
        self._counts: dict[str, int] = dict.fromkeys(METRIC_KEYS, 0)
        self._dirty = False
        self._last_flush: float | None = None
        self._last_alert: dict[str, float] = {}

    @property
    def counts(self) -> dict[str, int]:
        """Return a copy of the counts for the current run."""
        with self._lock:
            return dict(self._counts)

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        """Count the event into the active run, alert if needed, and return the event dict unchanged."""
        level = event_dict.get("level") or method_name
        metric = _LEVEL_TO_METRIC.get(level)
        wants_alert = metric == "logs/critical" or event_dict.get("alert") is True
        if metric is None and not wants_alert and not self._dirty:
            return event_dict
        # wandb may log through stdlib logging, which comes back through this processor.
        if getattr(self._local, "busy", False):
            return event_dict
        self._local.busy = True
        try:
            run = self._get_run()
            if run is not None:
                self._handle(run, metric, wants_alert, str(level), event_dict)
        except Exception:
            self.stats.failures += 1
        finally:
            self._local.busy = False
        return event_dict

    def flush(self) -> bool:
        """Send pending counts to the active run now; return True if something was sent."""
        if getattr(self._local, "busy", False):
            return False
        self._local.busy = True
        try:
            run = self._get_run()
            if run is None:
                return False
            with self._lock:
                self._switch_run(run)
                if not self._dirty:
                    return False
                payload = dict(self._counts)
                self._dirty = False
                self._last_flush = self._clock()
            return self._send_counts(run, payload)
        except Exception:
            self.stats.failures += 1
            return False
        finally:
            self._local.busy = False

    def _switch_run(self, run: Any) -> None:
        """Start counting afresh when a different run became active (sweeps run several per process)."""
        run_id = getattr(run, "id", None) or id(run)
        if run_id != self._run_id:
            self._run_id = run_id
            self._counts = dict.fromkeys(METRIC_KEYS, 0)
            self._dirty = False
            self._last_flush = None
            self._last_alert = {}

    def _handle(self, run: Any, metric: str | None, wants_alert: bool, level: str, event_dict: EventDict) -> None:
        payload: dict[str, int] | None = None
        title: str | None = None
        with self._lock:
            self._switch_run(run)
            now = self._clock()
            if metric is not None:
                self._counts[metric] += 1
                self._dirty = True
            if self._dirty and (self._last_flush is None or now - self._last_flush >= self.flush_interval_s):
                payload = dict(self._counts)
                self._dirty = False
                self._last_flush = now
            if wants_alert:
                title = str(event_dict.get("event", "log_event"))[:_MAX_TITLE_CHARS] or "log_event"
                last = self._last_alert.get(title)
                if last is not None and now - last < self.alert_interval_s:
                    self.alert_stats.dropped += 1
                    title = None
                else:
                    self._last_alert[title] = now
        if payload is not None:
            self._send_counts(run, payload)
        if title is not None:
            self._send_alert(run, title, level, event_dict)

    def _send_counts(self, run: Any, payload: dict[str, int]) -> bool:
        try:
            run.log(payload, commit=self.commit)
        except Exception:
            with self._lock:
                self.stats.failures += 1
                self._dirty = True
            return False
        with self._lock:
            self.stats.delivered += 1
            self.last_flushed = payload
        return True

    def _send_alert(self, run: Any, title: str, level: str, event_dict: EventDict) -> None:
        try:
            text = _alert_text(level, event_dict)
            run.alert(
                title=title,
                text=text,
                level=ALERT_LEVELS.get(level, "INFO"),
                wait_duration=max(self.alert_interval_s, 1.0),
            )
        except Exception:
            with self._lock:
                self.alert_stats.failures += 1
            return
        with self._lock:
            self.alert_stats.delivered += 1


def _alert_text(level: str, event_dict: EventDict) -> str:
    """Render the event for the alert body: level, key=value pairs, then the exception text."""
    lines = [f"{event_dict.get('event', '')} [{level}]"]
    lines += [f"{k}={v!r}" for k, v in event_dict.items() if k not in _TEXT_SKIP_KEYS]
    exception = event_dict.get("exception")
    if isinstance(exception, str):
        lines.append(exception)
    else:
        lines += _format_exc_info(event_dict.get("exc_info"))
    text = redact_text("\n".join(lines))
    if len(text) > _MAX_TEXT_CHARS:
        # Keep the head (event, keys) and the tail (the exception message ends the traceback).
        text = text[:1000] + "\n...\n" + text[-(_MAX_TEXT_CHARS - 1005) :]
    return text


def _format_exc_info(exc_info: Any) -> list[str]:
    if not exc_info:
        return []
    if isinstance(exc_info, BaseException):
        return [*traceback.format_exception(exc_info)]
    if isinstance(exc_info, tuple) and len(exc_info) == 3 and exc_info[1] is not None:
        return [*traceback.format_exception(*exc_info)]
    current = sys.exc_info()
    if current[1] is not None:
        return [*traceback.format_exception(*current)]
    return []
