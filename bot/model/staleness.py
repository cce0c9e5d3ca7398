"""Model staleness: how many days have passed since the model's training data ended, against a limit.

The age counts from the card's ``training.data_range.end`` (the last candle the model saw in training,
validation or test). Past ``bot.model_max_age_days`` the daemon raises a warning alert at start and on each
scheduled check; with ``bot.model_stale_action`` it may also refuse to start (``refuse``: one line, exit 2) or
move risk to REDUCING (``reduce``: only orders that shrink positions pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from bot.events import AlertEvent
from bot.model.card import ModelCard, ModelCardError

StaleAction = Literal["alert", "reduce", "refuse"]
STALE_ACTIONS: tuple[StaleAction, ...] = ("alert", "reduce", "refuse")
"""What the daemon does with a stale model, mildest first."""
ALERT_CODE = "model_stale"
"""Alert code of staleness alerts."""
_SECONDS_PER_DAY = 86_400.0


class StaleModelError(RuntimeError):
    """The model is older than allowed and the configured action is to refuse to start."""


@dataclass(frozen=True)
class Staleness:
    """A model's age against the limit."""

    model: str
    """Model name."""
    data_end: datetime
    """End of the model's training data (UTC)."""
    age_days: float
    """Days from data_end to the check."""
    max_age_days: float | None
    """The limit; None means staleness is not checked."""
    action: StaleAction
    """What to do when stale."""

    @property
    def is_stale(self) -> bool:
        """Whether the model is past its maximum age."""
        return self.max_age_days is not None and self.age_days > self.max_age_days

    @property
    def message(self) -> str:
        """One line saying how old the model is and what the limit is."""
        return (
            f"model {self.model} is {self.age_days:.1f} days past the end of its training data "
            f"({self.data_end.date().isoformat()}); bot.model_max_age_days is {self.max_age_days:g}: retrain it"
        )

    def to_alert(self, bot_id: str, ts: datetime) -> AlertEvent:
        """Return the warning alert event for a stale model."""
        return AlertEvent(ts=ts, bot_id=bot_id, level="warning", code=ALERT_CODE, message=self.message)


def training_data_end(card: ModelCard) -> datetime:
    """Return the end of the card's training data as an aware UTC datetime; raise ModelCardError if unreadable."""
    raw = card.data_range.get("end", "")
    try:
        end = datetime.fromisoformat(raw)
    except ValueError:
        raise ModelCardError(
            f"model card {card.name!r}: training.data_range.end {raw!r} is not an ISO-8601 time"
        ) from None
    return end.replace(tzinfo=UTC) if end.tzinfo is None else end.astimezone(UTC)


def check_staleness(
    card: ModelCard, now: datetime, max_age_days: float | None, action: StaleAction = "alert"
) -> Staleness:
    """Return the model's age against `max_age_days` (None: never stale) as of `now`.

    Raises:
        ValueError: a negative or non-finite limit, or an unknown action (config mistakes, name the key).
        ModelCardError: the card's data range end is not a time.
    """
    if max_age_days is not None and (not math.isfinite(max_age_days) or max_age_days < 0):
        raise ValueError(f"bot.model_max_age_days: must be >= 0 or null, was {max_age_days}")
    if action not in STALE_ACTIONS:
        raise ValueError(f"bot.model_stale_action: must be one of {', '.join(STALE_ACTIONS)}, was {action!r}")
    if now.tzinfo is None:
        raise ValueError("check_staleness: now must be timezone-aware (UTC)")
    end = training_data_end(card)
    age = (now - end).total_seconds() / _SECONDS_PER_DAY
    return Staleness(model=card.name, data_end=end, age_days=age, max_age_days=max_age_days, action=action)


def enforce_at_start(staleness: Staleness) -> None:
    """Raise StaleModelError when the model is stale and the action is `refuse` (the daemon exits 2 on it)."""
    if staleness.is_stale and staleness.action == "refuse":
        raise StaleModelError(f"refusing to start: {staleness.message} (bot.model_stale_action=refuse)")
