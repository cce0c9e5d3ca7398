"""Out-of-sample evaluation of a policy: one deterministic pass over a split, against the baselines.

The policy trades a sequential `TradingEnv` over the split (its decisions see its own position, as live);
the targets it chose are then priced by `bot.evaluation.simulate_positions`, the same arithmetic the env
uses (a test in tests/test_metrics.py checks they agree bar by bar), next to buy-and-hold and an SMA
crossover on the same candles and costs.

The split's first bar is the first decision: the evaluation frame starts `FeatureSpec.min_history - 1` bars
earlier so the first observation window is complete. Those warm-up bars are history the policy may look at
(they precede the split), never bars it trades.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import numpy.typing as npt
import pandas as pd

from adapters.costs import CostModel
from adapters.data.splits import Segment
from bot.evaluation import EvaluationReport, Trade, evaluate_with_baselines, simulate_positions
from bot.model.features import FeatureSpec
from training.env import EnvConfig, TradingEnv

Actor = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.generic]]
"""Maps a batch of (normalised) observations to a batch of actions."""


@dataclass(frozen=True)
class SplitEvaluation:
    """What one evaluation pass produced."""

    frame: pd.DataFrame
    """The traded bars (the split), first decision at row 0."""
    targets: npt.NDArray[np.float64]
    """Target position decided at each bar's close."""
    reports: dict[str, EvaluationReport]
    """`policy`, `buy_and_hold`, `sma_crossover`."""
    trades: pd.DataFrame
    """The policy's closed (and still open) trades."""
    equity: pd.Series
    """The policy's equity curve, one value per traded bar."""


def frame_with_warmup(frame: pd.DataFrame, segment: Segment, spec: FeatureSpec) -> pd.DataFrame:
    """Return the segment's rows preceded by the bars its first observation window needs."""
    start = segment.start - (spec.min_history - 1)
    if start < 0:
        raise ValueError(
            f"the split starting at row {segment.start} has only {segment.start} earlier bars; "
            f"the features need {spec.min_history - 1} of warm-up"
        )
    return frame.iloc[start : segment.stop]


def policy_targets(
    act: Actor, frame: pd.DataFrame, spec: FeatureSpec, env_config: EnvConfig, costs: CostModel
) -> tuple[pd.DataFrame, npt.NDArray[np.float64]]:
    """Run `act` once over `frame` (warm-up included); return the traded frame and the targets chosen."""
    config = replace(env_config, episode_length=None, random_start=False)
    env = TradingEnv(frame, config, spec=spec, costs=costs)
    obs, info = env.reset(seed=0)
    start = int(info["start_index"])
    levels = np.asarray(config.actions, dtype=np.float64)
    low, high = float(levels.min()), float(levels.max())
    chosen: list[float] = []
    # A policy that can encode every bar's window up front (training.models.DeterministicActor) runs
    # batched over the pass and only its position-dependent rest per bar.
    over_windows = getattr(act, "over_windows", None)
    act_at = over_windows(env.market.windows[start:]) if callable(over_windows) else None
    done = False
    while not done:
        action = (act(obs[None, :]) if act_at is None else act_at(len(chosen), obs))[0]
        if config.continuous:
            chosen.append(float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], low, high)))
            step_action: object = np.asarray(action, dtype=np.float32).reshape(1)
        else:
            index = int(action)
            chosen.append(float(levels[index]))
            step_action = index
        obs, _, terminated, truncated, _ = env.step(step_action)
        done = bool(terminated or truncated)
    traded = frame.iloc[start:]
    targets = np.zeros(len(traded), dtype=np.float64)
    targets[: len(chosen)] = chosen
    return traded, targets


def evaluate_split(
    act: Actor,
    frame: pd.DataFrame,
    spec: FeatureSpec,
    env_config: EnvConfig,
    costs: CostModel,
    timeframe: str,
    *,
    baselines: bool = True,
) -> SplitEvaluation:
    """Evaluate `act` over `frame` (warm-up included) with the baselines on the same bars and costs."""
    traded, targets = policy_targets(act, frame, spec, env_config, costs)
    initial = env_config.initial_equity
    if baselines:
        reports = evaluate_with_baselines(traded, targets, costs, timeframe, initial_equity=initial)
    else:
        from bot.evaluation import evaluate_positions

        reports = {"policy": evaluate_positions(traded, targets, costs, timeframe, initial)}
    simulation = simulate_positions(traded, targets, costs, initial_equity=initial)
    trades = pd.DataFrame([_trade_row(t) for t in simulation.trades])
    return SplitEvaluation(traded, targets, reports, trades, simulation.equity)


def _trade_row(trade: Trade) -> dict[str, object]:
    row: dict[str, object] = asdict(trade)
    row["side"] = "long" if trade.direction > 0 else "short"
    row["duration_seconds"] = (trade.exit_time - trade.entry_time).total_seconds()
    return row
