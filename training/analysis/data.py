"""What a policy is analysed on: real candles of the training run's split, run through the policy as in evaluation."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import structlog

from adapters.costs import CostModel
from adapters.errors import DataError
from monitoring.run_store import current_config
from training.analysis.policy import AnalysedPolicy, AnalysisError, FloatArray, ObsArray

log = structlog.get_logger()

TREND_BARS = 24
"""Bars of the trailing return that defines the trend regime."""


@dataclass
class ObservationSet:
    """The policy's own trajectory over real candles: what it saw, what it did, what the market did next."""

    obs: ObsArray
    """Normalised observations (N, D), exactly as the env fed them."""
    times: pd.DatetimeIndex
    """Open time of each observation's bar (UTC)."""
    actions: npt.NDArray[np.int64]
    """Deterministic action index per bar (-1 for a continuous policy)."""
    positions: FloatArray
    """Target position chosen at each bar."""
    trailing_return: FloatArray
    """log(close[t] / close[t - TREND_BARS]) (NaN without enough history)."""
    volatility: FloatArray
    """Std of the last 24 one-bar log returns at bar t."""
    forward_return: FloatArray
    """close[t + 1] / close[t] - 1 (NaN on the last bar)."""


def collect_observations(
    policy: AnalysedPolicy, frame: pd.DataFrame, env_config: Any, costs: CostModel
) -> ObservationSet:
    """Trade `frame` once with the policy's deterministic actions in a sequential env; record every step."""
    from training.env import TradingEnv

    config = replace(env_config, episode_length=None, random_start=False, window=policy.spec.window)
    env = TradingEnv(frame, config, spec=policy.spec, costs=costs)
    obs, info = env.reset(seed=0)
    start = int(info["start_index"])
    seen: list[ObsArray] = []
    actions: list[int] = []
    positions: list[float] = []
    done = False
    while not done:
        seen.append(obs)
        index, target = policy.decide(obs[None, :])
        actions.append(int(index[0]))
        positions.append(float(target[0]))
        step_action: Any = int(index[0]) if policy.is_discrete else np.asarray([target[0]], dtype=np.float32)
        obs, _, terminated, truncated, _ = env.step(step_action)
        done = bool(terminated or truncated)
    n = len(seen)
    bars = np.arange(start, start + n)
    close = frame["close"].to_numpy(dtype=np.float64)
    log_close = np.log(close)
    trailing = np.full(n, np.nan)
    ok = bars >= TREND_BARS
    trailing[ok] = log_close[bars[ok]] - log_close[bars[ok] - TREND_BARS]
    returns = np.diff(log_close, prepend=log_close[0])
    vol = pd.Series(returns).rolling(24, min_periods=24).std(ddof=0).to_numpy()[bars]
    forward = np.full(n, np.nan)
    has_next = bars + 1 < len(close)
    forward[has_next] = close[bars[has_next] + 1] / close[bars[has_next]] - 1.0
    return ObservationSet(
        np.stack(seen).astype(np.float32),
        pd.DatetimeIndex(frame.index[bars]),
        np.asarray(actions, dtype=np.int64),
        np.asarray(positions, dtype=np.float64),
        trailing,
        vol,
        forward,
    )


@dataclass
class AnalysisData:
    """Candles to analyse on, with the env and cost settings of the training run."""

    frame: pd.DataFrame
    env_config: Any
    costs: CostModel
    description: dict[str, Any]


def load_training_config(config_path: str | Path | None, policy: AnalysedPolicy) -> dict[str, Any]:
    """Read the training config (models/config.json), else the one in the model card, in today's shape."""
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise AnalysisError(f"config file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise AnalysisError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise AnalysisError(f"{path} must hold a JSON object (the training config)")
        return current_config(data)
    return current_config(policy.card.training_config) if policy.card is not None else {}


def load_analysis_data(
    policy: AnalysedPolicy,
    config: Mapping[str, Any],
    *,
    data_path: str | Path | None = None,
    split: str = "test",
    max_bars: int = 3000,
) -> AnalysisData:
    """Pick the candles: `data_path`, else the run's data (its `split`), else the bundled sample; last `max_bars`."""
    from adapters.data.ohlcv import load_ohlcv
    from adapters.data.sample import sample_path
    from adapters.data.splits import split_by_fraction
    from bot.config import DataConfig, build
    from bot.errors import ConfigError
    from training.env import EnvConfig
    from training.evaluation import frame_with_warmup

    try:
        env_config = build(EnvConfig, config.get("env") or {}, "env")
        costs = build(CostModel, config.get("costs") or {}, "costs")
        data_config = build(DataConfig, config.get("data") or {}, "data")
    except ConfigError as e:
        raise AnalysisError(f"training config: {e}") from e
    spec = policy.spec
    warmup = spec.min_history - 1
    try:
        if data_path is not None:
            path = Path(data_path)
            if not path.is_file():
                raise AnalysisError(f"--data-path {path} does not exist")
            frame = load_ohlcv(path, gaps="allow")
            description: dict[str, Any] = {"source": str(path), "split": "whole file"}
        else:
            configured = Path(data_config.path) if data_config.path else sample_path()
            if not configured.is_file():
                log.warning("training_data_missing", path=str(configured), fallback="bundled sample")
                configured = sample_path()
            full = load_ohlcv(configured, gaps=data_config.gaps)
            if data_config.start:
                full = full.loc[pd.Timestamp(data_config.start, tz="UTC") :]
            if data_config.end:
                full = full.loc[: pd.Timestamp(data_config.end, tz="UTC")]
            test_fraction = 1.0 - data_config.train_fraction - data_config.validation_fraction
            parts = split_by_fraction(
                full,
                data_config.train_fraction,
                data_config.validation_fraction,
                test_fraction,
                embargo_bars=_embargo_bars(config, warmup),
            )
            segments = {"train": parts.train, "validation": parts.validation, "test": parts.test}
            if split not in segments:
                raise AnalysisError(f"--split must be one of {sorted(segments)}, was {split!r}")
            segment = segments[split]
            if split == "train" or segment.start < warmup:
                frame = full.iloc[segment.start : segment.stop]
            else:
                frame = frame_with_warmup(full, segment, spec)
            description = {"source": str(configured), "split": split}
    except DataError as e:
        raise AnalysisError(str(e)) from e
    if max_bars > 0 and len(frame) > max_bars + warmup:
        frame = frame.iloc[-(max_bars + warmup) :]
    if len(frame) < spec.min_history + 2:
        raise AnalysisError(
            f"{description['source']}: {len(frame)} candles; the features need {spec.min_history} before the first "
            "observation"
        )
    description.update(first=str(frame.index[0]), last=str(frame.index[-1]), candles=len(frame))
    return AnalysisData(frame, env_config, costs, description)


def _embargo_bars(config: dict[str, Any], warmup: int) -> int:
    """The bars the training run purged between its split parts (training.embargo_bars, else the warm-up)."""
    configured = (config.get("training") or {}).get("embargo_bars")
    if configured is None:
        return warmup
    if not isinstance(configured, int) or configured < 0:
        raise AnalysisError(f"training config: training.embargo_bars must be an integer >= 0, was {configured!r}")
    return configured
