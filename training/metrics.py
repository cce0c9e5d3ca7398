"""Trading evaluation metrics: re-exported from `bot.evaluation`, the one implementation training and the daemon share.

The functions are numpy/pandas only, so they live on the serving side (the daemon's backtest report needs them
and may not import `training`); this module keeps `training.metrics` working for existing callers.
"""

from __future__ import annotations

from bot.evaluation import (
    SECONDS_PER_YEAR,
    EvaluationReport,
    SimulationResult,
    Trade,
    buy_and_hold_targets,
    compute_metrics,
    evaluate_positions,
    evaluate_with_baselines,
    format_table,
    periods_per_year,
    simulate_positions,
    sma_crossover_targets,
    timeframe_seconds,
)

__all__ = [
    "SECONDS_PER_YEAR",
    "EvaluationReport",
    "SimulationResult",
    "Trade",
    "buy_and_hold_targets",
    "compute_metrics",
    "evaluate_positions",
    "evaluate_with_baselines",
    "format_table",
    "periods_per_year",
    "simulate_positions",
    "sma_crossover_targets",
    "timeframe_seconds",
]
