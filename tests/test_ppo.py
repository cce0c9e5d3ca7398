"""PPO pieces checked by hand (GAE, losses, explained variance) and tiny seeded training runs."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import training.ppo as training_ppo
from training.callbacks import Callback, CallbackContext
from training.models import PRESETS, ModelConfig, build_actor_critic, encoder_precision, window_transformers
from training.ppo import (
    PPO,
    compute_gae,
    configure_torch,
    cpu_has_bf16,
    evaluate_policy,
    explained_variance,
    ppo_losses,
    resolve_device,
    resolve_precision,
    resolve_torch_threads,
)
from training.ppo_config import PPOConfig

TINY = PPOConfig(total_timesteps=256, num_envs=4, num_steps=16, num_minibatches=2, update_epochs=2, seed=3)


def column(*values: float) -> torch.Tensor:
    return torch.tensor(values).unsqueeze(1)  # [T, 1 env]


# --- GAE ------------------------------------------------------------------------------------------------------


def gae(terminations: torch.Tensor, truncations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rewards, values = column(1.0, 2.0, 3.0), column(0.5, 1.0, 1.5)
    return compute_gae(rewards, values, torch.tensor([2.0]), terminations, truncations, gamma=0.9, gae_lambda=0.8)


def test_gae_without_episode_end_matches_hand_computation() -> None:
    advantages, returns = gae(column(0, 0, 0), column(0, 0, 0))
    # delta2 = 3 + .9*2.0 - 1.5 = 3.3; delta1 = 2 + .9*1.5 - 1 = 2.35; delta0 = 1 + .9*1 - .5 = 1.4
    # A2 = 3.3; A1 = 2.35 + .72*3.3 = 4.726; A0 = 1.4 + .72*4.726 = 4.80272
    torch.testing.assert_close(advantages, column(4.80272, 4.726, 3.3))
    torch.testing.assert_close(returns, column(5.30272, 5.726, 4.8))


def test_gae_termination_bootstraps_nothing_and_cuts_the_recursion() -> None:
    advantages, _ = gae(column(0, 1, 0), column(0, 0, 0))
    # A1 = 2 - 1.0 = 1.0 (no V(obs2)); A0 = 1.4 + .72*1.0 = 2.12; A2 unchanged = 3.3
    torch.testing.assert_close(advantages, column(2.12, 1.0, 3.3))


def test_gae_truncation_bootstraps_the_next_value_but_cuts_the_recursion() -> None:
    advantages, _ = gae(column(0, 0, 0), column(0, 1, 0))
    # A1 = delta1 = 2.35 (bootstraps V(obs2) = 1.5, the final observation); A0 = 1.4 + .72*2.35 = 3.092
    torch.testing.assert_close(advantages, column(3.092, 2.35, 3.3))


def test_gae_has_the_bits_of_the_step_by_step_recursion() -> None:
    """compute_gae runs its recursion in numpy; these are the float32 torch steps it replaced."""
    generator = torch.Generator().manual_seed(0)
    T, N, gamma, lam = 64, 8, 0.99, 0.95
    rewards, values = torch.randn(T, N, generator=generator), torch.randn(T, N, generator=generator)
    next_value = torch.randn(N, generator=generator)
    terminations = (torch.rand(T, N, generator=generator) < 0.05).float()
    truncations = (torch.rand(T, N, generator=generator) < 0.05).float()
    not_terminated = 1.0 - terminations
    continues = not_terminated * (1.0 - truncations)
    expected = torch.zeros_like(rewards)
    last = torch.zeros(N)
    for t in reversed(range(T)):
        following = next_value if t == T - 1 else values[t + 1]
        last = rewards[t] + gamma * following * not_terminated[t] - values[t] + gamma * lam * continues[t] * last
        expected[t] = last
    advantages, returns = compute_gae(rewards, values, next_value, terminations, truncations, gamma, lam)
    assert torch.equal(advantages, expected)
    assert torch.equal(returns, expected + values)


def test_gae_treats_environments_independently() -> None:
    rewards = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 1.0]])
    values = torch.tensor([[0.5, 0.0], [1.0, 0.0], [1.5, 0.0]])
    zeros = torch.zeros(3, 2)
    advantages, _ = compute_gae(rewards, values, torch.tensor([2.0, 0.0]), zeros, zeros, 0.9, 0.8)
    torch.testing.assert_close(advantages[:, 0], torch.tensor([4.80272, 4.726, 3.3]))
    torch.testing.assert_close(advantages[:, 1], torch.tensor([0.5184, 0.72, 1.0]))


# --- losses ---------------------------------------------------------------------------------------------------


def policy_loss_and_grad(ratio: float, advantage: float, clip_coef: float = 0.2) -> tuple[float, float]:
    """Return the policy loss and d(loss)/d(new_log_prob) for one sample."""
    new_log_prob = torch.tensor([math.log(ratio)], requires_grad=True)
    losses = ppo_losses(
        new_log_prob,
        torch.zeros(1),
        torch.tensor([advantage]),
        torch.zeros(1),
        torch.zeros(1),
        torch.zeros(1),
        torch.zeros(1),
        clip_coef,
        norm_adv=False,
    )
    losses.policy_loss.backward()  # type: ignore[no-untyped-call]
    assert new_log_prob.grad is not None
    return float(losses.policy_loss.detach()), float(new_log_prob.grad)


def test_positive_advantage_with_rising_ratio_lowers_the_policy_loss() -> None:
    loss_at_1, grad_at_1 = policy_loss_and_grad(1.0, advantage=2.0)
    loss_at_higher, _ = policy_loss_and_grad(1.1, advantage=2.0)
    assert loss_at_higher < loss_at_1 == pytest.approx(-2.0)
    assert grad_at_1 < 0  # gradient descent raises the log-probability of a good action
    _, grad_negative = policy_loss_and_grad(1.0, advantage=-2.0)
    assert grad_negative > 0  # and lowers that of a bad one


@pytest.mark.parametrize(
    ("ratio", "advantage", "has_gradient"),
    [
        (1.5, 1.0, False),  # already more likely than 1 + eps allows: no further push
        (0.5, -1.0, False),  # already less likely than 1 - eps allows: no further push
        (1.5, -1.0, True),  # moved the wrong way: the unclipped (pessimistic) term keeps the gradient
        (0.5, 1.0, True),
        (1.1, 1.0, True),  # inside the clip range
    ],
)
def test_clipping_zeroes_the_gradient_only_in_the_clipped_direction(
    ratio: float, advantage: float, has_gradient: bool
) -> None:
    _, grad = policy_loss_and_grad(ratio, advantage)
    assert (grad != 0.0) is has_gradient


def test_loss_diagnostics() -> None:
    new = torch.log(torch.tensor([1.0, 1.5, 0.5, 1.1]))
    losses = ppo_losses(
        new,
        torch.zeros(4),
        torch.ones(4),
        torch.zeros(4),
        torch.zeros(4),
        torch.zeros(4),
        torch.tensor([1.0, 2.0, 3.0, 4.0]),
        0.2,
    )
    assert float(losses.clipfrac) == pytest.approx(0.5)
    assert float(losses.entropy) == pytest.approx(2.5)
    assert float(losses.approx_kl) > 0
    same = ppo_losses(new, new, torch.ones(4), torch.zeros(4), torch.zeros(4), torch.zeros(4), torch.zeros(4), 0.2)
    assert float(same.approx_kl) == pytest.approx(0.0, abs=1e-7)
    assert float(same.clipfrac) == 0.0


def test_advantage_normalisation_is_per_minibatch() -> None:
    zeros = torch.zeros(3)
    raw = ppo_losses(zeros, zeros, torch.tensor([10.0, 20.0, 30.0]), zeros, zeros, zeros, zeros, 0.2, norm_adv=False)
    normed = ppo_losses(zeros, zeros, torch.tensor([10.0, 20.0, 30.0]), zeros, zeros, zeros, zeros, 0.2)
    assert float(raw.policy_loss) == pytest.approx(-20.0)
    assert float(normed.policy_loss) == pytest.approx(0.0, abs=1e-6)  # normalised advantages average zero


@pytest.mark.parametrize(("clip_vloss", "expected"), [(True, 1.62), (False, 0.5)])
def test_value_loss_clipping(clip_vloss: bool, expected: float) -> None:
    # old value 0, new value 1, return 2, eps 0.2: unclipped error (1-2)^2 = 1; clipped value 0.2 -> (0.2-2)^2 = 3.24.
    one = torch.ones(1)
    losses = ppo_losses(one, one, one, one, 0 * one, 2 * one, one, 0.2, clip_vloss=clip_vloss)
    assert float(losses.value_loss) == pytest.approx(expected)


def test_explained_variance() -> None:
    target = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(target, target) == pytest.approx(1.0)
    assert explained_variance(torch.full((4,), 2.5), target) == pytest.approx(0.0)
    assert explained_variance(-target, target) < 0
    assert math.isnan(explained_variance(target, torch.ones(4)))


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="num_envs must be > 0, was 0"):
        PPOConfig(num_envs=0)
    with pytest.raises(ValueError, match="gamma"):
        PPOConfig(gamma=1.5)


# --- training runs --------------------------------------------------------------------------------------------


def cartpole(num_envs: int, **vector_kwargs: Any) -> gym.vector.VectorEnv[Any, Any, Any]:
    return gym.make_vec("CartPole-v1", num_envs, vectorization_mode="sync", vector_kwargs=vector_kwargs)


def train_cartpole(config: PPOConfig, callbacks: list[Callback] | None = None, **vector_kwargs: Any) -> tuple[PPO, Any]:
    configure_torch(config)
    env = cartpole(config.num_envs, **vector_kwargs)
    model = build_actor_critic(4, env.single_action_space, PRESETS["mlp"])
    trainer = PPO(env, model, config, callbacks or [])
    return trainer, trainer.learn()


def test_same_seed_gives_identical_parameters() -> None:
    first, _ = train_cartpole(TINY)
    second, _ = train_cartpole(TINY)
    other, _ = train_cartpole(PPOConfig(**{**TINY.__dict__, "seed": 4}))
    for a, b in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(first.model.parameters(), other.model.parameters(), strict=True))
    # Training moved the parameters away from their initialisation.
    configure_torch(TINY)
    initial = build_actor_critic(4, gym.spaces.Discrete(2), PRESETS["mlp"])
    assert any(not torch.equal(a, b) for a, b in zip(first.model.parameters(), initial.parameters(), strict=True))


class RolloutRecorder(Callback):
    """Record per-step flags and the size of each rollout's training batch."""

    def __init__(self, next_step_mode: bool) -> None:
        self.next_step_mode = next_step_mode
        self.expected_batch: list[int] = []
        self.batch_sizes: list[int] = []
        self.episodes: list[tuple[float, int]] = []
        self._resetting: np.ndarray | None = None
        self._masked = 0

    def on_step(self, context: CallbackContext) -> bool:
        if self._resetting is not None:
            self._masked += int(self._resetting.sum())
        assert context.terminations is not None and context.truncations is not None
        if self.next_step_mode:
            # NEXT_STEP: a sub-env's step after its episode ended only resets it and must be masked.
            self._resetting = context.terminations | context.truncations
        return True

    def on_episode_end(self, context: CallbackContext) -> bool:
        assert context.episode is not None
        self.episodes.append((context.episode.episode_return, context.episode.length))
        return True

    def on_rollout_end(self, context: CallbackContext) -> bool:
        assert context.actions is not None
        self.batch_sizes.append(len(context.actions))
        config = context.config
        self.expected_batch.append(config.num_envs * config.num_steps - self._masked)
        # Episodes ending at the rollout's last step mask the next rollout's first step (self._resetting).
        self._masked = 0
        return True


