"""W&B live sink: closed trades, equity and positions to a `live-trading` run, from one thread, never in the way.

The engine calls `WandbLiveSink.publish(event)` (or `log_metrics`) on the event loop; that only converts the
event to a dict and puts it on a bounded queue (`put_nowait`). One dedicated thread creates the run
(``wandb.init(project=..., job_type="live-trading")``, which may take seconds), then logs what the queue
holds. When W&B is slow, stalled or unreachable the queue fills and further items are dropped and counted
(`stats.dropped`); trading never waits. `close` asks the thread to finish the run (``run.finish()``) and waits
at most `timeout_s`; a thread stuck in W&B is left behind (daemon thread) and reported, and the daemon then stops
W&B's stalled service process (`stop_stalled_wandb_service`): W&B's own exit hook waits for that process with
no deadline, which would hold the daemon's exit until systemd's stop timeout. The offline run keeps what the
service had written; `wandb sync` uploads it.

Keys (the user guide, section 7): per closed trade ``live/entry_price``, ``live/exit_price``,
``live/realized_pnl``, ``live/duration_seconds`` (plus ``live/qty``, ``live/fees``); per candle's equity event
``live/equity``, ``live/cash``, ``live/drawdown`` (from the event, or the fall from the peak equity the sink has
seen), ``live/unrealized_pnl`` and ``live/position/<symbol>``, downsampled to one row per `equity_interval_s` of
market time (the last one is always logged at close); ``live/position/<symbol>`` also per fill. Backtest, paper
and live runs log the same keys, so they compare side by side.

Shadow models (`bot.shadow`) log beside them under ``shadow/<name>/``: per closed trade ``realized_pnl``,
``duration_seconds`` and ``trades``; per mark ``equity``, ``cash``, ``realized_pnl``, ``trades`` and
``agreement`` (share of decisions whose target equalled the live one), downsampled like the live equity.

Charts (the same as training's evaluation, `bot.sinks.wandb_charts`): ``live/cumulative_pnl``,
``live/win_loss_distribution``, ``live/duration_vs_return``, ``live/win_rate_by_hour`` and ``live/trades``,
rebuilt in the sink's thread every `charts_interval_s` of wall time when new trades closed, and at close (the end
of a backtest). The model sha256 is in the run config and summary (``model_sha``).

Where the run goes: ``$WANDB_DIR`` when set (W&B's own convention), else the directory the caller gives (a
run directory), else ``<output_dir>/wandb`` of the config, never the working directory.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import psutil
import structlog

from bot.config import WandbConfig
from bot.events import EquityEvent, Event, FillEvent, ShadowEquityEvent, ShadowTradeClosedEvent, TradeClosedEvent
from monitoring.metrics import SinkStats

log = structlog.get_logger()

_STOP = object()
DEFAULT_EQUITY_INTERVAL_S = 3600.0
"""Market time between two logged equity rows (1 h candles: every candle; 1 m candles: one in 60)."""
DEFAULT_CHARTS_INTERVAL_S = 300.0
"""Wall time between two rebuilds of the trading charts while trades keep closing."""


def wandb_dir(default: Path | None, env: Mapping[str, str] | None = None) -> Path | None:
    """Return where a W&B run is written: $WANDB_DIR when set, else `default` (None: wandb's own default)."""
    env = os.environ if env is None else env
    configured = (env.get("WANDB_DIR") or "").strip()
    return Path(configured).expanduser() if configured else default


class LiveRun(Protocol):
    """The part of a wandb run the sink uses."""

    def log(self, data: dict[str, Any]) -> None:
        """Log one row."""
        ...

    def finish(self) -> None:
        """Finish the run."""
        ...


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
    if isinstance(event, ShadowTradeClosedEvent):
        return {
            f"shadow/{event.model}/realized_pnl": float(event.realized_pnl),
            f"shadow/{event.model}/duration_seconds": float(event.duration_seconds),
        }
    if isinstance(event, ShadowEquityEvent):
        row = {
            f"shadow/{event.model}/equity": float(event.equity),
            f"shadow/{event.model}/cash": float(event.cash),
            f"shadow/{event.model}/realized_pnl_total": float(event.realized_pnl),
            f"shadow/{event.model}/trades": event.trades,
        }
        if event.agreement is not None:
            row[f"shadow/{event.model}/agreement"] = event.agreement
        return row
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
        equity_interval_s: float = DEFAULT_EQUITY_INTERVAL_S,
        charts_interval_s: float = DEFAULT_CHARTS_INTERVAL_S,
        charts: bool = True,
    ) -> None:
        """Create the run with `run_factory` (in the sink's thread) once `start` is called."""
        if queue_size < 1:
            raise ValueError(f"wandb live queue_size must be >= 1, was {queue_size}")
        if equity_interval_s < 0 or charts_interval_s <= 0:
            raise ValueError(
                f"wandb live intervals must be >= 0 (equity) and > 0 (charts), were {equity_interval_s}, "
                f"{charts_interval_s}"
            )
        self._factory = run_factory
        self._equity_interval = timedelta(seconds=equity_interval_s)
        self._charts_interval_s = charts_interval_s
        self._charts = charts
        self._last_equity_ts: datetime | None = None
        self._pending_equity: dict[str, Any] | None = None
        self._last_shadow_ts: dict[str, datetime] = {}
        self._pending_shadow: dict[str, dict[str, Any]] = {}
        self._peak_equity = 0.0
        self._trades: list[dict[str, Any]] = []
        """Closed trades so far (built on the loop from the event; the charts are built in the thread)."""
        self._trades_charted = 0
        self.equity_rows_skipped = 0
        """Equity events not logged because of the downsampling (counted, never logged one by one)."""
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
        """Queue the event's row (equity downsampled), or count a drop; never blocks."""
        row = event_metrics(event, self._positions)
        if row is None:
            return
        if isinstance(event, EquityEvent):
            equity = float(event.equity)
            self._peak_equity = max(self._peak_equity, equity)
            if not event.drawdown and self._peak_equity > 0:
                row["live/drawdown"] = 1.0 - equity / self._peak_equity
            row.update({f"live/position/{symbol}": amount for symbol, amount in self._positions.items()})
            if self._last_equity_ts is not None and event.ts - self._last_equity_ts < self._equity_interval:
                self._pending_equity = row  # logged at close if it stays the last one
                self.equity_rows_skipped += 1
                return
            self._last_equity_ts, self._pending_equity = event.ts, None
        elif isinstance(event, ShadowEquityEvent):
            last = self._last_shadow_ts.get(event.model)
            if last is not None and event.ts - last < self._equity_interval:
                self._pending_shadow[event.model] = row
                self.equity_rows_skipped += 1
                return
            self._last_shadow_ts[event.model] = event.ts
            self._pending_shadow.pop(event.model, None)
        elif isinstance(event, TradeClosedEvent):
            self._trades.append(
                {
                    "symbol": event.symbol,
                    "side": event.side.value,
                    "entry_time": event.ts - timedelta(seconds=event.duration_seconds),
                    "exit_time": event.ts,
                    "entry_price": float(event.entry_price),
                    "exit_price": float(event.exit_price),
                    "qty": float(event.qty),
                    "pnl": float(event.realized_pnl),
                    "fees": float(event.fees),
                    "duration_seconds": float(event.duration_seconds),
                }
            )
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
        self.stats.accepted += 1

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
        next_charts = time.monotonic() + self._charts_interval_s
        try:
            while True:
                try:
                    item = self._queue.get(timeout=max(0.01, next_charts - time.monotonic()))
                except queue.Empty:
                    item = None
                if time.monotonic() >= next_charts:
                    next_charts = time.monotonic() + self._charts_interval_s
                    if run is not None:
                        self._log_charts(run)
                if item is None:
                    continue
                if item is _STOP:
                    break
                if run is None:
                    self.stats.dropped += 1
                    continue
                try:
                    run.log(item)  # type: ignore[arg-type]
                    self.stats.delivered += 1
                except Exception:
                    self.stats.failures += 1
                    log.exception("wandb_live_log_failed")
        finally:
            if run is not None:
                self._log_charts(run)
                try:
                    run.finish()
                except Exception:
                    log.exception("wandb_live_finish_failed")
            self._finished.set()

    def _log_charts(self, run: LiveRun) -> None:
        """Rebuild the trading charts when trades closed since the last ones (in the sink's thread)."""
        trades = self._trades[:]  # list copy: the loop may append meanwhile
        if not self._charts or len(trades) == self._trades_charted:
            return
        try:
            import pandas as pd

            from bot.sinks.wandb_charts import trade_plots

            run.log({**trade_plots("live", pd.DataFrame(trades)), "live/trades_closed": len(trades)})
            self._trades_charted = len(trades)
            self.stats.charts += 1
        except Exception:
            self.stats.failures += 1
            log.exception("wandb_live_charts_failed")

    def close(self, timeout_s: float = 10.0) -> bool:
        """Log the last equity row and the charts, finish the run; wait at most `timeout_s`; return if it finished."""
        if self._pending_equity is not None:
            self.log_metrics(self._pending_equity)
            self._pending_equity = None
        for model in list(self._pending_shadow):
            self.log_metrics(self._pending_shadow.pop(model))
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
            delivered=self.stats.delivered,
            dropped=self.stats.dropped,
            failures=self.stats.failures,
            finished=finished,
            equity_rows_skipped=self.equity_rows_skipped,
        )
        return finished


