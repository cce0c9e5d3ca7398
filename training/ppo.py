"""Proximal Policy Optimization over a gymnasium vector env: rollout, GAE, update, on the CPU or a CUDA device.

Device: the network, the rollout buffers and the update live on `PPOConfig.device`; each step's observations
go to it once (into the rollout buffer, which the policy then reads) and the actions come back once.

Autoreset: both gymnasium 1.x modes work, read from `env.metadata["autoreset_mode"]` (NEXT_STEP when absent,
gymnasium's default).
- NEXT_STEP: the step after an episode ends is a reset step (action ignored, reward 0). Its transition is
  masked out of the loss, and a truncated episode bootstraps from the value of the final observation, which
  that mode returns as the next observation (already in the rollout buffer, so no extra forward pass).
- SAME_STEP: the final observation arrives in `infos["final_obs"]`; a truncated step adds
  gamma × V(final_obs) to its reward and then ends its episode like a termination.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
import structlog
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from torch import nn

from training.callbacks import Callback, CallbackContext, CallbackList, EpisodeInfo
from training.models import ActorCritic, PolicyPart, encoder_precision, window_transformers
from training.ppo_config import PPOConfig

log = structlog.get_logger()


@runtime_checkable
class WindowedVectorEnv(Protocol):
    """A vector env whose observations start with a row of a fixed table of feature windows
    (`training.vec_env.TradingVectorEnv`): the rollout can then encode those windows ahead, see `WindowEncodings`."""

    @property
    def windows(self) -> np.ndarray:
        """The table: one flat feature window per row."""
        ...

    def window_rows(self) -> np.ndarray:
        """The row of `windows` that each sub-env's current observation starts with."""
        ...


class WindowEncodings:
    """The policy's encodings of the feature windows a rollout's sub-envs visit, computed ahead in batches.

    The network is fixed during a rollout and its encoder reads only the window (`ActorCritic.window_encoder`),
    so the encoding of the window a sub-env steps to is known before the step. When a sub-env's current row has
    no encoding, that row and the rows it would visit in the rest of the rollout (the next rows, its episode
    permitting) are encoded in one batch with every sub-env that missed at the same step: at the first step
    of a rollout all of them, then only after a reset. One step then costs the encoder's share of a batch of
    about a thousand windows, on all the torch threads, instead of a forward pass over num_envs windows on one.
    Transformer_small on this 2-core machine, the policy's part of one 256-step rollout of 16 sub-envs:
    0.40-0.56 s -> 0.26-0.35 s (`tests/benchmarks/train_presets.py` has the end-to-end figures).
    The encodings equal those of the per-step forward pass up to float rounding (a test compares a rollout
    both ways).
    """

    BATCH = 1024
    """Windows per encoder call (bounds the activations' memory at about 30 MB for transformer_small)."""

    def __init__(
        self,
        env: WindowedVectorEnv,
        encode: PolicyPart,
        num_envs: int,
        horizon: int,
        device: torch.device,
        threads: int,
    ) -> None:
        self.env = env
        self.windows = env.windows
        self.encode = encode
        self.horizon = horizon
        self.device = device
        self.threads = threads
        self._base = np.full(num_envs, -1, dtype=np.int64)
        """First row of each sub-env's block of encodings (-1: none)."""
        self._count = np.zeros(num_envs, dtype=np.int64)
        self._table: torch.Tensor | None = None
        self._envs = torch.arange(num_envs, device=device)

    def clear(self) -> None:
        """Forget every encoding (the network changed)."""
        self._base[:] = -1

    def lookup(self, steps_left: int) -> torch.Tensor:
        """Encodings (num_envs, size) of the env's current windows (`window_rows`); `steps_left` is the rollout's
        steps from this one on (how far ahead a missing sub-env's block reaches)."""
        rows = self.env.window_rows()
        offset = rows - self._base
        missing = np.flatnonzero((self._base < 0) | (offset < 0) | (offset >= self._count))
        if len(missing) > 0:
            self._fill(missing, rows[missing], steps_left)
            offset[missing] = 0
        assert self._table is not None
        return self._table[self._envs, torch.from_numpy(offset).to(self.device)]

    def _fill(self, envs: np.ndarray, starts: np.ndarray, steps_left: int) -> None:
        counts = np.minimum(steps_left, len(self.windows) - starts)
        wanted = np.concatenate([start + np.arange(count) for start, count in zip(starts, counts, strict=True)])
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            parts = [
                self.encode(torch.from_numpy(self.windows[wanted[i : i + self.BATCH]]).to(self.device))
                for i in range(0, len(wanted), self.BATCH)
            ]
        finally:
            torch.set_num_threads(threads)
        encoded = torch.cat(parts)
        if self._table is None:
            self._table = torch.empty((len(self._base), self.horizon, encoded.shape[1]), device=self.device)
        begin = 0
        for env, count in zip(envs.tolist(), counts.tolist(), strict=True):
            self._table[env, :count] = encoded[begin : begin + count]
            begin += count
        self._base[envs] = starts
        self._count[envs] = counts