@pytest.mark.parametrize("mode", [gym.vector.AutoresetMode.NEXT_STEP, gym.vector.AutoresetMode.SAME_STEP])
def test_reset_steps_are_masked_and_episodes_counted(mode: gym.vector.AutoresetMode) -> None:
    recorder = RolloutRecorder(next_step_mode=mode is gym.vector.AutoresetMode.NEXT_STEP)
    config = PPOConfig(total_timesteps=1024, num_envs=4, num_steps=64, num_minibatches=2, update_epochs=1, seed=1)
    _, result = train_cartpole(config, [recorder], autoreset_mode=mode)
    assert len(result.episodes) > 10
    # CartPole pays 1 per step: a return equal to the length means no reset step leaked into either.
    assert all(ret == length for ret, length in recorder.episodes)
    assert [(e.episode_return, e.length) for e in result.episodes] == recorder.episodes
    assert recorder.batch_sizes == recorder.expected_batch
    if mode is gym.vector.AutoresetMode.NEXT_STEP:
        assert sum(recorder.batch_sizes) < config.num_iterations * config.batch_size
    else:
        assert sum(recorder.batch_sizes) == config.num_iterations * config.batch_size


class AlternatingRewardEnv(gym.Env[np.ndarray, np.int64]):
    """Each episode is a constant state x (alternating 1, 0, 1, ... per reset) paying x every step.

    It never terminates; a TimeLimit truncates it, so with bootstrapping V(x=1) = 1 / (1 - gamma) and V(x=0) = 0.
    """

    observation_space = gym.spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self) -> None:
        self.resets = 0
        self.x = 0.0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.x = float(self.resets % 2 == 0)
        self.resets += 1
        return self._obs(), {}

    def step(self, action: np.int64) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        return self._obs(), self.x, False, False, {}

    def _obs(self) -> np.ndarray:
        return np.array([self.x, 1.0 - self.x], dtype=np.float32)


