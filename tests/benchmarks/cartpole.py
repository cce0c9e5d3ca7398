"""Check PPO against a task with a known answer: CartPole-v1 solved (mean eval return >= 475) within 150k steps.

Trains `training.ppo.PPO` with the default `PPOConfig` and the `mlp` preset on gymnasium's CartPole-v1
(a `SyncVectorEnv`, NEXT_STEP autoreset) for each seed. After every update the deterministic policy plays
`--eval-episodes` episodes on separate evaluation envs; training stops (a callback returning False) at the
first evaluation whose mean return reaches the threshold. Evaluation time is excluded from the reported
training wall-clock.

Run: ``python tests/benchmarks/cartpole.py``; prints one JSON line on stdout and exits 1 unless at least
`--min-solved` of the seeds solve.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import gymnasium as gym
import numpy as np
import structlog
import torch

from training.callbacks import Callback, CallbackContext
from training.models import PRESETS, build_actor_critic
from training.ppo import PPO, configure_torch, evaluate_policy
from training.ppo_config import PPOConfig

ENV_ID = "CartPole-v1"
SOLVED_RETURN = 475.0
MAX_STEPS = 150_000


def make_cartpole(num_envs: int) -> gym.vector.VectorEnv[Any, Any, Any]:
    """Build `num_envs` CartPole-v1 envs stepped in one process (gymnasium's SyncVectorEnv)."""
    return gym.make_vec(ENV_ID, num_envs, vectorization_mode="sync")


@dataclass
class SolveRecord:
    """How one training run went against the solve threshold."""

    solved: bool = False
    steps_to_solve: int | None = None
    train_seconds_to_solve: float | None = None
    best_eval_return: float = -np.inf
    evaluations: int = 0
    eval_seconds: float = 0.0


class SolveTimer:
    """Time training up to the first evaluation that reaches the threshold, excluding evaluation time."""

    def __init__(self, evaluate: Callable[[int], float], threshold: float = SOLVED_RETURN) -> None:
        self.evaluate = evaluate
        self.threshold = threshold
        self.record = SolveRecord()
        self._start = 0.0

    def start(self) -> None:
        """Start the clock."""
        self._start = time.perf_counter()

    def check(self, global_step: int) -> bool:
        """Evaluate now; return True once solved."""
        paused = time.perf_counter()
        mean_return = self.evaluate(self.record.evaluations)
        record = self.record
        record.evaluations += 1
        record.best_eval_return = max(record.best_eval_return, mean_return)
        if mean_return >= self.threshold and not record.solved:
            record.solved = True
            record.steps_to_solve = global_step
            record.train_seconds_to_solve = paused - self._start - record.eval_seconds
        record.eval_seconds += time.perf_counter() - paused
        return record.solved


class StopWhenSolved(Callback):
    """Evaluate after every PPO update and stop training once solved."""

    def __init__(self, timer: SolveTimer) -> None:
        self.timer = timer

    def on_training_start(self, context: CallbackContext) -> bool:
        """Start the solve clock."""
        self.timer.start()
        return True

    def on_update(self, context: CallbackContext) -> bool:
        """Evaluate; False (stop) once solved."""
        return not self.timer.check(context.global_step)


def mean_eval_return(
    act: Callable[[np.ndarray], np.ndarray], env: gym.vector.VectorEnv[Any, Any, Any], episodes: int, seed: int
) -> float:
    """Return the mean undiscounted return of a deterministic policy over `episodes` episodes."""
    return float(np.mean(evaluate_policy(act, env, episodes, seed=seed)))


def train_ours(seed: int, config: PPOConfig, eval_episodes: int) -> SolveRecord:
    """Train our PPO with `config` on CartPole-v1 until solved or out of steps."""
    config = replace(config, seed=seed)
    configure_torch(config)
    env = make_cartpole(config.num_envs)
    eval_env = make_cartpole(eval_episodes)
    model = build_actor_critic(4, env.single_action_space, PRESETS["mlp"])

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model.deterministic_action(torch.from_numpy(obs)).numpy()

    def evaluate(index: int) -> float:
        model.eval()
        return mean_eval_return(act, eval_env, eval_episodes, seed=10_000 * seed + index)

    timer = SolveTimer(evaluate)
    PPO(env, model, config, [StopWhenSolved(timer)]).learn()
    env.close()
    eval_env.close()
    return timer.record


def quiet_logging() -> None:
    """Send library logs (warnings and up) to stderr so stdout holds only the JSON line."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Train three seeds, print one JSON line, return 0 if enough seeds solved."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--total-timesteps", type=int, default=MAX_STEPS)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--min-solved", type=int, default=2)
    args = parser.parse_args(argv)
    quiet_logging()
    config = PPOConfig(total_timesteps=args.total_timesteps)
    started = time.perf_counter()
    runs = {seed: train_ours(seed, config, args.eval_episodes) for seed in args.seeds}
    solved = sum(record.solved for record in runs.values())
    result = {
        "benchmark": "cartpole",
        "env": ENV_ID,
        "threshold": SOLVED_RETURN,
        "max_steps": args.total_timesteps,
        "eval_episodes": args.eval_episodes,
        "solved_seeds": solved,
        "passed": solved >= args.min_solved,
        "seeds": {
            str(seed): {
                "solved": record.solved,
                "steps_to_solve": record.steps_to_solve,
                "train_seconds_to_solve": _round(record.train_seconds_to_solve),
                "best_eval_return": _round(record.best_eval_return),
                "evaluations": record.evaluations,
            }
            for seed, record in runs.items()
        },
        "config": asdict(config),
        "torch_threads": config.torch_threads,
        "total_seconds": _round(time.perf_counter() - started),
    }
    print(json.dumps(result))
    return 0 if result["passed"] else 1


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


if __name__ == "__main__":
    sys.exit(main())
