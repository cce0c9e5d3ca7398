"""W&B live sink: closed trades, equity and positions to a `live-trading` run, from one thread, never in the way.

The engine calls `WandbLiveSink.publish(event)` (or `log_metrics`) on the event loop; that only converts the
event to a dict and puts it on a bounded queue (`put_nowait`). One dedicated thread creates the run
(``wandb.init(project=..., job_type="live-trading")``, which may take seconds), then logs what the queue
holds. When W&B is slow, stalled or unreachable the queue fills and further items are dropped and counted
(`stats.dropped`); trading never waits. `close` asks the thread to finish the run (``run.finish()``) and waits
at most `timeout_s`; a thread stuck in W&B is left behind (daemon thread) and reported.

Keys (the user guide, section 7): per closed trade ``live/entry_price``, ``live/exit_price``,
``live/realized_pnl``, ``live/duration_seconds`` (plus ``live/qty``, ``live/fees``); ``live/equity``,
``live/cash``, ``live/drawdown`` per equity snapshot; ``live/position/<symbol>`` per fill. The model sha256 is
in the run config and summary (``model_sha``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from bot.config import WandbConfig
from bot.events import EquityEvent, Event, FillEvent, TradeClosedEvent

log = structlog.get_logger()

_STOP = object()


class LiveRun(Protocol):
    """The part of a wandb run the sink uses."""

    def log(self, data: dict[str, Any]) -> None:
        """Log one row."""
        ...

    def finish(self) -> None:
        """Finish the run."""
        ...


@dataclass
class SinkStats:
    """What the sink did (read from any thread; counters only grow)."""

    enqueued: int = 0
    """Rows accepted onto the queue."""
    dropped: int = 0
    """Rows dropped because the queue was full (W&B slow or unreachable) or the sink was closed."""
    logged: int = 0
    """Rows handed to `run.log` successfully."""
    failures: int = 0
    """`run.log` calls that raised."""
    init_failed: bool = False
    """Whether creating the run failed (then every row is dropped)."""


def event_metrics(event: Event, positions: dict[str, float]) -> dict[str, Any] | None:
    """Return the W&B row for an event, or None for events the live run does not chart."""
    if isinstance(event, TradeClosedEvent):
        return {
            "live/entry_price": float(event.entry_price),
            "live/exit_price": float(event.exit_price),
            "live/realized_pnl": float(event.realized_pnl),
            "live/duration_seconds": float(event.duration_seconds),
            "live/qty": float(event.qty),
            "live/fees": float(event.fees),
        }
    if isinstance(event, EquityEvent):
        return {
            "live/equity": float(event.equity),
            "live/cash": float(event.cash),
            "live/drawdown": float(event.drawdown),
            "live/unrealized_pnl": float(event.unrealized_pnl),
        }
    if isinstance(event, FillEvent):
        positions[event.symbol] = positions.get(event.symbol, 0.0) + float(event.amount) * event.side.sign
        return {f"live/position/{event.symbol}": positions[event.symbol]}
    return None


class WandbLiveSink:
    """Log events to a W&B run from a dedicated thread fed by a bounded queue."""

    def __init__(
        self,
        run_factory: Callable[[], LiveRun],
        *,
        queue_size: int = 1000,
        model_sha: str | None = None,
        initial_positions: Mapping[str, float] | None = None,
    ) -> None:
        """Create the run with `run_factory` (in the sink's thread) once `start` is called."""
        if queue_size < 1:
            raise ValueError(f"wandb live queue_size must be >= 1, was {queue_size}")
        self._factory = run_factory
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._positions = dict(initial_positions or {})
        self.model_sha = model_sha
        self.stats = SinkStats()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._finished = threading.Event()

    def start(self) -> None:
        """Start the logging thread (it creates the run)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._work, name="wandb-live", daemon=True)
        self._thread.start()

    def publish(self, event: Event) -> None:
        """Queue the event's row, or count a drop; never blocks."""
        row = event_metrics(event, self._positions)
        if row is not None:
            self.log_metrics(row)

    def log_metrics(self, row: dict[str, Any]) -> None:
        """Queue one row of metrics, or count a drop; never blocks."""
        if self._closed:
            self.stats.dropped += 1
            return
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self.stats.dropped += 1
            if self.stats.dropped == 1 or self.stats.dropped % 1000 == 0:
                log.warning("wandb_live_dropped", dropped=self.stats.dropped, queue_size=self._queue.maxsize)
            return
        self.stats.enqueued += 1

    @property
    def queue_depth(self) -> int:
        """Rows waiting to be logged."""
        return self._queue.qsize()

    def _work(self) -> None:
        try:
            run = self._factory()
        except Exception:
            self.stats.init_failed = True
            log.exception("wandb_live_init_failed")
            run = None
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    break
                if run is None:
                    self.stats.dropped += 1
                    continue
                try:
                    run.log(item)  # type: ignore[arg-type]
                    self.stats.logged += 1
                except Exception:
                    self.stats.failures += 1
                    log.exception("wandb_live_log_failed")
        finally:
            if run is not None:
                try:
                    run.finish()
                except Exception:
                    log.exception("wandb_live_finish_failed")
            self._finished.set()

    def close(self, timeout_s: float = 10.0) -> bool:
        """Finish the run after the queued rows; wait at most `timeout_s`; return whether it finished."""
        self._closed = True
        if self._thread is None:
            return True
        # The stop marker must get in even when the queue is full: drop a queued row to make room.
        while True:
            try:
                self._queue.put_nowait(_STOP)
                break
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.stats.dropped += 1
                except queue.Empty:
                    pass
        finished = self._finished.wait(timeout_s)
        if not finished:
            log.error("wandb_live_finish_timeout", timeout_s=timeout_s, queue_depth=self.queue_depth)
        log.info(
            "wandb_live_closed",
            logged=self.stats.logged,
            dropped=self.stats.dropped,
            failures=self.stats.failures,
            finished=finished,
        )
        return finished


def wandb_run_factory(
    config: WandbConfig, *, run_config: Mapping[str, Any], model_sha: str | None, name: str | None = None
) -> Callable[[], LiveRun]:
    """Return a factory that starts the `live-trading` W&B run (wandb imported only when it runs)."""
    resolved = config.resolved()

    def start() -> LiveRun:
        import wandb

        run = wandb.init(
            project=resolved.project,
            entity=resolved.entity,
            mode=resolved.mode,
            job_type="live-trading",
            name=name,
            group=resolved.group,
            tags=list(resolved.tags),
            config={**dict(run_config), "model_sha": model_sha},
        )
        run.summary["model_sha"] = model_sha
        result: LiveRun = run
        return result

    return start
