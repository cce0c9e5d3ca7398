"""TradingVectorEnv: same results as N independent TradingEnv, next-step autoreset, info layout, bad actions."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from gymnasium.vector import AutoresetMode

import training
from adapters.costs import CostModel
from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from bot.model.features import FeatureSpec
from training.env import EnvConfig, MarketData, TradingEnv
from training.vec_env import TradingVectorEnv

TRADE_KEYS = (
    "direction",
    "entry_time_ms",
    "exit_time_ms",
    "entry_price",
    "exit_price",
    "size",
    "bars",
    "duration_seconds",
    "pnl",
    "return_fraction",
    "fees",
    "costs",
    "is_open",
)


@pytest.fixture(scope="module")
def market() -> MarketData:
    frame: pd.DataFrame = load_ohlcv(sample_path("BTC/USDT-1h")).iloc[30_000:32_000]
    return MarketData(frame, FeatureSpec(window=8))


def _check_against_single_envs(vector: TradingVectorEnv, actions: np.ndarray, seed: int) -> int:
    """Step `vector` and one TradingEnv per sub-env with the same actions; return the trades compared."""
    n = vector.num_envs
    obs, info = vector.reset(seed=seed)
    singles = [TradingEnv(config=vector.config, costs=vector.costs, market=vector.market) for _ in range(n)]
    for i, env in enumerate(singles):
        single_obs, _ = env.reset(options={"start_index": int(info["start_index"][i])})
        np.testing.assert_array_equal(single_obs, obs[i])
    resetting = np.zeros(n, dtype=bool)
    compared = 0
    for batch in actions:
        obs, rewards, terminated, truncated, info = vector.step(batch)
        for i, env in enumerate(singles):
            if resetting[i]:
                assert info["_start_index"][i]
                expected_obs, _ = env.reset(options={"start_index": int(info["start_index"][i])})
                expected: tuple[Any, ...] = (expected_obs, 0.0, False, False, {})
            else:
                single_action = batch[i] if vector.config.continuous else int(batch[i])
                expected = env.step(single_action)
            np.testing.assert_allclose(obs[i], expected[0], rtol=1e-6, atol=1e-7)
            assert rewards[i] == pytest.approx(expected[1], abs=1e-13)
            assert (terminated[i], truncated[i]) == (expected[2], expected[3])
            single_info = expected[4]
            if not resetting[i]:
                assert info["equity"][i] == pytest.approx(single_info["equity"], rel=1e-13)
                assert info["position"][i] == single_info["position"]
            for key in ("trade", "open_trade"):
                has = key in info and bool(info[f"_{key}"][i])
                assert has == (key in single_info), (key, i)
                if has:
                    compared += 1
                    for field in TRADE_KEYS:
                        assert info[key][field][i] == pytest.approx(single_info[key][field], rel=1e-12), field
        resetting = terminated | truncated
    return compared


@pytest.mark.parametrize("impact_bps", [0.0, 25.0])
def test_matches_independent_envs_with_the_same_actions(market: MarketData, impact_bps: float) -> None:
    config = EnvConfig(window=8, episode_length=40, actions=(-1.0, -0.25, 0.0, 0.5, 1.0))
    vector = TradingVectorEnv(6, config=config, costs=CostModel(impact_bps=impact_bps), market=market)
    actions = np.random.default_rng(1).integers(0, 5, (130, 6))
    assert _check_against_single_envs(vector, actions, seed=4) > 100


def test_continuous_matches_independent_envs(market: MarketData) -> None:
    config = EnvConfig(window=8, episode_length=25, actions=(-1.0, 1.0), continuous=True)
    vector = TradingVectorEnv(3, config=config, market=market)
    actions = np.random.default_rng(2).uniform(-1, 1, (60, 3, 1)).astype(np.float32)
    actions[::4] = 0.0  # flat spells, so that trades close
    assert _check_against_single_envs(vector, actions, seed=0) > 10


def test_next_step_autoreset(market: MarketData) -> None:
    vector = TradingVectorEnv(2, config=EnvConfig(window=8, episode_length=3), market=market)
    assert vector.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    _, info = vector.reset(seed=0)
    first_starts = info["start_index"].copy()
    ones = np.ones(2, dtype=np.int64)
    for step in range(3):
        _, _, terminated, truncated, info = vector.step(ones)
        assert not terminated.any()
        assert truncated.all() == (step == 2)
    assert info["_open_trade"].all() and info["open_trade"]["is_open"].all()
    assert (info["open_trade"]["bars"] == 3).all()
    obs, rewards, terminated, truncated, info = vector.step(ones)  # the actions are ignored here
    assert (rewards == 0.0).all() and not terminated.any() and not truncated.any()
    assert info["_start_index"].all() and not (info["start_index"] == first_starts).all()
    assert (info["position"] == 0.0).all() and (info["equity"] == 10_000.0).all()
    np.testing.assert_array_equal(obs[:, -3:], 0.0)
    _, rewards, _, truncated, info = vector.step(ones)
    assert not truncated.any() and "_start_index" not in info
    assert (info["position"] == 1.0).all() and (rewards != 0.0).all()


def test_window_rows_name_each_observations_window_through_resets(market: MarketData) -> None:
    vector = TradingVectorEnv(3, config=EnvConfig(window=8, episode_length=4), market=market)
    width = vector.windows.shape[1]
    obs, _ = vector.reset(seed=1)
    rng = np.random.default_rng(0)
    rows = [vector.window_rows()]
    for _ in range(12):
        np.testing.assert_array_equal(obs[:, :width], vector.windows[rows[-1]])
        obs, *_ = vector.step(rng.integers(0, 2, size=3))
        rows.append(vector.window_rows())
    np.testing.assert_array_equal(obs[:, :width], vector.windows[rows[-1]])
    steps = np.diff(np.array(rows), axis=0)
    assert (steps == 1).sum() > 0 and (steps != 1).sum() > 0  # mostly the next row; a new start after a reset


def test_trade_records_in_info_are_not_changed_by_later_steps(market: MarketData) -> None:
    vector = TradingVectorEnv(2, config=EnvConfig(window=8, episode_length=3), market=market)
    vector.reset(seed=0)
    ones = np.ones(2, dtype=np.int64)
    vector.step(ones)
    vector.step(ones)
    _, _, _, truncated, info = vector.step(ones)
    assert truncated.all()
    kept = {key: np.array(value, copy=True) for key, value in info["open_trade"].items()}
    vector.step(ones)  # autoreset
    vector.step(np.zeros(2, dtype=np.int64))  # a new trade's costs accumulate in the env's running totals
    for key, value in kept.items():
        np.testing.assert_array_equal(info["open_trade"][key], value, err_msg=key)


def test_info_layout_and_observation_space(market: MarketData) -> None:
    vector = TradingVectorEnv(4, config=EnvConfig(window=8, episode_length=50), market=market)
    obs, info = vector.reset(seed=5)
    assert vector.observation_space.contains(obs)
    assert obs.shape == (4, 8 * 10 + 3) and obs.dtype == np.float32
    vector.step(np.array([1, 1, 0, 1]))
    obs, rewards, terminated, truncated, info = vector.step(np.array([0, 1, 0, 0]))
    assert rewards.shape == terminated.shape == truncated.shape == (4,)
    assert info["_trade"].tolist() == [True, False, False, True]
    assert set(info["trade"]) == set(TRADE_KEYS)
    assert info["_equity"].all() and info["equity"].shape == (4,)
    # Info arrays are copies: changing them does not change the env.
    info["equity"][:] = -1.0
    info["position"][:] = 5.0
    assert (vector.equity > 0).all()
    _, _, _, _, info = vector.step(np.array([0, 0, 0, 0]))
    assert (info["position"] == 0.0).all()


def test_make_vec_uses_the_vector_entry_point() -> None:
    envs = gym.make_vec(
        training.ENV_ID, num_envs=3, vectorization_mode="vector_entry_point", config=EnvConfig(episode_length=100)
    )
    assert isinstance(envs.unwrapped, TradingVectorEnv)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (3, 32 * 10 + 3)
    envs.step(envs.action_space.sample())


@pytest.mark.parametrize(
    ("actions", "message"),
    [
        (np.array([0, 1, 2]), r"outside the action space Discrete\(2\)"),
        (np.array([0, -1, 1]), r"actions \[-1\] are outside"),
        (np.array([0.0, 1.0, 1.0]), "integer array"),
        (np.array([0, 1]), r"shape \(3,\)"),
    ],
)
def test_bad_discrete_actions_raise(market: MarketData, actions: np.ndarray, message: str) -> None:
    vector = TradingVectorEnv(3, config=EnvConfig(window=8, episode_length=10), market=market)
    vector.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        vector.step(actions)


def test_bad_continuous_actions_raise(market: MarketData) -> None:
    config = EnvConfig(window=8, episode_length=10, actions=(0.0, 1.0), continuous=True)
    vector = TradingVectorEnv(2, config=config, market=market)
    vector.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions \[1.5\] are outside the action space \[0.0, 1.0\]"):
        vector.step(np.array([[0.5], [1.5]]))
    with pytest.raises(ValueError, match="outside"):
        vector.step(np.array([[np.nan], [0.5]]))


def test_step_before_reset_and_bad_construction(market: MarketData) -> None:
    with pytest.raises(RuntimeError, match="before reset"):
        TradingVectorEnv(2, config=EnvConfig(window=8, episode_length=10), market=market).step(np.zeros(2, int))
    with pytest.raises(ValueError, match="num_envs"):
        TradingVectorEnv(0, market=market)
    with pytest.raises(ValueError, match="start_index must be in"):
        TradingVectorEnv(2, config=EnvConfig(window=8, episode_length=10), market=market).reset(
            options={"start_index": 2}
        )


def test_matches_independent_envs_through_terminations() -> None:
    # Bars where the price quadruples or collapses inside the bar wipe out shorts and longs: the equity floor,
    # terminations and their autoresets, with market impact, reward scaling and -0.0 targets on the way.
    frame = load_ohlcv(sample_path("BTC/USDT-1h")).iloc[30_000:31_000].copy()
    for bar, factor in [(300, 4.0), (420, 1e-4), (555, 4.0), (610, 1e-4), (700, 4.0), (820, 1e-4)]:
        close = frame["open"].iloc[bar] * factor
        frame.iloc[bar, frame.columns.get_loc("close")] = close
        frame.iloc[bar, frame.columns.get_loc("high")] = max(frame["high"].iloc[bar], close)
        frame.iloc[bar, frame.columns.get_loc("low")] = min(frame["low"].iloc[bar], close)
    config = EnvConfig(window=8, episode_length=400, actions=(-1.0, 1.0), continuous=True, reward_scaling=2.0)
    vector = TradingVectorEnv(
        8, config=config, costs=CostModel(impact_bps=25.0), market=MarketData(frame, FeatureSpec(window=8))
    )
    rng = np.random.default_rng(3)
    actions = rng.choice(np.array([-1.0, -0.0, 0.0, 0.5, 1.0], dtype=np.float32), (300, 8, 1))
    held = rng.random((300, 8, 1)) < 0.7  # mostly held positions, so that some ride into a spike
    for step in range(1, len(actions)):
        actions[step] = np.where(held[step], actions[step - 1], actions[step])
    terminations = 0
    original_step = vector.step

    def counting_step(batch: np.ndarray) -> Any:
        nonlocal terminations
        result = original_step(batch)
        terminations += int(result[2].sum())
        return result

    vector.step = counting_step  # type: ignore[method-assign]
    assert _check_against_single_envs(vector, actions, seed=1) > 50
    assert terminations > 0


def test_bad_action_leaves_the_env_unchanged(market: MarketData) -> None:
    config = EnvConfig(window=8, episode_length=10)
    vector, twin = (TradingVectorEnv(3, config=config, market=market) for _ in range(2))
    vector.reset(seed=2)
    twin.reset(seed=2)
    actions = np.random.default_rng(0).integers(0, 2, (25, 3))
    for step, batch in enumerate(actions):
        if step % 4 == 1:
            with pytest.raises(ValueError, match="outside the action space"):
                vector.step(np.array([1, 7, 0]))
        got, expected = vector.step(batch), twin.step(batch)
        for got_item, expected_item in zip(got[:4], expected[:4], strict=True):
            np.testing.assert_array_equal(got_item, expected_item)
        assert got[4]["equity"].tobytes() == expected[4]["equity"].tobytes()