@pytest.mark.parametrize("mode", [gym.vector.AutoresetMode.NEXT_STEP, gym.vector.AutoresetMode.SAME_STEP])
def test_truncation_bootstraps_from_the_final_observation(mode: gym.vector.AutoresetMode) -> None:
    # Treating the 5-step truncation as a termination would give V(1) of about 2.6; bootstrapping from the
    # next episode's first observation (the other state) would pull V(1) down and V(0) up.
    env = gym.vector.SyncVectorEnv(
        [lambda: gym.wrappers.TimeLimit(AlternatingRewardEnv(), max_episode_steps=5)] * 4, autoreset_mode=mode
    )
    config = PPOConfig(
        total_timesteps=3_200,
        num_envs=4,
        num_steps=20,
        num_minibatches=1,
        update_epochs=8,
        learning_rate=0.02,
        gamma=0.9,
        clip_vloss=False,
        anneal_lr=False,
        seed=0,
    )
    configure_torch(config)
    model = build_actor_critic(2, env.single_action_space, ModelConfig(hidden_sizes=(16,)))
    PPO(env, model, config).learn()
    with torch.no_grad():
        values = model.value(torch.tensor([[1.0, 0.0], [0.0, 1.0]])).tolist()
    assert values == pytest.approx([10.0, 0.0], abs=1.0)


