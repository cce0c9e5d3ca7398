"""Training callbacks: hooks PPO calls at fixed points; a hook returning False stops training."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True, slots=True)
class EpisodeInfo:
    """One finished episode of one sub-environment."""

    env_index: int
    """Index of the sub-environment in the vector env."""
    episode_return: float
    """Undiscounted sum of rewards."""
    length: int
    """Number of environment steps in the episode."""
    global_step: int
    """Total environment steps (all sub-environments) when the episode ended."""


@dataclass
class CallbackContext:
    """What PPO shows its callbacks; one object, updated in place as training advances."""

    model: nn.Module
    """The network being trained."""
    config: Any
    """The trainer's configuration (a PPOConfig)."""
    global_step: int = 0
    """Total environment steps taken so far, summed over sub-environments."""
    iteration: int = 0
    """Current rollout/update iteration, starting at 1."""
    num_iterations: int = 0
    """Number of iterations the run is planned for."""
    observations: np.ndarray | None = None
    """Observations returned by the last vector step."""
    actions: np.ndarray | None = None
    """Actions of the last vector step (in on_step) or of the whole rollout (from on_rollout_end)."""
    rewards: np.ndarray | None = None
    """Rewards of the last vector step."""
    terminations: np.ndarray | None = None
    """Termination flags of the last vector step."""
    truncations: np.ndarray | None = None
    """Truncation flags of the last vector step."""
    infos: dict[str, Any] = field(default_factory=dict)
    """Info dict of the last vector step, as the vector env returned it."""
    episode: EpisodeInfo | None = None
    """The episode that just ended (set during on_episode_end)."""
    episodes: list[EpisodeInfo] = field(default_factory=list)
    """Episodes finished during the current rollout."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Metrics of the last update (losses/*, charts/*, grad_norm/*)."""


class Callback:
    """Base class with every hook a no-op; override the ones you need and return False to stop."""

    def on_training_start(self, context: CallbackContext) -> bool:
        """Run once before the first environment step."""
        return True

    def on_step(self, context: CallbackContext) -> bool:
        """Run after every vector-env step."""
        return True

    def on_episode_end(self, context: CallbackContext) -> bool:
        """Run once per finished episode, with context.episode set."""
        return True

    def on_rollout_end(self, context: CallbackContext) -> bool:
        """Run after a rollout is collected, before the update."""
        return True

    def on_update(self, context: CallbackContext) -> bool:
        """Run after each PPO update, with context.metrics filled."""
        return True

    def on_training_end(self, context: CallbackContext) -> None:
        """Run once when training stops, whether it finished or a hook stopped it."""


class CallbackList(Callback):
    """Run several callbacks in order; a hook stops training if any of them returns False.

    Every callback sees every event, even after an earlier one asked to stop. A falsy result stops training
    (False, numpy.False_), but None (a hook that forgot to return) does not.
    """

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.callbacks = list(callbacks)

    def __iter__(self) -> Iterator[Callback]:
        return iter(self.callbacks)

    def __len__(self) -> int:
        return len(self.callbacks)

    def on_training_start(self, context: CallbackContext) -> bool:
        """Run every callback's on_training_start."""
        return _keep_going([callback.on_training_start(context) for callback in self.callbacks])

    def on_step(self, context: CallbackContext) -> bool:
        """Run every callback's on_step."""
        return _keep_going([callback.on_step(context) for callback in self.callbacks])

    def on_episode_end(self, context: CallbackContext) -> bool:
        """Run every callback's on_episode_end."""
        return _keep_going([callback.on_episode_end(context) for callback in self.callbacks])

    def on_rollout_end(self, context: CallbackContext) -> bool:
        """Run every callback's on_rollout_end."""
        return _keep_going([callback.on_rollout_end(context) for callback in self.callbacks])

    def on_update(self, context: CallbackContext) -> bool:
        """Run every callback's on_update."""
        return _keep_going([callback.on_update(context) for callback in self.callbacks])

    def on_training_end(self, context: CallbackContext) -> None:
        """Run every callback's on_training_end."""
        for callback in self.callbacks:
            callback.on_training_end(context)


def _keep_going(results: list[bool]) -> bool:
    # A falsy result (False, numpy.False_) stops; None, from a hook that forgot to return, does not.
    return not any(result is not None and not result for result in results)