def wandb_run_factory(
    config: WandbConfig,
    *,
    run_config: Mapping[str, Any],
    model_sha: str | None,
    name: str | None = None,
    directory: Path | None = None,
    job_type: str | None = None,
) -> Callable[[], LiveRun]:
    """Return a factory that starts the daemon's W&B run (wandb imported only when it runs).

    The run goes under $WANDB_DIR, else `directory`, else the run directory of a named backtest
    (``<output_dir>/<run_name>/wandb``), else ``<output_dir>/wandb`` of `run_config`, never ./wandb; its job type is
    `job_type`, else ``backtest`` for a backtest and ``live-trading`` for paper and live.
    """
    resolved = config.resolved()
    bot_section = run_config.get("bot")
    mode = bot_section.get("mode") if isinstance(bot_section, Mapping) else None
    kind = job_type or ("backtest" if mode == "backtest" else "live-trading")
    output_dir = Path(str(run_config.get("output_dir") or "outputs"))
    run_name = run_config.get("run_name")
    # A named backtest writes its run directory at <output_dir>/<run_name>/: its W&B run goes beside its files.
    fallback = (output_dir / str(run_name) if mode == "backtest" and run_name else output_dir) / "wandb"
    target = wandb_dir(directory or fallback)

    def start() -> LiveRun:
        import wandb

        if target is not None:
            target.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=resolved.project,
            entity=resolved.entity,
            mode=resolved.mode,
            job_type=kind,
            name=name,
            group=resolved.group,
            tags=list(resolved.tags),
            config={**dict(run_config), "model_sha": model_sha},
            dir=str(target) if target is not None else None,
            reinit="create_new",
            # console off: the daemon's stdout/stderr are its logs; no stats process (wandb-facts.md).
            settings=wandb.Settings(x_disable_stats=True, console="off", silent=True),
        )
        run.summary["model_sha"] = model_sha
        result: LiveRun = run
        return result

    return start


WANDB_SERVICE_NAMES = ("wandb-core", "wandb")
"""Process names of the W&B service a run starts as a child."""


def stop_stalled_wandb_service() -> list[int]:
    """SIGKILL this process's W&B service children once a run's finish has timed out; return their pids.

    W&B (0.31) registers an exit hook that tells its service to tear down and then waits for the process with no
    timeout (``ServiceProcess.join``): a stalled service would hold the daemon's exit forever.
    """
    stopped: list[int] = []
    for child in psutil.Process().children():
        try:
            if child.name().startswith(WANDB_SERVICE_NAMES):
                child.kill()
                stopped.append(child.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # gone meanwhile, or not ours to stop
    log.warning(
        "wandb_service_stopped",
        pids=stopped,
        note="its run did not finish in time; the offline run keeps what was written (wandb sync uploads it)",
    )
    return stopped