def test_update_metrics_are_reported() -> None:
    seen: list[dict[str, float]] = []

    class Grab(Callback):
        def on_update(self, context: CallbackContext) -> bool:
            seen.append(dict(context.metrics))
            return True

    _, result = train_cartpole(TINY, [Grab()])
    assert len(seen) == TINY.num_iterations == result.iterations
    metrics = seen[-1]
    for key in (
        "losses/policy_loss",
        "losses/value_loss",
        "losses/entropy",
        "losses/approx_kl",
        "losses/clipfrac",
        "losses/explained_variance",
        "charts/learning_rate",
        "charts/SPS",
        "grad_norm/total",
        "grad_norm/actor_head.weight",
        "grad_norm/critic_body.0.weight",
    ):
        assert key in metrics, key
    # Two actions: the entropy is at most log 2; the learning rate anneals linearly towards zero.
    assert 0 < metrics["losses/entropy"] <= math.log(2) + 1e-6
    assert seen[0]["charts/learning_rate"] == pytest.approx(TINY.learning_rate)
    assert metrics["charts/learning_rate"] == pytest.approx(TINY.learning_rate / TINY.num_iterations)
    assert metrics["charts/SPS"] > 0
    assert result.metrics == metrics


def test_continuous_actions_train_and_are_clipped_for_the_env() -> None:
    seen_actions: list[np.ndarray] = []

    class Grab(Callback):
        def on_step(self, context: CallbackContext) -> bool:
            assert context.actions is not None
            seen_actions.append(np.array(context.actions))
            return True

    env = gym.make_vec("Pendulum-v1", 2, vectorization_mode="sync")
    torch.manual_seed(0)
    model = build_actor_critic(3, env.single_action_space, ModelConfig(init_log_std=1.0))
    config = PPOConfig(total_timesteps=128, num_envs=2, num_steps=32, num_minibatches=2, update_epochs=1)
    result = PPO(env, model, config, [Grab()]).learn()
    assert result.global_step == 128
    actions = np.concatenate(seen_actions)
    assert actions.min() >= -2.0 and actions.max() <= 2.0
    assert np.isclose(np.abs(actions), 2.0).any()  # std e^1 samples beyond the bounds, clipped to them


