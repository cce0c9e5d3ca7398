"""How long a sweep will take, said before it starts: the trials' steps at a measured (or estimated) rate."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitoring.run_store import CONFIG_FILE, current_config
from training.sweep.overrides import to_overrides

DEFAULT_STEPS_PER_S = {"mlp": 12_000.0, "transformer": 400.0}
"""Whole-trial rates (training, validation passes, test evaluation, export) seen on a 2-core CPU, per family."""
TRIAL_OVERHEAD_S = 4.0
"""Per-trial time outside PPO updates (data, splits, test evaluation, ONNX export, W&B run) when measuring
from earlier runs' training time."""
MAX_RUNS_READ = 200


@dataclass(frozen=True)
class DurationEstimate:
    """Expected wall time of the trials this process will run."""

    seconds: float
    trials: int
    steps: int
    """Environment steps over all trials (each trial's budget rounded up to whole PPO updates)."""
    source: str
    """Where the rates came from, for the user."""


def trial_shape(overrides: Sequence[str]) -> tuple[int, str]:
    """Return (environment steps it will run, model family) of one trial's overrides."""
    from training.train import load_train_config

    cfg = load_train_config(list(overrides))
    ppo = cfg.training.ppo
    batch = ppo.num_envs * ppo.num_steps
    return math.ceil(ppo.total_timesteps / batch) * batch, cfg.model.name


def measured_rates(output_dir: Path) -> tuple[dict[str, float], int]:
    """Median whole-trial steps/s per model family over the finished runs under `output_dir`, and how many."""
    rates: dict[str, list[float]] = {}
    summaries = sorted(output_dir.glob("*/summary.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in summaries[:MAX_RUNS_READ]:
        try:
            summary = json.loads(path.read_text())
            config = current_config(json.loads((path.parent / CONFIG_FILE).read_text()))
            steps = float(config["training"]["ppo"]["total_timesteps"])
            seconds = float(summary["train_seconds"]) + TRIAL_OVERHEAD_S
            family = str(config["model"]["name"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # unreadable or not a run's config
            continue
        if seconds > 0 and steps > 0:
            rates.setdefault(family, []).append(steps / seconds)
    return {family: statistics.median(values) for family, values in rates.items()}, sum(map(len, rates.values()))


def estimate_duration(
    base_overrides: Sequence[str], sets: Sequence[Mapping[str, Any]], output_dir: Path
) -> DurationEstimate:
    """Estimate the wall time of `sets` (one parameter set per trial) from earlier runs, else default rates."""
    measured, runs = measured_rates(output_dir)
    seconds, steps, families = 0.0, 0, set()
    for params in sets:
        trial_steps, family = trial_shape([*base_overrides, *to_overrides(params)])
        rate = measured.get(family) or DEFAULT_STEPS_PER_S.get(family, DEFAULT_STEPS_PER_S["transformer"])
        seconds += trial_steps / rate
        steps += trial_steps
        families.add(family)
    used = sorted(f for f in families if f in measured)
    if used:
        source = f"rates measured from {runs} earlier runs under {output_dir}/ ({', '.join(used)})"
        guessed = sorted(families - set(used))
        if guessed:
            source += f"; estimated for {', '.join(guessed)}"
    else:
        source = "estimated rates (no earlier runs under " + f"{output_dir}/ to measure from)"
    return DurationEstimate(seconds=seconds, trials=len(sets), steps=steps, source=source)


def format_duration(estimate: DurationEstimate) -> str:
    """One line: trials, steps and the expected wall time."""
    return (
        f"expected duration: ~{_human(estimate.seconds)} for {estimate.trials} trials, "
        f"{estimate.steps:,} environment steps ({estimate.source})"
    )


def _human(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