class PPOLosses(NamedTuple):
    """The terms of the PPO objective for one minibatch, plus diagnostics."""

    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor
    clipfrac: torch.Tensor


@dataclass
class TrainingResult:
    """Summary of a finished (or stopped) training run."""

    global_step: int
    """Environment steps taken, summed over sub-environments."""
    iterations: int
    """Completed rollout/update iterations."""
    wall_time_s: float
    """Wall-clock duration of learn()."""
    stopped_early: bool
    """A callback returned False."""
    episodes: list[EpisodeInfo] = field(default_factory=list)
    """Every episode finished during training."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Metrics of the last update."""
    rollout_seconds: float = 0.0
    """Wall-clock of the rollouts: acting, stepping the env, filling the buffers (and on_step callbacks)."""
    update_seconds: float = 0.0
    """Wall-clock of GAE and the gradient updates."""


def resolve_torch_threads(value: int | str) -> int:
    """Return the torch thread count for a `training.ppo.torch_threads` value: N, or "auto" for the usable cores.

    "auto" counts the cores this process may run on (its CPU affinity, which a container or `taskset`
    narrows), not the machine's. Processes training side by side (parallel sweep trials) should each get
    cores // workers instead, so that workers × threads does not oversubscribe the cores.
    """
    if value == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"training.torch_threads must be 'auto' or an integer >= 1, was {value!r}")
    return value