def test_env_and_config_must_agree() -> None:
    env = cartpole(2)
    model = build_actor_critic(4, env.single_action_space, PRESETS["mlp"])
    with pytest.raises(ValueError, match=r"env has 2 sub-environments but PPOConfig\.num_envs is 4"):
        PPO(env, model, TINY)


def test_evaluate_policy_returns_requested_episodes() -> None:
    env = cartpole(3)
    torch.manual_seed(0)
    model = build_actor_critic(4, env.single_action_space, PRESETS["mlp"])
    returns = evaluate_policy(model, env, 5, seed=0)
    assert len(returns) == 5
    assert all(1 <= r <= 500 for r in returns)
    always_left = evaluate_policy(lambda obs: np.zeros(len(obs), dtype=np.int64), env, 3, seed=0)
    assert max(always_left) < 20  # pushing one way topples the pole within a few steps


def _small_transformer(env: Any, n_layers: int) -> Any:
    """A seeded d_model-16 transformer actor-critic for `env` (a TradingVectorEnv)."""
    spec = env.feature_spec
    torch.manual_seed(0)
    return build_actor_critic(
        env.single_observation_space.shape[0],
        env.single_action_space,
        ModelConfig(name="transformer", d_model=16, n_layers=n_layers, n_heads=2),
        window=spec.window,
        n_features=spec.n_features,
    )


def test_trains_on_the_trading_vector_env_with_the_transformer() -> None:
    vec_env = pytest.importorskip("training.vec_env")
    env = vec_env.TradingVectorEnv(num_envs=4)
    model = _small_transformer(env, n_layers=1)
    config = PPOConfig(total_timesteps=128, num_envs=4, num_steps=32, num_minibatches=2, update_epochs=1)
    result = PPO(env, model, config).learn()
    assert result.global_step == 128
    assert math.isfinite(result.metrics["losses/value_loss"])


def test_the_rollout_encodes_the_windows_ahead_as_the_per_step_forward_pass_would() -> None:
    """Through resets (20-bar episodes, 32-step rollouts): the same actions, and trained parameters equal up to
    float rounding, as the rollout that runs the whole network at every step."""
    from training.env import EnvConfig
    from training.vec_env import TradingVectorEnv

    runs: list[tuple[list[np.ndarray], list[np.ndarray], dict[str, torch.Tensor]]] = []
    for ahead in (False, True):
        env = TradingVectorEnv(num_envs=4, config=EnvConfig(episode_length=20))
        model = _small_transformer(env, n_layers=2)
        config = PPOConfig(total_timesteps=256, num_envs=4, num_steps=32, num_minibatches=2, update_epochs=1)
        ppo = PPO(env, model, config, callbacks=[recorder := _RolloutRecorder()])
        ppo.encode_ahead = ahead
        if ahead:  # the whole-network step must not run at all
            model.act = _never  # type: ignore[method-assign]
        ppo.learn()
        runs.append((recorder.actions, recorder.starts, {k: v.clone() for k, v in model.state_dict().items()}))
    (actions, starts, before), (actions_ahead, starts_ahead, after) = runs
    assert sum(len(s) for s in starts) > 4  # episodes restarted inside rollouts
    assert [s.tolist() for s in starts] == [s.tolist() for s in starts_ahead]
    for a, b in zip(actions, actions_ahead, strict=True):
        np.testing.assert_array_equal(a, b)
    for name, value in before.items():
        torch.testing.assert_close(after[name], value, rtol=1e-4, atol=1e-5)


