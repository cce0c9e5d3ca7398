"""TradingEnv: gymnasium contract, costs by hand, agreement with the backtest, episodes, bad input, SB3."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from gymnasium.utils.env_checker import check_env

import training
from adapters.costs import CostModel
from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from bot.evaluation import simulate_positions
from bot.model.features import FeatureSpec, IncrementalFeatures, candle_arrays, position_state
from training.env import EnvConfig, MarketData, TradingEnv

HOUR_MS = 3_600_000


def make_frame(rows: list[tuple[float, float, float, float, float]], start: str = "2024-01-01") -> pd.DataFrame:
    """Build a canonical candle frame of hourly bars from (open, high, low, close, volume) rows."""
    index = pd.date_range(start, periods=len(rows), freq="1h", tz="UTC", name="date")
    return pd.DataFrame(rows, index=index, columns=["open", "high", "low", "close", "volume"], dtype=np.float64)


@pytest.fixture(scope="module")
def btc() -> pd.DataFrame:
    """4,000 bundled BTC/USDT 1h candles."""
    return load_ohlcv(sample_path("BTC/USDT-1h")).iloc[10_000:14_000]


@pytest.fixture(scope="module")
def btc_market(btc: pd.DataFrame) -> MarketData:
    return MarketData(btc, FeatureSpec(window=16))


def _quiet_check(env: gym.Env) -> None:
    with warnings.catch_warnings():
        # Features are unbounded by design (normalised, not clipped), which the checker flags as a warning.
        warnings.filterwarnings("ignore", message=".*Box observation space (minimum|maximum) value.*")
        check_env(env, skip_render_check=True)


def test_make_with_no_arguments_uses_bundled_data() -> None:
    env = gym.make(training.ENV_ID)
    obs, info = env.reset(seed=1)
    assert obs.shape == (32 * 10 + 3,) and obs.dtype == np.float32
    assert env.observation_space.contains(obs)
    assert info["equity"] == 10_000.0
    _, reward, terminated, truncated, info = env.step(1)
    assert isinstance(reward, float) and not terminated and not truncated
    assert info["position"] == 1.0
    assert env.unwrapped.market.n_bars == 72_540


def test_env_checker_passes_discrete_and_continuous(btc_market: MarketData) -> None:
    _quiet_check(TradingEnv(config=EnvConfig(window=16, episode_length=50), market=btc_market))
    config = EnvConfig(window=16, episode_length=50, actions=(-1.0, 1.0), continuous=True)
    _quiet_check(TradingEnv(config=config, market=btc_market))


def test_round_trip_costs_match_the_cost_model_by_hand() -> None:
    frame = make_frame(
        [
            (100.0, 101.0, 99.0, 100.0, 10.0),
            (102.0, 106.0, 101.0, 104.0, 10.0),
            (105.0, 111.0, 104.0, 110.0, 10.0),
            (108.0, 109.0, 100.0, 101.0, 10.0),
            (101.0, 102.0, 100.0, 100.0, 10.0),
        ]
    )
    costs = CostModel(taker_fee_bps=10.0, slippage_bps=2.0)
    config = EnvConfig(window=1, episode_length=None, random_start=False, actions=(0.0, 1.0))
    env = TradingEnv(frame, config, FeatureSpec(names=("body",), window=1), costs)
    _, info = env.reset()
    assert info["start_index"] == 0
    fee, slip = costs.fee_fraction(is_maker=False), costs.slippage_fraction(0.0)
    assert (fee, slip) == (0.001, 0.0002)
    rewards = []
    infos = []
    for action in (1, 1, 0, 0):
        _, reward, _, _, info = env.step(action)
        rewards.append(reward)
        infos.append(info)

    entry_cost = 10_000.0 * (fee + slip)  # buy 100% of equity at bar 1's open
    equity_1 = (10_000.0 - entry_cost) * 104.0 / 102.0
    equity_2 = equity_1 * 105.0 / 104.0 * 110.0 / 105.0
    open_3 = equity_2 * 108.0 / 110.0
    exit_cost = open_3 * (fee + slip)  # sell it all at bar 3's open
    equity_3 = open_3 - exit_cost
    assert [i["equity"] for i in infos] == pytest.approx([equity_1, equity_2, equity_3, equity_3], rel=1e-12)
    # Rewards are log returns in percent.
    assert rewards == pytest.approx(
        [100 * math.log(equity_1 / 1e4), 100 * math.log(equity_2 / equity_1), 100 * math.log(equity_3 / equity_2), 0.0],
        abs=1e-10,
    )
    assert "trade" not in infos[0] and "trade" not in infos[1] and "trade" not in infos[3]
    trade = infos[2]["trade"]
    assert trade["side"] == "long" and trade["direction"] == 1
    assert trade["entry_time_ms"] == frame.index[1].value // 1_000_000
    assert trade["exit_time_ms"] == frame.index[3].value // 1_000_000
    assert trade["duration_seconds"] == 7200.0 and trade["bars"] == 2
    assert trade["entry_price"] == pytest.approx(102.0 * (1 + slip))
    assert trade["exit_price"] == pytest.approx(108.0 * (1 - slip))
    assert trade["size"] == 1.0
    assert trade["pnl"] == pytest.approx(equity_3 - 10_000.0, rel=1e-12)
    assert trade["fees"] == pytest.approx((10_000.0 + open_3) * fee, rel=1e-12)
    assert trade["costs"] == pytest.approx(entry_cost + exit_cost, rel=1e-12)
    assert trade["return_fraction"] == pytest.approx((equity_3 - 10_000.0) / 10_000.0, rel=1e-12)
    assert trade["is_open"] is False
    # Whole episode: the rewards add up to the log of the equity change, and it ends at the last bar.
    assert sum(rewards) == pytest.approx(100 * math.log(equity_3 / 10_000.0), abs=1e-10)


def test_short_flip_and_reward_scaling_by_hand() -> None:
    frame = make_frame(
        [
            (100.0, 100.0, 100.0, 100.0, 5.0),
            (100.0, 100.0, 100.0, 100.0, 5.0),
            (90.0, 95.0, 85.0, 95.0, 5.0),
            (80.0, 80.0, 80.0, 80.0, 5.0),
        ]
    )
    costs = CostModel(taker_fee_bps=5.0, slippage_bps=0.0)
    config = EnvConfig(
        window=1,
        episode_length=None,
        random_start=False,
        actions=(-1.0, 0.0, 1.0),
        reward_scaling=3.0,
        initial_equity=1_000.0,
    )
    env = TradingEnv(frame, config, FeatureSpec(names=("body",), window=1), costs)
    env.reset()
    _, r1, *_ = env.step(0)  # go short at bar 1's open (100)
    obs, r2, _, _, info2 = env.step(2)  # flip to long at bar 2's open (90)
    _, _, _, truncated, info3 = env.step(2)
    e1 = 1_000.0 * (1 - 0.0005)
    open_2 = e1 * (1 - (90.0 - 100.0) / 100.0)  # the short gains 10% over the gap
    flip_cost = open_2 * 2.0 * 0.0005  # |1 - (-1)| = 2 of equity traded
    e2 = (open_2 - flip_cost) * 95.0 / 90.0
    assert r1 == pytest.approx(3.0 * 100 * math.log(e1 / 1_000.0))
    assert r2 == pytest.approx(3.0 * 100 * math.log(e2 / e1))
    closed = info2["trade"]
    assert closed["side"] == "short" and closed["bars"] == 1
    assert closed["pnl"] == pytest.approx(open_2 - open_2 * 0.0005 - 1_000.0)
    assert closed["costs"] == pytest.approx(1_000.0 * 0.0005 + open_2 * 0.0005)
    # Observation state after the flip: long 1.0, unrealised PnL since entry, log1p(1 bar held).
    # The new trade starts from the equity left after the short's exit cost.
    entry_equity = open_2 - open_2 * 0.0005
    assert obs[-3:] == pytest.approx(position_state(1.0, 1.0 - entry_equity / e2, 1), rel=1e-6)
    assert truncated
    open_trade = info3["open_trade"]
    assert open_trade["is_open"] and open_trade["side"] == "long" and open_trade["bars"] == 2
    assert open_trade["exit_price"] == 80.0
    assert open_trade["pnl"] == pytest.approx(info3["equity"] - entry_equity)
    assert open_trade["return_fraction"] == pytest.approx(open_trade["pnl"] / open_2)


@pytest.mark.parametrize("impact_bps", [0.0, 40.0])
def test_equity_and_trades_match_the_backtest_simulator(btc: pd.DataFrame, impact_bps: float) -> None:
    costs = CostModel(taker_fee_bps=7.5, slippage_bps=3.0, impact_bps=impact_bps)
    config = EnvConfig(
        window=16, episode_length=None, random_start=False, actions=(-1.0, -0.5, 0.0, 0.5, 1.0), initial_equity=5e6
    )
    env = TradingEnv(btc, config, FeatureSpec(window=16), costs)
    _, info = env.reset()
    start = info["start_index"]
    rng = np.random.default_rng(7)
    actions = rng.choice(5, size=len(btc) - start, p=[0.05, 0.05, 0.8, 0.05, 0.05])
    equities, trades = [], []
    truncated = False
    for action in actions[:-1]:
        _, _, terminated, truncated, info = env.step(int(action))
        equities.append(info["equity"])
        trades.extend(info[k] for k in ("trade", "open_trade") if k in info)
        assert not terminated
    assert truncated
    targets = np.asarray(config.actions)[actions]
    result = simulate_positions(btc.iloc[start:], targets, costs, initial_equity=5e6)
    np.testing.assert_allclose(equities, result.equity.to_numpy()[1:], rtol=1e-9)
    assert len(trades) == len(result.trades) > 50
    for ours, theirs in zip(trades, result.trades, strict=True):
        assert ours["direction"] == theirs.direction
        assert ours["entry_time_ms"] == theirs.entry_time.value // 1_000_000
        assert ours["exit_time_ms"] == theirs.exit_time.value // 1_000_000
        assert ours["bars"] == theirs.bars and ours["is_open"] == theirs.is_open
        assert ours["entry_price"] == pytest.approx(theirs.entry_price, rel=1e-12)
        assert ours["exit_price"] == pytest.approx(theirs.exit_price, rel=1e-12)
        assert ours["pnl"] == pytest.approx(theirs.pnl, rel=1e-7, abs=1e-6)
        assert ours["costs"] == pytest.approx(theirs.costs, rel=1e-9)
        assert ours["return_fraction"] == pytest.approx(theirs.return_fraction, rel=1e-7, abs=1e-12)


def test_sequential_pass_covers_the_whole_frame(btc_market: MarketData, btc: pd.DataFrame) -> None:
    config = EnvConfig(window=16, episode_length=None, random_start=False)
    env = TradingEnv(config=config, market=btc_market)
    _, info = env.reset(seed=0)
    spec = env.feature_spec
    assert info["start_index"] == spec.min_history - 1 == 39
    steps = 0
    truncated = False
    while not truncated:
        _, _, terminated, truncated, info = env.step(steps % 2)
        steps += 1
        assert not terminated
    assert steps == len(btc) - spec.min_history
    assert info["equity"] == env.equity
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_random_windows_have_the_configured_length_and_follow_the_seed(btc_market: MarketData) -> None:
    env = TradingEnv(config=EnvConfig(window=16, episode_length=100), market=btc_market)
    starts = set()
    for seed in range(5):
        _, info = env.reset(seed=seed)
        starts.add(info["start_index"])
        assert info["end_index"] - info["start_index"] == 100
        for step in range(100):
            _, _, _, truncated, _ = env.step(1)
            assert truncated == (step == 99)
    assert len(starts) == 5
    first, _ = env.reset(seed=3)
    again, _ = env.reset(seed=3)
    np.testing.assert_array_equal(first, again)


def test_observation_matches_the_live_feature_path(btc: pd.DataFrame, btc_market: MarketData) -> None:
    env = TradingEnv(config=EnvConfig(window=16, episode_length=None, random_start=False), market=btc_market)
    env.reset()
    for action in [1] * 5 + [0] * 3 + [1] * 4:
        obs, *_ = env.step(action)
    t = env._t  # bar of the last close
    live = IncrementalFeatures(env.feature_spec)
    arrays = candle_arrays(btc)
    for i in range(t + 1):
        live.update(*(a[i] for a in arrays))
    state = position_state(env.position, float(obs[-2]), 4)
    expected = live.observation(state, normalised=True)
    assert expected is not None
    np.testing.assert_allclose(obs, expected, rtol=1e-5, atol=1e-5)
    # The raw observation normalised with the spec's per-element statistics gives the env's observation.
    raw = live.observation(state, normalised=False)
    mean, std = env.feature_spec.observation_normalisation()
    np.testing.assert_allclose(obs, (raw - mean) / std, rtol=1e-4, atol=1e-4)
    assert obs[-1] == pytest.approx(math.log1p(4))


def test_evaluation_env_reuses_the_training_statistics(btc: pd.DataFrame) -> None:
    train = TradingEnv(btc.iloc[:3000], EnvConfig(window=16, episode_length=100))
    test = TradingEnv(
        btc.iloc[3000:], EnvConfig(window=16, episode_length=None, random_start=False), spec=train.feature_spec
    )
    assert test.feature_spec == train.feature_spec
    refit = TradingEnv(btc.iloc[3000:], EnvConfig(window=16, episode_length=None, random_start=False))
    assert refit.feature_spec.norm_mean != train.feature_spec.norm_mean


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns=["volume"]), "columns must be exactly"),
        (lambda f: f.tz_convert(None), "UTC"),
        (lambda f: f.iloc[::-1], "sorted ascending"),
        (lambda f: f.reset_index(drop=True), "DatetimeIndex"),
        (lambda f: f.assign(volume=f.volume.astype("float32")), "float64"),
        (lambda f: f.assign(high=f.high.where(f.index != f.index[30], 1.0)), "row 30"),
        (lambda f: f.iloc[:20], "has 20 bars; the features need 40"),
    ],
)
def test_bad_frames_raise_clear_errors(btc: pd.DataFrame, mutate: object, message: str) -> None:
    frame = mutate(btc.iloc[:200])  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        TradingEnv(frame, EnvConfig(window=16, episode_length=10))


def test_episode_longer_than_the_data_is_rejected(btc: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match=r"episode_length 500 is longer than the data allows: 300 bars"):
        TradingEnv(btc.iloc[:300], EnvConfig(window=16, episode_length=500))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (dict(actions=(0.0, 2.0)), r"\[-1, 1\]"),
        (dict(actions=()), "at least one"),
        (dict(actions=(0.0, 0.0)), "repeat"),
        (dict(window=0), "window"),
        (dict(episode_length=0), "episode_length"),
        (dict(reward_scaling=0.0), "reward_scaling"),
        (dict(initial_equity=-1.0), "initial_equity"),
        (dict(episode_length=None, random_start=True), "random_start"),
    ],
)
def test_bad_config_is_rejected(config: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EnvConfig(**config)  # type: ignore[arg-type]


def test_spec_window_must_match_config(btc: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match=r"window 8 differs from env\.window 16"):
        TradingEnv(btc, EnvConfig(window=16), spec=FeatureSpec(window=8))


@pytest.mark.parametrize("action", [2, -1, 1.0, True, "1", np.array([1]), np.float64(0.0)])
def test_discrete_action_outside_the_space_is_rejected(btc_market: MarketData, action: object) -> None:
    env = TradingEnv(config=EnvConfig(window=16, episode_length=10), market=btc_market)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside the action space"):
        env.step(action)


@pytest.mark.parametrize("action", [np.array([1.5], dtype=np.float32), np.array([np.nan]), np.array([0.1, 0.2])])
def test_continuous_action_outside_the_space_is_rejected(btc_market: MarketData, action: object) -> None:
    env = TradingEnv(config=EnvConfig(window=16, episode_length=10, continuous=True), market=btc_market)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(action)
    _, _, _, _, info = env.step(np.array([0.25], dtype=np.float32))
    assert info["position"] == 0.25


def test_numpy_integer_actions_are_accepted(btc_market: MarketData) -> None:
    env = TradingEnv(config=EnvConfig(window=16, episode_length=10), market=btc_market)
    env.reset(seed=0)
    for action in (np.int64(1), np.int32(0), np.array(1)):
        _, _, _, _, info = env.step(action)
        assert info["position"] == float(action)


def test_stable_baselines3_ppo_trains_unchanged(btc_market: MarketData) -> None:
    from stable_baselines3 import PPO

    env = TradingEnv(config=EnvConfig(window=16, episode_length=64), market=btc_market)
    model = PPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=1, seed=0, device="cpu", verbose=0)
    model.learn(total_timesteps=256)
    assert model.num_timesteps == 256
    obs, _ = env.reset(seed=1)
    action, _ = model.predict(obs, deterministic=True)
    assert env.action_space.contains(int(action))


def test_importing_training_registers_the_env_without_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, gymnasium, training; assert 'ai-trading/Trading-v0' in gymnasium.registry; "
        "assert 'torch' not in sys.modules, 'import training pulled in torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
