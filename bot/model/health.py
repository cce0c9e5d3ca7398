"""Model health in the daemon: feature drift and staleness of the live model, behind three calls for the engine.

`ModelHealth.start` (once, before trading) checks the model's age: past ``bot.model_max_age_days`` it publishes
a warning alert and, with ``bot.model_stale_action=refuse``, raises `StaleModelError` (the daemon exits 2 with
its one line) or, with ``reduce``, moves risk to REDUCING. `ModelHealth.observe` takes each candle's raw
feature row (O(features), no logging). `check_drift` and `check_staleness` are the scheduled jobs: they set the
gauges, hand the drift figures to `record` (the W&B live run: ``live/drift/<feature>/psi`` and ``.../ks``, so a
run's drift is charted beside its equity) and publish an alert event for each newly drifted feature / while the
model is stale.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol

import numpy.typing as npt
import structlog

from bot.clock import utc_now
from bot.events import Event
from bot.model.card import ModelCard
from bot.model.drift import DriftConfig, DriftMonitor, DriftReport, monitor_for_card
from bot.model.staleness import StaleAction, Staleness, check_staleness, enforce_at_start

log = structlog.get_logger()


class HealthGauges(Protocol):
    """The metrics model health sets (monitoring.metrics.BotMetrics implements it)."""

    def set_feature_drift(self, drift: Mapping[str, tuple[float, float]]) -> None:
        """Record {feature: (psi, ks)}."""
        ...

    def set_model_age(self, days: float) -> None:
        """Record the model's age in days."""
        ...


class ModelHealth:
    """Drift monitor and staleness check of one live model, publishing alerts to the event bus."""

    def __init__(
        self,
        card: ModelCard,
        drift: DriftConfig,
        *,
        bot_id: str,
        emit: Callable[[Event], None],
        max_age_days: float | None = None,
        stale_action: StaleAction = "alert",
        reduce_only: Callable[[str, datetime], None] | None = None,
        gauges: HealthGauges | None = None,
        record: Callable[[dict[str, float]], None] | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        """Build the drift monitor (None, with one warning, for a card without a distribution)."""
        self.card = card
        self.bot_id = bot_id
        self.drift = drift
        self.monitor: DriftMonitor | None = monitor_for_card(card, drift)
        self.max_age_days = max_age_days
        self.stale_action = stale_action
        self._emit = emit
        self._reduce_only = reduce_only
        self._gauges = gauges
        self._record = record
        self._clock = clock
        self.last_drift: DriftReport | None = None
        self.last_staleness: Staleness | None = None

    def use_card(self, card: ModelCard) -> None:
        """Watch a new live model (reload-model, promote): drift against its training distribution, from now on."""
        if card is self.card:
            return
        self.card = card
        self.monitor = monitor_for_card(card, self.drift)
        self.last_drift = None
        self.last_staleness = None

    def start(self) -> Staleness:
        """Check the model's age before trading; raise StaleModelError when stale and the action is refuse."""
        staleness = self._staleness()
        enforce_at_start(staleness)
        self._act_on(staleness)
        return staleness

    def observe(self, features: npt.ArrayLike | None) -> None:
        """Feed one candle's raw feature row (`IncrementalFeatures.latest`; None while warming up is ignored)."""
        if self.monitor is not None and features is not None:
            self.monitor.observe(features)

    async def check_drift(self) -> DriftReport | None:
        """Scheduled job: compute drift, set the gauges, publish an alert per newly drifted feature."""
        if self.monitor is None:
            return None
        now = self._clock()
        report = self.monitor.check(now)
        self.last_drift = report
        if report.is_ready:
            figures = report.gauges()
            if self._gauges is not None:
                self._gauges.set_feature_drift(figures)
            if self._record is not None:
                self._record(drift_row(figures))
        for alert in report.alerts:
            self._emit(alert.to_event(self.bot_id, now))
        return report

    async def check_staleness(self) -> Staleness:
        """Scheduled job: set the model-age gauge; alert (and reduce, if configured) while the model is stale."""
        staleness = self._staleness()
        self._act_on(staleness)
        return staleness

    def _staleness(self) -> Staleness:
        staleness = check_staleness(self.card, self._clock(), self.max_age_days, self.stale_action)
        if self._gauges is not None:
            self._gauges.set_model_age(staleness.age_days)
        return staleness

    def _act_on(self, staleness: Staleness) -> None:
        was_stale = self.last_staleness is not None and self.last_staleness.is_stale
        self.last_staleness = staleness
        if not staleness.is_stale:
            return
        now = self._clock()
        if not was_stale:
            log.warning("model_stale", model=self.card.name, age_days=round(staleness.age_days, 1))
        self._emit(staleness.to_alert(self.bot_id, now))
        if staleness.action == "reduce" and self._reduce_only is not None:
            self._reduce_only(staleness.message, now)


def drift_row(figures: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """The W&B row of one drift check: ``live/drift/<feature>/psi`` and ``live/drift/<feature>/ks``."""
    row: dict[str, float] = {}
    for feature, (psi, ks) in figures.items():
        row[f"live/drift/{feature}/psi"] = psi
        row[f"live/drift/{feature}/ks"] = ks
    return row