def _never(obs: torch.Tensor) -> Any:
    raise AssertionError("the rollout ran the whole network on a step")


class _RolloutRecorder(Callback):
    def __init__(self) -> None:
        self.actions: list[np.ndarray] = []
        self.starts: list[np.ndarray] = []

    def on_step(self, context: CallbackContext) -> bool:
        self.actions.append(np.array(context.actions))
        infos = context.infos or {}
        self.starts.append(np.flatnonzero(infos.get("_start_index", np.zeros(0, dtype=bool))))
        return True


# --- precision ------------------------------------------------------------------------------------------------

needs_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU computes no bfloat16 natively")


class _EncoderDtypes(Callback):
    """Which autocast dtype the model's encoders had whenever a callback ran (they must see the float32 model)."""

    def __init__(self) -> None:
        self.seen: set[object] = set()

    def _look(self, context: CallbackContext) -> bool:
        self.seen |= {m.compute_dtype for m in window_transformers(context.model)}
        return True

    on_step = on_update = on_rollout_end = _look


@needs_bf16
def test_bf16_runs_the_encoder_in_bfloat16_while_training_and_float32_around_it() -> None:
    """precision=bf16: the rollout's and the update's encodings are bfloat16 products (close to float32's, not
    equal), the heads and losses stay float32, callbacks and whatever runs after `learn` see the float32 model."""
    from training.env import EnvConfig
    from training.vec_env import TradingVectorEnv

    env = TradingVectorEnv(num_envs=4, config=EnvConfig(episode_length=20))
    model = _small_transformer(env, n_layers=2)
    (encoder,) = window_transformers(model)
    windows = torch.from_numpy(np.array(env.windows[:64]))
    with torch.inference_mode():
        plain = encoder.encode(windows)
        with encoder_precision([encoder], torch.bfloat16):
            low = encoder.encode(windows)
    assert low.dtype == torch.float32 and not torch.equal(low, plain)
    torch.testing.assert_close(low, plain, rtol=0.05, atol=0.05)

    config = PPOConfig(
        total_timesteps=256, num_envs=4, num_steps=32, num_minibatches=2, update_epochs=2, precision="bf16"
    )
    ppo = PPO(env, model, config, callbacks=[dtypes := _EncoderDtypes()])
    assert ppo.compute_dtype is torch.bfloat16
    result = ppo.learn()
    assert dtypes.seen == {None}
    assert encoder.compute_dtype is None
    assert all(math.isfinite(result.metrics[k]) for k in ("losses/policy_loss", "losses/value_loss"))


def test_encoder_precision_leaves_the_encoder_float32_when_the_block_raises() -> None:
    from training.vec_env import TradingVectorEnv

    model = _small_transformer(TradingVectorEnv(num_envs=2), n_layers=1)
    encoders = window_transformers(model)
    with pytest.raises(RuntimeError, match="boom"), encoder_precision(encoders, torch.bfloat16):
        assert [e.compute_dtype for e in encoders] == [torch.bfloat16]
        raise RuntimeError("boom")
    assert [e.compute_dtype for e in encoders] == [None]
    mlp_model = build_actor_critic(8, gym.spaces.Discrete(2), PRESETS["mlp"])
    assert window_transformers(mlp_model) == []  # nothing to change for an MLP: precision=bf16 leaves it float32


