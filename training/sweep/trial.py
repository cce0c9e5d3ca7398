"""One sweep trial: parameters → overrides → an in-process training run → the validation objective."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import structlog

from monitoring.run_store import json_safe, new_run_id
from training.sweep.overrides import format_value, to_overrides
from training.sweep.spec import Metric

log = structlog.get_logger()


@dataclass
class TrialResult:
    """What one trial produced; `value` is the validation objective (never a test figure)."""

    number: int
    params: dict[str, Any]
    state: str = "complete"
    """complete, pruned, interrupted or failed."""
    value: float | None = None
    test_total_return: float | None = None
    """Test-split return of the selected checkpoint: information only, never used for selection."""
    run_id: str | None = None
    run_dir: str | None = None
    seconds: float = 0.0
    error: str | None = None
    intermediate: list[float] = field(default_factory=list)

    def attrs(self) -> dict[str, Any]:
        """JSON-safe fields for Optuna user attributes and the summary."""
        return json_safe(dataclasses.asdict(self))  # type: ignore[no-any-return]


class ValidationTracker:
    """Follow validation passes the way train.py picks its checkpoint; the value is the objective so far."""

    def __init__(self, field_name: str, select_metric: str) -> None:
        self.field, self.select_metric = field_name, select_metric
        self.best_select = -math.inf
        self.value: float | None = None
        self.passes = 0

    def update(self, metrics: Mapping[str, float]) -> float | None:
        """Take one validation pass; return the metric at the checkpoint selected so far."""
        self.passes += 1
        score = float(metrics.get(self.select_metric, math.nan))
        score = score if math.isfinite(score) else -math.inf
        if self.value is None or score > self.best_select:
            self.best_select = score
            self.value = float(metrics.get(self.field, math.nan))
        return self.value


class _StopTrial(Exception):
    """Raised inside a training run's validation hook to stop it (pruning)."""


IntermediateHook = Callable[[int, float], bool]
"""Called with (validation pass number, objective so far); returns False to stop the trial."""


@dataclass
class TrialRunner:
    """Run trials: parameters → overrides → one in-process training run → the validation objective."""

    metric: Metric
    base_overrides: tuple[str, ...]
    """Overrides every trial shares (the command line's, plus those the sweep adds)."""
    output_dir: Path
    sweep_dir: Path
    slug: str

    def trial_overrides(self, params: Mapping[str, Any], run_id: str) -> list[str]:
        """Every override of one trial, in order."""
        return [
            *self.base_overrides,
            *to_overrides(params),
            f"output_dir={format_value(str(self.output_dir))}",
            f"run_name={format_value(run_id)}",
            f"training.export_dir={format_value(str(self.sweep_dir / 'exports' / run_id))}",
            "training.publish=true",  # into the sweep's exports/ folder, never the daemon's models/
            "training.progress=false",  # the sweep draws one bar for all trials
        ]

    def run(
        self,
        number: int,
        params: Mapping[str, Any],
        *,
        on_intermediate: IntermediateHook | None = None,
        wandb_run: Any = None,
    ) -> TrialResult:
        """Train one trial and return its result; failures are caught and reported, Ctrl-C is not."""
        from training.train import load_train_config
        from training.train import run as train_run

        result = TrialResult(number=number, params=dict(params), run_id=new_run_id(f"{self.slug}-t{number:04d}"))
        started = time.perf_counter()
        tracker: ValidationTracker | None = None
        log.info("sweep_trial_started", trial=number, run_id=result.run_id, **_log_params(params))
        try:
            assert result.run_id is not None
            cfg = load_train_config(self.trial_overrides(params, result.run_id))
            folds = cfg.training.walk_forward.folds
            tracker = ValidationTracker(self.metric.field, cfg.training.select_metric)
            if wandb_run is not None:
                wandb_run.config.update({"train_config": json_safe(dataclasses.asdict(cfg))}, allow_val_change=True)

            def on_validation(step: int, metrics: Mapping[str, float]) -> None:
                assert tracker is not None
                value = tracker.update(metrics)
                if value is not None and math.isfinite(value) and not folds:
                    result.intermediate.append(value)
                    if on_intermediate is not None and not on_intermediate(tracker.passes, value):
                        raise _StopTrial(f"pruned after validation pass {tracker.passes} (step {step})")

            # train.run prints its test table; keep stdout for the sweep's own results.
            with contextlib.redirect_stdout(sys.stderr):
                outcome = train_run(cfg, wandb_run=wandb_run, on_validation=on_validation)
            result.run_dir = str(outcome.run_dir)
            result.value, result.test_total_return = objective_from_run(outcome.run_dir, self.metric)
            result.state = "interrupted" if outcome.interrupted else "complete"
        except _StopTrial as e:
            result.state, result.error = "pruned", str(e)
            result.value = tracker.value if tracker is not None else None
            result.run_dir = str(self.output_dir / str(result.run_id))
        except Exception as e:  # a bad parameter combination or a crash fails this trial, not the sweep
            log.exception("sweep_trial_failed", trial=number, run_id=result.run_id, error=str(e))
            result.state, result.error = "failed", f"{type(e).__name__}: {e}"
            if wandb_run is not None:
                with contextlib.suppress(Exception):
                    wandb_run.finish(exit_code=1)
        result.seconds = time.perf_counter() - started
        log.info(
            "sweep_trial_finished",
            trial=number,
            state=result.state,
            metric=self.metric.name,
            value=result.value,
            seconds=round(result.seconds, 2),
        )
        return result


def objective_from_run(run_dir: Path, metric: Metric) -> tuple[float, float | None]:
    """Return (validation metric at the selected checkpoint, test return for information) of a finished run."""
    summary = json.loads((run_dir / "summary.json").read_text())
    history = pd.read_parquet(run_dir / "metrics.parquet")
    parts = [(f"fold{k}/", v) for k, v in summary["folds"].items()] if "folds" in summary else [("", summary)]
    values, returns = [], []
    for prefix, part in parts:
        column, step = f"{prefix}validation/{metric.field}", part["best_checkpoint_step"]
        rows = history.loc[history["step"] == step, column].dropna() if column in history else pd.Series()
        if rows.empty:
            raise ValueError(
                f"{run_dir}: no {column} at the selected checkpoint (step {step}); is there a validation split?"
            )
        value = float(rows.iloc[-1])
        values.append(value if math.isfinite(value) else metric.worst())
        test_return = part.get("test", {}).get("policy", {}).get("total_return")
        if test_return is not None:
            returns.append(float(test_return))
    return statistics.fmean(values), (statistics.fmean(returns) if returns else None)


def _log_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {f"param_{k.replace('.', '_')}": v for k, v in params.items()}
