"""Env throughput: TradingEnv, TradingVectorEnv (N=64) and gym-anytrading's stocks-v0, same data, same run.

Prints one JSON line: steps/s of each (random actions, best of `--rounds` interleaved rounds so a noisy
neighbour hurts all alike) and the ratios. Run: ``python tests/benchmarks/env_throughput.py``.
Targets (issue 3): one env >= 2x stocks-v0; vector env >= 3,000,000 aggregate env-steps/s with N=64.

The single-env figures come in two forms, both measured: the raw env (``single_vs_reference`` compares
the two unwrapped envs) and the env as ``gymnasium.make`` returns it, inside gymnasium's OrderEnforcing and
PassiveEnvChecker wrappers, which each id gets by default (ours ``ai-trading/Trading-v0`` and
``stocks-v0`` alike; ``wrapped_single_vs_reference`` compares those). Our PPO does not step a single env:
it uses `TradingVectorEnv` directly (the ``vector_env_*`` figures), which ``gymnasium.make_vec`` also
returns unwrapped through the registered vector entry point.
Also reported: the vector env with "sticky" actions (each sub-env switches position with p = 0.05 per
step, closer to a trained policy than coin flips, which trade on half of all steps).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from collections.abc import Callable

import gym_anytrading  # noqa: F401 — registers stocks-v0
import gymnasium as gym
import numpy as np
import structlog

from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from bot.model.features import FeatureSpec
from training import ENV_ID
from training.env import EnvConfig, MarketData, TradingEnv
from training.vec_env import TradingVectorEnv


def _single_env_rate(env: gym.Env, actions: list[int]) -> float:
    env.reset(seed=0)
    step, reset = env.step, env.reset
    began = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = step(action)
        if terminated or truncated:
            reset()
    return len(actions) / (time.perf_counter() - began)


def _wrapper_names(env: gym.Env) -> list[str]:
    names = []
    while isinstance(env, gym.Wrapper):
        names.append(type(env).__name__)
        env = env.env
    return names


def _vector_env_rate(env: TradingVectorEnv, actions: np.ndarray) -> float:
    env.reset(seed=0)
    step = env.step
    began = time.perf_counter()
    for batch in actions:
        step(batch)
    return actions.size / (time.perf_counter() - began)


def main() -> None:
    """Measure and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300_000, help="single-env steps per round")
    parser.add_argument("--vector-steps", type=int, default=4_000, help="vector steps (of N envs) per round")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=int, default=32)
    args = parser.parse_args()
    # Loading warnings (zero-volume bars, gaps) would otherwise share stdout with the JSON line.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

    frame = load_ohlcv(sample_path("BTC/USDT-1h"))
    config = EnvConfig(window=args.window)
    market = MarketData(frame, FeatureSpec(window=args.window))
    ours_wrapped = gym.make(ENV_ID, config=config, market=market)
    ours = ours_wrapped.unwrapped
    assert isinstance(ours, TradingEnv)
    vector = TradingVectorEnv(num_envs=args.num_envs, config=config, market=market)
    reference_frame = frame.rename(columns=str.capitalize)
    reference_wrapped = gym.make(
        "stocks-v0", df=reference_frame, window_size=args.window, frame_bound=(args.window, len(reference_frame))
    )
    reference = reference_wrapped.unwrapped
    wrappers = _wrapper_names(ours_wrapped)

    rng = np.random.default_rng(0)
    single_actions = rng.integers(0, 2, args.steps).tolist()
    vector_actions = rng.integers(0, 2, (args.vector_steps, args.num_envs))
    # A trained policy trades far less often than coin flips: hold each position, switch with p = 0.05.
    switches = rng.random((args.vector_steps, args.num_envs)) < 0.05
    sticky_actions = np.cumsum(switches, axis=0) % 2
    runs: dict[str, Callable[[], float]] = {
        "reference": lambda: _single_env_rate(reference, single_actions),
        "single": lambda: _single_env_rate(ours, single_actions),
        "reference_wrapped": lambda: _single_env_rate(reference_wrapped, single_actions),
        "single_wrapped": lambda: _single_env_rate(ours_wrapped, single_actions),
        "vector": lambda: _vector_env_rate(vector, vector_actions),
        "vector_sticky": lambda: _vector_env_rate(vector, sticky_actions),
    }
    best = dict.fromkeys(runs, 0.0)
    for _ in range(args.rounds):
        for name, run in runs.items():
            best[name] = max(best[name], run())
    print(
        json.dumps(
            {
                "benchmark": "env_throughput",
                "data": "BTC/USDT-1h bundled, 72540 bars",
                "window": args.window,
                "actions": "random, 2 discrete (flat/long for ours, sell/buy for stocks-v0)",
                "rounds": args.rounds,
                "trading_env_steps_per_s": round(best["single"]),
                "vector_env_steps_per_s": round(best["vector"]),
                "vector_num_envs": args.num_envs,
                "vector_env_sticky_actions_steps_per_s": round(best["vector_sticky"]),
                "reference_stocks_v0_steps_per_s": round(best["reference"]),
                "single_vs_reference": round(best["single"] / best["reference"], 2),
                "gym_make_wrappers": wrappers,
                "trading_env_wrapped_steps_per_s": round(best["single_wrapped"]),
                "reference_stocks_v0_wrapped_steps_per_s": round(best["reference_wrapped"]),
                "wrapped_single_vs_reference": round(best["single_wrapped"] / best["reference_wrapped"], 2),
                "vector_vs_reference": round(best["vector"] / best["reference"], 2),
                "vector_vs_single": round(best["vector"] / best["single"], 2),
                "python": platform.python_version(),
                "numpy": np.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