def test_bf16_is_refused_where_the_hardware_would_only_emulate_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_precision("fp32", "cpu") is None
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16'"):
        resolve_precision("fp16", "cpu")
    # A CPU without AVX512-BF16 or AMX cannot be had here: the capability probe is replaced, nothing else.
    monkeypatch.setattr(training_ppo, "cpu_has_bf16", lambda: False)
    with pytest.raises(ValueError, match="this CPU has no native bfloat16"):
        resolve_precision("bf16", "cpu")
    with pytest.raises(ValueError, match="no native bfloat16"):
        PPO(gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 4), _cartpole_model(), TINY_BF16)


TINY_BF16 = PPOConfig(
    total_timesteps=256, num_envs=4, num_steps=16, num_minibatches=2, update_epochs=2, precision="bf16"
)


def _cartpole_model() -> Any:
    torch.manual_seed(0)
    return build_actor_critic(4, gym.spaces.Discrete(2), PRESETS["mlp"])


# --- threads and devices ------------------------------------------------------------------------------------


def test_torch_threads_auto_is_the_usable_cores_and_bad_values_are_named() -> None:
    assert resolve_torch_threads("auto") == len(os.sched_getaffinity(0))
    assert resolve_torch_threads(3) == 3
    for bad in (0, -1, "two", True):
        with pytest.raises(ValueError, match=r"training\.torch_threads must be 'auto' or an integer >= 1"):
            resolve_torch_threads(bad)  # type: ignore[arg-type]


def test_device_auto_is_cuda_only_when_available() -> None:
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match=r"training\.device must be 'auto', 'cpu' or 'cuda'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA device"):
            resolve_device("cuda")


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


@pytest.mark.parametrize("device", DEVICES)
def test_ppo_keeps_network_and_buffers_on_the_device(device: str) -> None:
    vec_env = pytest.importorskip("training.vec_env")
    env = vec_env.TradingVectorEnv(num_envs=4)
    spec = env.feature_spec
    config = PPOConfig(total_timesteps=256, num_envs=4, num_steps=32, num_minibatches=2, update_epochs=2, device=device)
    configure_torch(config)
    model = build_actor_critic(
        spec.observation_size,
        env.single_action_space,
        ModelConfig(name="transformer", d_model=16, n_layers=2, n_heads=2),
        window=spec.window,
        n_features=spec.n_features,
    )
    seen: list[torch.device] = []

    class DeviceProbe(Callback):
        def on_update(self, context: CallbackContext) -> bool:
            seen.extend(p.device for p in context.model.parameters())
            return True

    result = PPO(env, model, config, callbacks=[DeviceProbe()]).learn()
    assert result.global_step == 256 and result.iterations == 2
    assert seen and {d.type for d in seen} == {device}
    assert result.rollout_seconds > 0 and result.update_seconds > 0
    assert result.rollout_seconds + result.update_seconds <= result.wall_time_s
    assert math.isfinite(result.metrics["losses/value_loss"])


def _tiny_training_run(tmp_path: Any, *overrides: str) -> Any:
    """`ai-trading train` for a few hundred steps on 2025's bundled candles; return its run directory."""
    from training.train import main

    args = [
        "data.start=2025-01-01",
        "training.num_envs=4",
        "training.num_steps=128",
        "env.episode_length=128",
        "training.progress=false",
        *overrides,
        f"output_dir={tmp_path / 'outputs'}",
        f"training.export_dir={tmp_path / 'models'}",
    ]
    assert main(args) == 0  # export checks the ONNX model against the float32 torch model (parity)
    (run_dir,) = (tmp_path / "outputs").iterdir()
    return run_dir


TRANSFORMER_RUN = ("model=transformer_small", "training.total_timesteps=1024", "training.eval_every=1")


@pytest.mark.parametrize("device", DEVICES)
def test_training_run_on_the_device_exports_on_the_cpu(device: str, tmp_path: Any) -> None:
    import json

    run_dir = _tiny_training_run(tmp_path, *TRANSFORMER_RUN, f"training.device={device}", "training.torch_threads=auto")
    timings = json.loads((run_dir / "summary.json").read_text())["timings"]
    assert timings["device"] == device and timings["torch_threads"] == len(os.sched_getaffinity(0))
    assert timings["global_step"] == 1024
    assert all(timings[k] > 0 for k in ("rollout_seconds", "update_seconds", "validation_seconds", "export_seconds"))
    assert (run_dir / "models" / "best_model.onnx").exists()  # every run keeps its export; publishing is opt-in
    assert timings["precision"] == "fp32"
    checkpoint = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert {t.device.type for t in checkpoint["state_dict"].values()} == {"cpu"}


