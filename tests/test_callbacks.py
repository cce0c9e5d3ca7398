"""The callback protocol: hook order during PPO training, stopping, and CallbackList semantics."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from training.callbacks import Callback, CallbackContext, CallbackList
from training.models import PRESETS, build_actor_critic
from training.ppo import PPO, TrainingResult, configure_torch
from training.ppo_config import PPOConfig

CONFIG = PPOConfig(total_timesteps=192, num_envs=4, num_steps=16, num_minibatches=2, update_epochs=1, seed=5)


class Recorder(Callback):
    """Record every hook call as (hook, global_step); optionally stop at a hook once a step is reached."""

    def __init__(self, stop_at: tuple[str, int] | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.stop_at = stop_at

    def _record(self, hook: str, context: CallbackContext) -> bool:
        self.calls.append((hook, context.global_step))
        return self.stop_at is None or not (hook == self.stop_at[0] and context.global_step >= self.stop_at[1])

    def on_training_start(self, context: CallbackContext) -> bool:
        return self._record("training_start", context)

    def on_step(self, context: CallbackContext) -> bool:
        return self._record("step", context)

    def on_episode_end(self, context: CallbackContext) -> bool:
        return self._record("episode_end", context)

    def on_rollout_end(self, context: CallbackContext) -> bool:
        return self._record("rollout_end", context)

    def on_update(self, context: CallbackContext) -> bool:
        return self._record("update", context)

    def on_training_end(self, context: CallbackContext) -> None:
        self._record("training_end", context)


def train(*callbacks: Callback, config: PPOConfig = CONFIG) -> TrainingResult:
    configure_torch(config)
    env = gym.make_vec("CartPole-v1", config.num_envs, vectorization_mode="sync")
    model = build_actor_critic(4, env.single_action_space, PRESETS["mlp"])
    return PPO(env, model, config, list(callbacks)).learn()


def test_hooks_run_in_order() -> None:
    recorder = Recorder()
    result = train(recorder)
    hooks = [hook for hook, _ in recorder.calls if hook != "episode_end"]
    per_iteration = ["step"] * CONFIG.num_steps + ["rollout_end", "update"]
    assert hooks == ["training_start", *per_iteration * CONFIG.num_iterations, "training_end"]
    steps = [step for hook, step in recorder.calls if hook == "step"]
    assert steps == list(range(CONFIG.num_envs, CONFIG.num_iterations * CONFIG.batch_size + 1, CONFIG.num_envs))
    # Each episode end follows the step that ended it, at the same global step.
    episode_ends = [i for i, (hook, _) in enumerate(recorder.calls) if hook == "episode_end"]
    assert len(episode_ends) == len(result.episodes) > 0
    for index in episode_ends:
        previous = recorder.calls[index - 1]
        assert previous[0] in ("step", "episode_end") and previous[1] == recorder.calls[index][1]
    assert not result.stopped_early and result.iterations == CONFIG.num_iterations


def test_on_step_false_stops_at_that_step() -> None:
    recorder = Recorder(stop_at=("step", 40))
    result = train(recorder)
    assert result.stopped_early
    assert result.global_step == 40
    last_step = max(i for i, (hook, _) in enumerate(recorder.calls) if hook == "step")
    assert recorder.calls[last_step] == ("step", 40)
    # After the refusing step only that step's own episode ends (if any) and training_end run.
    assert {hook for hook, _ in recorder.calls[last_step + 1 : -1]} <= {"episode_end"}
    assert recorder.calls[-1] == ("training_end", 40)
    # 40 steps = 10 vector steps, inside the first rollout of 16: no update ran.
    assert "update" not in [hook for hook, _ in recorder.calls]
    assert result.iterations == 0


def test_on_update_false_stops_after_that_update() -> None:
    recorder = Recorder(stop_at=("update", CONFIG.batch_size * 2))
    result = train(recorder)
    assert result.stopped_early and result.iterations == 2
    assert result.global_step == 2 * CONFIG.batch_size
    assert [hook for hook, _ in recorder.calls].count("update") == 2
    assert recorder.calls[-1] == ("training_end", 2 * CONFIG.batch_size)


def test_on_training_start_false_takes_no_step() -> None:
    recorder = Recorder(stop_at=("training_start", 0))
    result = train(recorder)
    assert result.global_step == 0 and result.stopped_early
    assert recorder.calls == [("training_start", 0), ("training_end", 0)]


def test_on_episode_end_false_stops_at_the_first_episode() -> None:
    recorder = Recorder(stop_at=("episode_end", 0))
    result = train(recorder, config=PPOConfig(**{**CONFIG.__dict__, "total_timesteps": 4096}))
    assert result.stopped_early
    first_end = next(step for hook, step in recorder.calls if hook == "episode_end")
    assert result.global_step == first_end
    assert len(result.episodes) >= 1


def test_a_list_runs_every_callback_even_after_a_stop() -> None:
    stopper, watcher = Recorder(stop_at=("step", 8)), Recorder()
    result = train(stopper, watcher)
    assert result.global_step == 8
    assert stopper.calls == watcher.calls


class Fixed(Callback):
    def __init__(self, value: object) -> None:
        self.value = value

    def on_step(self, context: CallbackContext) -> bool:
        return self.value  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("values", "keep_going"),
    [
        ([True, True], True),
        ([True, False], False),
        ([None], True),  # a hook that forgot to return does not stop training
        ([np.False_], False),  # numpy booleans (from comparisons) count
        ([np.True_], True),
        ([], True),
    ],
)
def test_callback_list_combines_results(values: list[object], keep_going: bool) -> None:
    callbacks = CallbackList([Fixed(v) for v in values])
    context = CallbackContext(model=None, config=None)  # type: ignore[arg-type]
    assert callbacks.on_step(context) is keep_going


def test_base_callback_hooks_are_no_ops_that_continue() -> None:
    callback, context = Callback(), CallbackContext(model=None, config=None)  # type: ignore[arg-type]
    for hook in (
        callback.on_training_start,
        callback.on_step,
        callback.on_episode_end,
        callback.on_rollout_end,
        callback.on_update,
    ):
        assert hook(context) is True
    callback.on_training_end(context)  # returns nothing; must not raise


@pytest.mark.parametrize("wrap", [lambda c: c, lambda c: CallbackList([c]), lambda c: [CallbackList([c])]])
def test_ppo_accepts_a_callback_a_list_or_nested_lists(wrap: object) -> None:
    recorder = Recorder()
    configure_torch(CONFIG)
    env = gym.make_vec("CartPole-v1", CONFIG.num_envs, vectorization_mode="sync")
    model = build_actor_critic(4, env.single_action_space, PRESETS["mlp"])
    PPO(env, model, CONFIG, wrap(recorder)).learn()  # type: ignore[operator]
    assert recorder.calls[0][0] == "training_start" and recorder.calls[-1][0] == "training_end"
    assert [hook for hook, _ in recorder.calls].count("update") == CONFIG.num_iterations
