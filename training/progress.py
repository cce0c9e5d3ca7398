"""Training progress: a bar with steps/s, ETA and the latest episode return on a TTY, log lines elsewhere."""

from __future__ import annotations

import time
from typing import Any

import structlog

from training.callbacks import Callback, CallbackContext

log = structlog.get_logger()


class ProgressCallback(Callback):
    """Show progress once per update (never per step, so it costs nothing measurable)."""

    def __init__(self, total_steps: int, *, enabled: bool, log_every_fraction: float = 0.1) -> None:
        self.total_steps = total_steps
        self.enabled = enabled
        self.log_every = max(1, int(total_steps * log_every_fraction))
        self._bar: Any = None
        self._last_return: float | None = None
        self._next_log = self.log_every
        self._started = time.perf_counter()
        self._last_step = 0

    def on_training_start(self, context: CallbackContext) -> bool:
        """Open the bar."""
        self._started = time.perf_counter()
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total_steps, unit="step", unit_scale=True, dynamic_ncols=True, desc="train")
        return True

    def on_episode_end(self, context: CallbackContext) -> bool:
        """Remember the latest episode return."""
        if context.episode is not None:
            self._last_return = context.episode.episode_return
        return True

    def on_update(self, context: CallbackContext) -> bool:
        """Advance the bar, or log a line every `log_every_fraction` of the run."""
        step = context.global_step
        if self._bar is not None:
            self._bar.update(step - self._last_step)
            if self._last_return is not None:
                self._bar.set_postfix(episode_return=f"{self._last_return:.4f}", refresh=False)
        elif step >= self._next_log:
            elapsed = time.perf_counter() - self._started
            rate = step / elapsed if elapsed > 0 else 0.0
            eta = (self.total_steps - step) / rate if rate > 0 else None
            log.info(
                "training_progress",
                step=step,
                total=self.total_steps,
                steps_per_s=round(rate),
                eta_s=None if eta is None else round(eta, 1),
                episode_return=self._last_return,
            )
            self._next_log = step + self.log_every
        self._last_step = step
        return True

    def on_training_end(self, context: CallbackContext) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