BF16_DEVICES = [
    pytest.param("cpu", marks=needs_bf16),
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()), reason="no CUDA device with bfloat16"
        ),
    ),
]


@pytest.mark.parametrize("device", BF16_DEVICES)
def test_a_bf16_training_run_exports_a_float32_model_that_passes_parity(device: str, tmp_path: Any) -> None:
    import json

    run_dir = _tiny_training_run(tmp_path, *TRANSFORMER_RUN, f"training.device={device}", "training.ppo.precision=bf16")
    assert json.loads((run_dir / "summary.json").read_text())["timings"]["precision"] == "bf16"
    checkpoint = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert {t.dtype for t in checkpoint["state_dict"].values()} == {torch.float32}


@needs_bf16
def test_bf16_leaves_an_mlp_float32_and_its_run_says_so(tmp_path: Any) -> None:
    import json

    run_dir = _tiny_training_run(tmp_path, "training.total_timesteps=512", "training.ppo.precision=bf16")
    assert json.loads((run_dir / "summary.json").read_text())["timings"]["precision"] == "fp32"


_FAULTS_SCRIPT = """
import resource, sys
import torch
from training.ppo import keep_freed_memory

def faults_over_reallocations(steps=20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        # A step's activations: several 8 MiB tensors alive at once, all freed when the step ends.
        step = [torch.empty(2 << 20).fill_(1.0) for _ in range(6)]
        del step
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults_over_reallocations()
kept = keep_freed_memory()
again = keep_freed_memory()
faults_over_reallocations(1)  # the heap grows to a step's size once
print(default, faults_over_reallocations(), kept, again)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the page-fault count is read from getrusage on Linux")
def test_kept_freed_memory_is_reused_without_page_faults() -> None:
    # A fresh interpreter: the allocator setting is process-wide and cannot be undone.
    done = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True, check=True)
    default, kept_faults, kept, again = done.stdout.split()
    if kept == "False":
        pytest.skip("the C library is not glibc: keep_freed_memory is a documented no-op")
    assert again == "True"
    # glibc's default hands freed blocks this large back (by munmap or by trimming the heap), so later steps
    # fault pages in again: more faults than one step's ~12,300 pages (measured: ~26,000 over the 20 steps).
    assert int(default) > 12_300
    assert int(kept_faults) < int(default) / 5  # measured 0, at most one 8 MiB block (2,048 pages)


def test_openmp_threads_spin_only_on_an_idle_machine_and_a_users_setting_wins() -> None:
    from training import SPIN_COUNT, openmp_wait_settings, others_running

    assert openmp_wait_settings({}, 0) == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": SPIN_COUNT}
    assert openmp_wait_settings({}, 1) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert openmp_wait_settings({}, None) == {"OMP_WAIT_POLICY": "PASSIVE"}  # unknown: the safe choice
    assert openmp_wait_settings({"OMP_WAIT_POLICY": "ACTIVE"}, 0) == {}
    assert openmp_wait_settings({"GOMP_SPINCOUNT": "0"}, 0) == {}
    if sys.platform.startswith("linux"):
        running = others_running()
        assert running is not None and running >= 0


def test_importing_training_applies_the_openmp_settings_before_torch_loads() -> None:
    script = "import os, training, torch; print(os.environ['OMP_WAIT_POLICY'], os.environ.get('GOMP_SPINCOUNT'))"
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environ, check=True)
    policy, spin = done.stdout.split()
    assert policy == "PASSIVE"
    assert spin in ("30000", "None")  # which one depends on this machine's load: the decision is tested above
    mine = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={**environ, "OMP_WAIT_POLICY": "ACTIVE"}
    )
    assert mine.stdout.split() == ["ACTIVE", "None"]
