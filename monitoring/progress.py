"""Progress of long work: a bar with rate and ETA on a terminal, a few structured log lines elsewhere.

    with Progress(total=len(candles), desc="backtest", unit="candle") as progress:
        for candle in candles:
            ...
            progress.update()

On a TTY (stderr) it draws a tqdm bar (tqdm rate-limits its own redraws, so `update` per item is cheap). Off a
TTY (logs, CI) it logs one ``progress`` event at each quarter of the work (done, total, rate, ETA) and one
at the end: a handful of lines, never one per item. Torch-free; `bot` may use it (DESIGN.md: bot imports
monitoring's logging-level helpers).
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any, Self, TextIO

import structlog

log = structlog.get_logger()


def is_terminal(stream: TextIO | None = None) -> bool:
    """Return whether `stream` (default stderr) is a terminal, where a bar is drawn."""
    target = sys.stderr if stream is None else stream
    try:
        return bool(target.isatty())
    except (AttributeError, ValueError):  # a closed or stand-in stream
        return False


class Progress:
    """Count work done against a total; draw a bar on a terminal, log a few lines elsewhere."""

    def __init__(
        self,
        total: int | None,
        *,
        desc: str,
        unit: str = "it",
        bar: bool | None = None,
        log_every_fraction: float = 0.25,
        event: str = "progress",
        stream: TextIO | None = None,
    ) -> None:
        """Start counting; `bar` None draws one when `stream` (default stderr) is a terminal."""
        self.total = total
        self.desc = desc
        self.unit = unit
        self.done = 0
        self.event = event
        self._started = time.perf_counter()
        self._step = max(1, int((total or 0) * log_every_fraction)) if total else None
        self._next_log = self._step
        self._bar: Any = None
        target = sys.stderr if stream is None else stream
        if is_terminal(target) if bar is None else bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True, file=target)

    def rate(self) -> float:
        """Return units per second so far."""
        elapsed = time.perf_counter() - self._started
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta_s(self) -> float | None:
        """Return the seconds left at the rate so far (None without a total or a rate)."""
        rate = self.rate()
        if not self.total or rate <= 0:
            return None
        return max(0.0, (self.total - self.done) / rate)

    def _log(self, event_suffix: str = "") -> None:
        eta = self.eta_s()
        log.info(
            self.event + event_suffix,
            task=self.desc,
            done=self.done,
            total=self.total,
            unit=self.unit,
            per_s=round(self.rate(), 1),
            eta_s=None if eta is None else round(eta, 1),
        )

    def update(self, count: int = 1) -> None:
        """Count `count` more units done."""
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif self._next_log is not None and self.done >= self._next_log and self.done < (self.total or 0):
            self._log()
            while self._next_log <= self.done:
                self._next_log += self._step or 1

    def close(self, *, failed: bool = False) -> None:
        """Close the bar, or log the final line (not when the work `failed`: its error says enough)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif not failed:
            self._log("_done")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(failed=exc is not None)
