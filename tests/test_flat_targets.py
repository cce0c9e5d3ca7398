"""A backtest's flat-bar targets computed ahead (`bot.model.ahead`): the policy's own one-row targets, bar by bar."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from adapters.types import Candle
from bot.model.ahead import FlatTargets
from bot.model.features import FeatureSpec, PrecomputedFeatures, position_state, raw_observation
from bot.model.policy import OnnxPolicy
from tests.support.policy_model import export_policy, fitted_spec, random_weights


def test_each_bar_gets_the_target_a_one_row_call_gives_a_flat_observation(tmp_path: Path) -> None:
    frame = load_ohlcv(sample_path("BTC/USDT-1h")).iloc[:1_500]
    spec = fitted_spec(frame, train_rows=1_000, window=8)
    policy = OnnxPolicy.load(export_policy(tmp_path, spec, random_weights(spec, 3, (16,), seed=3), (-1.0, 0.0, 1.0)))
    features = PrecomputedFeatures(spec, frame)
    ahead = FlatTargets(policy, features, chunk=100)  # several chunks over the 1,500 bars
    expected: list[float] = []
    served: list[float | None] = []
    for when, row in frame.iterrows():
        candle = Candle("BTC/USDT", "1h", when.to_pydatetime(), row.open, row.high, row.low, row.close, row.volume)
        window = features.update_candle(candle)
        if window is None:  # warming up: the engine decides nothing, so asks for no target
            continue
        expected.append(policy.target_position(raw_observation(window, position_state(0.0, 0.0, 0))))
        served.append(ahead.target())
    assert served == expected
    assert ahead.served == len(expected) > 1_000 and ahead.enabled
    assert len(set(expected)) == 3, "the fixture policy should use every action"


def test_a_policy_of_another_feature_spec_is_refused(tmp_path: Path) -> None:
    frame = load_ohlcv(sample_path("BTC/USDT-1h")).iloc[:300]
    spec = FeatureSpec(window=8)
    other = fitted_spec(frame, train_rows=200, window=4)
    policy = OnnxPolicy.load(export_policy(tmp_path, other, random_weights(other, 2, seed=0), (0.0, 1.0)))
    with pytest.raises(ValueError, match="feature spec is not the precomputed features' spec"):
        FlatTargets(policy, PrecomputedFeatures(spec, frame))
    with pytest.raises(ValueError, match="chunk must be >= 1, was 0"):
        FlatTargets(policy, PrecomputedFeatures(other, frame), chunk=0)