def resolve_device(value: str) -> str:
    """Return the torch device for a `training.ppo.device` value: "cpu", "cuda" (or "cuda:N"), or "auto".

    "auto" is "cuda" when torch sees a CUDA device and "cpu" otherwise; asking for "cuda" without one is a
    ValueError naming the problem.
    """
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value == "cpu":
        return value
    if value == "cuda" or (value.startswith("cuda:") and value[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"training.device is {value!r} but torch sees no CUDA device; use 'auto' or 'cpu'")
        return value
    raise ValueError(f"training.device must be 'auto', 'cpu' or 'cuda', was {value!r}")


def resolve_precision(value: str, device: str) -> torch.dtype | None:
    """Return the encoder's autocast dtype for a `training.ppo.precision` value on `device` (None: float32).

    "bf16" needs hardware that computes in bfloat16: a CUDA device that supports it, or a CPU with AVX512-BF16
    or AMX (oneDNN's bfloat16 kernels). Elsewhere torch would emulate it, slower than float32: a ValueError
    names the problem instead.
    """
    if value == "fp32":
        return None
    if value != "bf16":
        raise ValueError(f"training.ppo.precision must be 'fp32' or 'bf16', was {value!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_bf16_supported():
            raise ValueError(f"training.ppo.precision=bf16: the CUDA device {device} has no bfloat16; use fp32")
        return torch.bfloat16
    if not cpu_has_bf16():
        raise ValueError(
            "training.ppo.precision=bf16: this CPU has no native bfloat16 (AVX512-BF16 or AMX), where it would be "
            "slower than fp32; use fp32"
        )
    return torch.bfloat16


def cpu_has_bf16() -> bool:
    """Whether torch's CPU kernels (oneDNN) compute bfloat16 natively on this machine."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())  # type: ignore[no-untyped-call]


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
"""glibc's mallopt parameters (malloc.h)."""

_memory_kept = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel; True if it did.

    torch's CPU tensors are malloc'd and freed at every op. An update allocates and frees tensors of a few
    MB (activations, their gradients) thousands of times, and glibc serves blocks that large by mmap and
    returns them with munmap, so every one comes back as fresh pages the kernel faults in and zeroes:
    measured on transformer_small's minibatch (1024 windows), 181 ms a step, a third of it in the kernel.
    With blocks up to 256 MiB taken from the heap and freed memory kept (trimmed only above 1 GiB), the
    same step takes 111-117 ms. The cost: the process's RSS stays at its peak instead of shrinking.
    Applies to the whole process from then on; a no-op (False) where the C library is not glibc.
    """
    global _memory_kept
    if _memory_kept:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
        gnu = getattr(libc, "gnu_get_libc_version", None)
    except OSError:
        return False
    if mallopt is None or gnu is None:  # not glibc (musl, macOS): its allocator has other knobs
        return False
    _memory_kept = all(
        mallopt(option, value) == 1
        for option, value in ((_M_MMAP_THRESHOLD, 256 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20))
    )
    return _memory_kept


def configure_torch(config: PPOConfig) -> None:
    """Set torch's thread count and global seed from `config`.

    Call it before building the model: initialisation (orthogonal_ uses a QR decomposition) differs in the
    last bits between thread counts, so a model built under another thread count is not reproducible.
    """
    torch.set_num_threads(resolve_torch_threads(config.torch_threads))
    torch.manual_seed(config.seed)


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_value: torch.Tensor,
    terminations: torch.Tensor,
    truncations: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (advantages, returns) by generalised advantage estimation over a [T, N] rollout.

    values[t] is V(obs_t); the observation after step t is obs_{t+1} (next_value after the last step). A
    terminated step bootstraps nothing; a truncated step bootstraps from V(obs_{t+1}), which must then be the
    episode's final observation. Either ends the advantage recursion.
    """
    not_terminated = 1.0 - terminations.float()
    continues = not_terminated * (1.0 - truncations.float())
    following_values = torch.cat([values[1:], next_value.unsqueeze(0)])
    deltas = rewards + gamma * following_values * not_terminated - values
    # The recursion runs in numpy on the host: at num_envs values per step, one torch op costs ~5 µs and
    # one numpy op ~1 µs, and a rollout has hundreds of steps. The same float32 operations in the same
    # order, so the same bits (a test compares with the step-by-step torch recursion).
    delta_rows = deltas.numpy(force=True)
    decay_rows = (gamma * gae_lambda * continues).numpy(force=True)
    advantage_rows = np.empty_like(delta_rows)
    last_advantage = np.zeros_like(delta_rows[0])
    for t in range(len(delta_rows) - 1, -1, -1):
        last_advantage = delta_rows[t] + decay_rows[t] * last_advantage
        advantage_rows[t] = last_advantage
    advantages = torch.from_numpy(advantage_rows).to(values.device)
    return advantages, advantages + values


def ppo_losses(
    new_log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    new_value: torch.Tensor,
    old_value: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor,
    clip_coef: float,
    clip_vloss: bool = True,
    norm_adv: bool = True,
) -> PPOLosses:
    """Return the clipped policy loss, the (optionally clipped) value loss, mean entropy and diagnostics."""
    log_ratio = new_log_prob - old_log_prob
    ratio = log_ratio.exp()
    with torch.no_grad():
        # http://joschu.net/blog/kl-approx.html: unbiased, low-variance, always >= 0.
        approx_kl = ((ratio - 1.0) - log_ratio).mean()
        clipfrac = ((ratio - 1.0).abs() > clip_coef).float().mean()
    if norm_adv and advantages.numel() > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    policy_loss = torch.max(
        -advantages * ratio, -advantages * torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef)
    ).mean()
    if clip_vloss:
        value_clipped = old_value + torch.clamp(new_value - old_value, -clip_coef, clip_coef)
        value_loss = 0.5 * torch.max((new_value - returns).square(), (value_clipped - returns).square()).mean()
    else:
        value_loss = 0.5 * (new_value - returns).square().mean()
    return PPOLosses(policy_loss, value_loss, entropy.mean(), approx_kl, clipfrac)


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """Return 1 - Var(target - predicted) / Var(target); nan when the target is constant."""
    target_variance = target.var(unbiased=False)
    if target_variance.item() == 0.0:
        return math.nan
    return float(1.0 - (target - predicted).var(unbiased=False) / target_variance)


class PPO:
    """Train an ActorCritic with PPO on a gymnasium VectorEnv.

    Same config, same env and a model built after `configure_torch(config)` give identical parameters.
    """

    def __init__(
        self,
        env: VectorEnv[Any, Any, Any],
        model: ActorCritic,
        config: PPOConfig,
        callbacks: Callback | Iterable[Callback] = (),
    ) -> None:
        if env.num_envs != config.num_envs:
            raise ValueError(f"env has {env.num_envs} sub-environments but PPOConfig.num_envs is {config.num_envs}")
        obs_space = env.single_observation_space
        if not isinstance(obs_space, gym.spaces.Box):
            raise ValueError(f"observation space must be a Box, was {obs_space}")
        action_space = env.single_action_space
        if not isinstance(action_space, gym.spaces.Discrete | gym.spaces.Box):
            raise ValueError(f"action space must be Discrete or Box, was {action_space}")
        mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError(f"autoreset_mode must be NEXT_STEP or SAME_STEP, was {mode}")
        self.env = env
        # Concrete values of the config's "auto" settings (the training CLI resolves them before, the same way).
        self.torch_threads = resolve_torch_threads(config.torch_threads)
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.config = config
        self.compute_dtype = resolve_precision(config.precision, self.device)
        """The window encoder's autocast dtype in the rollout and the update (None: float32)."""
        self._encoders = window_transformers(model)
        self.autoreset_mode = AutoresetMode(mode)
        self.callbacks = (
            callbacks
            if isinstance(callbacks, CallbackList)
            else CallbackList([callbacks] if isinstance(callbacks, Callback) else callbacks)
        )
        # The fused kernel steps all parameters at once: ~5x faster than the per-tensor loop for small nets.
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate, eps=1e-5, fused=True)
        self._obs_shape = obs_space.shape
        self._action_shape = action_space.shape if isinstance(action_space, gym.spaces.Box) else ()
        self.encode_ahead = True
        """Encode the feature windows of a `WindowedVectorEnv` ahead in batches (`WindowEncodings`) when the model
        allows it; False: every step runs the whole network on the step's observations."""
        self._action_low: np.ndarray | None = None
        self._action_high: np.ndarray | None = None
        if isinstance(action_space, gym.spaces.Box):
            self._action_low, self._action_high = action_space.low, action_space.high

    def learn(self) -> TrainingResult:
        """Run config.num_iterations rounds of rollout, GAE and update; return a summary."""
        cfg, model, env = self.config, self.model, self.env
        configure_torch(cfg)
        keep_freed_memory()
        minibatch_order = torch.Generator().manual_seed(cfg.seed)
        device = torch.device(self.device)
        T, N = cfg.num_steps, cfg.num_envs
        next_step_mode = self.autoreset_mode is AutoresetMode.NEXT_STEP

        obs_buf = torch.zeros((T, N, *self._obs_shape), dtype=torch.float32, device=device)
        action_dtype = torch.float32 if self._action_shape else torch.int64
        actions_buf = torch.zeros((T, N, *self._action_shape), dtype=action_dtype, device=device)
        logprobs_buf = torch.zeros((T, N), device=device)
        rewards_buf = torch.zeros((T, N), device=device)
        values_buf = torch.zeros((T, N), device=device)
        terminations_buf = torch.zeros((T, N), device=device)
        truncations_buf = torch.zeros((T, N), device=device)
        valid_buf = torch.ones((T, N), dtype=torch.bool, device=device)

        context = CallbackContext(model=model, config=cfg, num_iterations=cfg.num_iterations)
        has_callbacks = len(self.callbacks) > 0
        all_episodes: list[EpisodeInfo] = []
        episode_returns = np.zeros(N, dtype=np.float64)
        episode_lengths = np.zeros(N, dtype=np.int64)
        # NEXT_STEP mode: True where the coming step only resets that sub-env.
        resetting = np.zeros(N, dtype=bool)
        global_step, iteration, completed, stopped = 0, 0, 0, False
        metrics: dict[str, float] = {}
        rollout_seconds = update_seconds = 0.0
        many_threads = self.torch_threads > 1 and device.type == "cpu"
        encoders, compute_dtype = self._encoders, self.compute_dtype
        # Around the network's calls only (callbacks see the float32 model); nothing at all in float32.
        low_precision: Callable[[], contextlib.AbstractContextManager[None]] = (
            (lambda: encoder_precision(encoders, compute_dtype))
            if compute_dtype is not None and encoders
            else contextlib.nullcontext
        )
        encodings = self._window_encodings(device)
        width = encodings.windows.shape[1] if encodings is not None else 0
        start = time.perf_counter()

        next_obs, _ = env.reset(seed=cfg.seed)
        stopped = not self.callbacks.on_training_start(context)
        while not stopped and iteration < cfg.num_iterations:
            iteration += 1
            context.iteration = iteration
            if cfg.anneal_lr:
                fraction = 1.0 - (iteration - 1.0) / cfg.num_iterations
                self.optimizer.param_groups[0]["lr"] = fraction * cfg.learning_rate
            rollout_episodes: list[EpisodeInfo] = []
            context.episodes = rollout_episodes

            # Rollout: act in every sub-env num_steps times, on one thread: a batch of num_envs rows gains
            # nothing from more, and on a busy machine the threads' hand-offs cost more than the rows.
            rollout_start = time.perf_counter()
            if many_threads:
                torch.set_num_threads(1)
            model.eval()
            if encodings is not None:
                encodings.clear()
            for step in range(T):
                obs_buf[step].copy_(torch.from_numpy(np.asarray(next_obs)))
                if next_step_mode:
                    valid_buf[step].copy_(torch.from_numpy(~resetting))
                with torch.inference_mode(), low_precision():
                    if encodings is not None:
                        encoded = encodings.lookup(T - step)
                        action, logprob, value = model.act_encoded(encoded, obs_buf[step, :, width:])
                    else:
                        action, logprob, value = model.act(obs_buf[step])
                    actions_buf[step] = action
                    logprobs_buf[step] = logprob
                    values_buf[step] = value
                env_action = action.cpu().numpy()
                if self._action_low is not None:
                    env_action = np.clip(env_action, self._action_low, self._action_high)
                next_obs, reward, terminated, truncated, infos = env.step(env_action)
                global_step += N
                rewards_buf[step].copy_(torch.from_numpy(np.asarray(reward)))
                terminations_buf[step].copy_(torch.from_numpy(terminated))
                truncations_buf[step].copy_(torch.from_numpy(truncated))
                if not next_step_mode and truncated.any():
                    self._bootstrap_truncated(rewards_buf[step], terminations_buf[step], truncated, infos)

                episode_returns += reward
                episode_lengths += ~resetting
                done = terminated | truncated
                if next_step_mode:
                    resetting = done
                if has_callbacks:
                    context.global_step = global_step
                    context.observations, context.actions = next_obs, env_action
                    context.rewards, context.terminations, context.truncations = reward, terminated, truncated
                    context.infos = infos
                    stopped = not self.callbacks.on_step(context)
                if done.any():
                    for index in np.flatnonzero(done):
                        episode = EpisodeInfo(
                            int(index), float(episode_returns[index]), int(episode_lengths[index]), global_step
                        )
                        rollout_episodes.append(episode)
                        if has_callbacks:
                            context.episode = episode
                            stopped = not self.callbacks.on_episode_end(context) or stopped
                    episode_returns[done] = 0.0
                    episode_lengths[done] = 0
                if stopped:
                    break
            all_episodes += rollout_episodes
            context.global_step = global_step
            update_start = time.perf_counter()
            rollout_seconds += update_start - rollout_start
            if stopped:
                break

            # GAE: bootstrap from the observation after the rollout.
            if many_threads:
                torch.set_num_threads(self.torch_threads)
            with torch.inference_mode(), low_precision():
                next_value = model.value(torch.as_tensor(np.asarray(next_obs), dtype=torch.float32, device=device))
            advantages, returns = compute_gae(
                rewards_buf, values_buf, next_value, terminations_buf, truncations_buf, cfg.gamma, cfg.gae_lambda
            )
            valid = valid_buf.flatten()
            b_obs = obs_buf.reshape(-1, *self._obs_shape)[valid]
            b_actions = actions_buf.reshape(-1, *self._action_shape)[valid]
            b_logprobs = logprobs_buf.flatten()[valid]
            b_values = values_buf.flatten()[valid]
            b_advantages = advantages.flatten()[valid]
            b_returns = returns.flatten()[valid]
            if has_callbacks:
                context.actions = b_actions.numpy(force=True)
                stopped = not self.callbacks.on_rollout_end(context)
            if stopped:
                break
            if b_obs.shape[0] == 0:  # every step was a NEXT_STEP reset step (tiny rollouts only)
                completed = iteration
                continue

            # Update: update_epochs passes of shuffled minibatches.
            model.train()
            metrics = self._update(minibatch_order, b_obs, b_actions, b_logprobs, b_values, b_advantages, b_returns)
            metrics["losses/explained_variance"] = explained_variance(b_values, b_returns)
            update_seconds += time.perf_counter() - update_start
            metrics["charts/learning_rate"] = self.optimizer.param_groups[0]["lr"]
            metrics["charts/SPS"] = global_step / (time.perf_counter() - start)
            if rollout_episodes:
                metrics["charts/episodic_return"] = float(np.mean([e.episode_return for e in rollout_episodes]))
                metrics["charts/episodic_length"] = float(np.mean([e.length for e in rollout_episodes]))
            context.metrics = metrics
            completed = iteration
            if has_callbacks:
                stopped = not self.callbacks.on_update(context)

        torch.set_num_threads(self.torch_threads)
        self.callbacks.on_training_end(context)
        wall_time_s = time.perf_counter() - start
        log.info("ppo_training_finished", global_step=global_step, iterations=completed, wall_time_s=wall_time_s)
        return TrainingResult(
            global_step, completed, wall_time_s, stopped, all_episodes, metrics, rollout_seconds, update_seconds
        )

    def _window_encodings(self, device: torch.device) -> WindowEncodings | None:
        encoder = self.model.window_encoder()
        if not self.encode_ahead or encoder is None or not isinstance(self.env, WindowedVectorEnv):
            return None
        width, encode = encoder
        windows = self.env.windows
        if windows.ndim != 2 or windows.shape[1] != width or len(self._obs_shape) != 1:
            return None
        return WindowEncodings(
            self.env, encode, self.config.num_envs, self.config.num_steps, device, self.torch_threads
        )

    def _bootstrap_truncated(
        self,
        rewards: torch.Tensor,
        terminations: torch.Tensor,
        truncated: np.ndarray,
        infos: dict[str, Any],
    ) -> None:
        # SAME_STEP mode: the returned observation is already the next episode's first; bootstrap from
        # infos["final_obs"] inside the reward and cut the episode there.
        indices = np.flatnonzero(truncated & ~terminations.numpy(force=True).astype(bool))
        if len(indices) == 0:
            return
        final_obs = np.stack([infos["final_obs"][i] for i in indices]).astype(np.float32)
        with torch.inference_mode(), encoder_precision(self._encoders, self.compute_dtype):
            final_values = self.model.value(torch.from_numpy(final_obs).to(rewards.device))
        index_tensor = torch.from_numpy(indices).to(rewards.device)
        rewards[index_tensor] += self.config.gamma * final_values
        terminations[index_tensor] = 1.0

    def _update(
        self,
        minibatch_order: torch.Generator,
        b_obs: torch.Tensor,
        b_actions: torch.Tensor,
        b_logprobs: torch.Tensor,
        b_values: torch.Tensor,
        b_advantages: torch.Tensor,
        b_returns: torch.Tensor,
    ) -> dict[str, float]:
        cfg, model = self.config, self.model
        n = b_obs.shape[0]
        minibatch_size = max(1, math.ceil(n / cfg.num_minibatches))
        parameters = [p for p in model.parameters() if p.requires_grad]
        totals: list[torch.Tensor] = []
        grad_norms: list[torch.Tensor] = []
        layer_norms: dict[str, float] = {}
        for _ in range(cfg.update_epochs):
            order = torch.randperm(n, generator=minibatch_order).to(b_obs.device)
            for begin in range(0, n, minibatch_size):
                index = order[begin : begin + minibatch_size]
                with encoder_precision(self._encoders, self.compute_dtype):
                    _, new_logprob, entropy, new_value = model.get_action_and_value(b_obs[index], b_actions[index])
                losses = ppo_losses(
                    new_logprob,
                    b_logprobs[index],
                    b_advantages[index],
                    new_value,
                    b_values[index],
                    b_returns[index],
                    entropy,
                    cfg.clip_coef,
                    cfg.clip_vloss,
                    cfg.norm_adv,
                )
                loss = losses.policy_loss - cfg.ent_coef * losses.entropy + cfg.vf_coef * losses.value_loss
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                grad_norms.append(nn.utils.clip_grad_norm_(parameters, cfg.max_grad_norm))
                self.optimizer.step()
                totals.append(torch.stack([t.detach() for t in losses]))
            if cfg.target_kl is not None and totals[-1][3].item() > cfg.target_kl:
                break
        # Per-layer norms of the last minibatch, after clipping (the step that was actually taken).
        for name, parameter in model.named_parameters():
            if parameter.grad is not None:
                layer_norms[f"grad_norm/{name}"] = float(parameter.grad.norm())
        mean = torch.stack(totals).mean(0).tolist()
        metrics = {
            "losses/policy_loss": mean[0],
            "losses/value_loss": mean[1],
            "losses/entropy": mean[2],
            "losses/approx_kl": mean[3],
            "losses/clipfrac": mean[4],
            "grad_norm/total": float(torch.stack(grad_norms).mean()),
        }
        metrics.update(layer_norms)
        return metrics


