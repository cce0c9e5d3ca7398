"""WandbCallback: training progress and trading performance to Weights & Biases.

Users extend it by overriding `on_step` / `on_episode_end` (the user guide, section 7) and calling `super()`.
It is only added to the callback list when `wandb.enabled=true`, so a run with logging off pays nothing.

What it logs (keys against `global_step`):
- every `wandb.log_frequency.steps` env steps (checked after each vector step, so a cadence below one PPO
  update of num_envs × num_steps steps is honoured): the step-level metrics `charts/episodic_return` (mean
  over episodes finished since the last log), `charts/reward` (mean reward per env step since then) and
  `actions/histogram` (the actions taken since then);
- at the first PPO update after each `wandb.log_frequency.steps` env steps (they exist once per update):
  `losses/*` (policy, value, entropy, approx KL, clip fraction, explained variance), `grad_norm/*` (total and
  per layer), `charts/learning_rate`, `charts/SPS`;
- on every episode end: `episode/return`, `episode/length`;
- on evaluation (`log_evaluation`): the evaluation table to the run summary, and trading plots — cumulative
  PnL, win/loss distribution, trade duration vs return, win rate by hour — plus a trades table;
- checkpoints as versioned `model` artifacts with aliases `latest` and `best` (`wandb.log_model=true`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import structlog

from bot.config import WandbConfig
from bot.sinks.wandb_charts import trade_plots
from bot.sinks.wandb_live import wandb_dir
from training.callbacks import Callback, CallbackContext

log = structlog.get_logger()


def init_run(
    config: WandbConfig, run_config: Mapping[str, Any], *, job_type: str, name: str | None, directory: Path | None
) -> Any:
    """Start a W&B run from our config (offline works with no network and no key)."""
    import wandb

    resolved = config.resolved()
    directory = wandb_dir(directory)  # WANDB_DIR, when set, wins over the run directory
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=resolved.project,
        entity=resolved.entity,
        mode=resolved.mode,
        job_type=job_type,
        name=name,
        group=resolved.group,
        tags=list(resolved.tags),
        config=dict(run_config),
        dir=str(directory) if directory is not None else None,
        reinit="finish_previous",
        settings=wandb.Settings(x_disable_stats=True, console="off", silent=True),
    )


class WandbCallback(Callback):
    """Log training metrics, trading performance and checkpoints to a W&B run."""

    def __init__(self, config: WandbConfig, run: Any) -> None:
        self.config = config
        self.run = run
        self.log_every = max(1, config.log_frequency.steps)
        self._last_logged_step = -self.log_every
        self._last_step_log = 0
        self._episode_returns: list[float] = []
        self._reward_sum = 0.0
        self._reward_count = 0
        self._actions: list[np.ndarray] = []
        self._best_artifact_score = -math.inf

    # --- training progress -------------------------------------------------------------------------
    def on_step(self, context: CallbackContext) -> bool:
        """Log the step-level metrics every `log_frequency.steps` env steps; override to add some (call super())."""
        if context.rewards is not None:
            rewards = np.asarray(context.rewards, dtype=np.float64)
            self._reward_sum += float(rewards.sum())
            self._reward_count += rewards.size
        if context.actions is not None:
            self._actions.append(np.array(context.actions, dtype=np.float64).ravel())
            if len(self._actions) > 8192:  # a cadence of millions of steps keeps the latest actions only
                del self._actions[:4096]
        if context.global_step - self._last_step_log >= self.log_every:
            self._last_step_log = context.global_step
            self._log_step_metrics(context.global_step)
        return True

    def _log_step_metrics(self, step: int) -> None:
        import wandb

        payload: dict[str, Any] = {}
        if self._episode_returns:
            payload["charts/episodic_return"] = float(np.mean(self._episode_returns))
            self._episode_returns.clear()
        if self._reward_count:
            payload["charts/reward"] = self._reward_sum / self._reward_count
            self._reward_sum, self._reward_count = 0.0, 0
        if self._actions:
            payload["actions/histogram"] = wandb.Histogram(np.concatenate(self._actions))
            self._actions.clear()
        if payload:
            self.run.log(payload, step=step)

    def on_episode_end(self, context: CallbackContext) -> bool:
        """Log the finished episode's return and length; override to add metrics (call super())."""
        episode = context.episode
        if episode is not None:
            self._episode_returns.append(episode.episode_return)
            self.run.log(
                {"episode/return": episode.episode_return, "episode/length": episode.length},
                step=context.global_step,
            )
        return True

    def on_update(self, context: CallbackContext) -> bool:
        """Log losses, gradient norms, learning rate, speed and action distribution at the set cadence."""
        if context.global_step - self._last_logged_step < self.log_every:
            return True
        self._last_logged_step = context.global_step
        payload: dict[str, Any] = {k: v for k, v in context.metrics.items() if _is_number(v)}
        self.run.log(payload, step=context.global_step)
        return True

    # --- evaluation and checkpoints ----------------------------------------------------------------
    def log_evaluation(
        self,
        split: str,
        table: Mapping[str, Mapping[str, Any]],
        trades: pd.DataFrame,
        equity: pd.Series | None = None,
    ) -> None:
        """Put the evaluation table in the summary and log trading plots and the trades table."""
        import wandb

        for strategy, figures in table.items():
            for key, value in figures.items():
                if _is_number(value):
                    self.run.summary[f"{split}/{strategy}/{key}"] = value
        payload: dict[str, Any] = {}
        if equity is not None and len(equity):
            curve = wandb.Table(
                data=[[i, float(v)] for i, v in enumerate(equity.to_numpy())], columns=["bar", "equity"]
            )
            payload[f"{split}/equity_curve"] = wandb.plot.line(curve, "bar", "equity", title=f"Equity ({split})")
        payload.update(trade_plots(split, trades))
        if payload:
            self.run.log(payload)

    def log_checkpoint(self, path: Path, *, score: float, metadata: Mapping[str, Any] | None = None) -> bool:
        """Save a checkpoint as a `model` artifact aliased `latest`, and `best` when `score` is the best so far."""
        if not self.config.log_model:
            return False
        import wandb

        is_best = score > self._best_artifact_score
        if is_best:
            self._best_artifact_score = score
        artifact = wandb.Artifact(name=f"model-{self.run.id}", type="model", metadata=dict(metadata or {}))
        artifact.add_file(str(path))
        aliases = ["latest", "best"] if is_best else ["latest"]
        self.run.log_artifact(artifact, aliases=aliases)
        return is_best

    def log_files(self, paths: Sequence[Path], *, name: str, kind: str = "model", aliases: Sequence[str] = ()) -> None:
        """Log a set of files (e.g. the exported ONNX model and its card) as one artifact."""
        import wandb

        artifact = wandb.Artifact(name=name, type=kind)
        for path in paths:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact, aliases=list(aliases))

    def finish(self, exit_code: int = 0) -> None:
        """Finish the run (marks it finished, not left `running`)."""
        self.run.finish(exit_code=exit_code)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.floating | np.integer) and not isinstance(value, bool)