def evaluate_policy(
    policy: ActorCritic | Callable[[np.ndarray], np.ndarray],
    env: VectorEnv[Any, Any, Any],
    n_episodes: int,
    seed: int | None = None,
) -> list[float]:
    """Run a deterministic policy until n_episodes episodes finish and return their undiscounted returns.

    `policy` is an ActorCritic (its deterministic_action is used) or any function from a batch of
    observations to a batch of actions. Each sub-env contributes at most ceil(n_episodes / num_envs)
    episodes, so short episodes are not over-represented.
    """
    if isinstance(policy, ActorCritic):
        act = _deterministic_actor(policy)
        was_training = policy.training
        policy.eval()
    else:
        act = policy
    quota = math.ceil(n_episodes / env.num_envs)
    taken = np.zeros(env.num_envs, dtype=np.int64)
    running = np.zeros(env.num_envs, dtype=np.float64)
    resetting = np.zeros(env.num_envs, dtype=bool)
    next_step_mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP) == AutoresetMode.NEXT_STEP
    returns: list[float] = []
    obs, _ = env.reset(seed=seed)
    try:
        while len(returns) < n_episodes:
            obs, reward, terminated, truncated, _ = env.step(act(np.asarray(obs)))
            running += np.where(resetting, 0.0, reward)
            done = terminated | truncated
            for index in np.flatnonzero(done):
                if taken[index] < quota and len(returns) < n_episodes:
                    returns.append(float(running[index]))
                    taken[index] += 1
            running[done] = 0.0
            if next_step_mode:
                resetting = done
    finally:
        if isinstance(policy, ActorCritic):
            policy.train(was_training)
    return returns


def _deterministic_actor(model: ActorCritic) -> Callable[[np.ndarray], np.ndarray]:
    def act(obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model.deterministic_action(torch.as_tensor(obs, dtype=torch.float32)).numpy()

    return act
