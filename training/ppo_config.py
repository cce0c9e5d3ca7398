"""PPO's hyperparameters (`PPOConfig`), apart from the trainer so that reading a config does not load torch.

`training.train`'s config embeds it as `training.ppo`; `training.ppo.PPO` takes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters.

    The defaults were chosen for fast wall-clock solves of CartPole-v1 on one CPU thread (median ~6k steps
    over 16 seeds, all solved; see tests/benchmarks/cartpole.py); trading configs override them.
    """

    total_timesteps: int = 150_000
    """Environment steps to train for, summed over sub-environments."""
    num_envs: int = 16
    """Sub-environments in the vector env (must match the env)."""
    num_steps: int = 32
    """Steps per sub-environment in each rollout; a rollout holds num_envs × num_steps transitions."""
    learning_rate: float = 1e-3
    """Adam learning rate (the start value when annealed)."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to zero over the run."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda: bias/variance trade-off of the advantage estimate."""
    num_minibatches: int = 2
    """Minibatches each rollout is split into per epoch."""
    update_epochs: int = 8
    """Passes over each rollout."""
    norm_adv: bool = True
    """Normalise advantages per minibatch."""
    clip_coef: float = 0.2
    """PPO ratio clip range epsilon (also the value clip range)."""
    clip_vloss: bool = True
    """Clip the value loss around the rollout's value estimates."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    max_grad_norm: float = 0.5
    """Clip the global gradient norm to this value."""
    target_kl: float | None = None
    """Stop the epochs of an update early once approx KL exceeds this; None never stops."""
    seed: int = 1
    """Seed for torch sampling, minibatch order and env resets."""
    torch_threads: int | Literal["auto"] = 1
    """torch intra-op threads, or "auto" in a config (`resolve_torch_threads` turns it into the usable cores before
    PPO gets it)."""
    device: str = "cpu"
    """torch device for the network, the rollout buffers and the update: "cpu", "cuda", "cuda:N", or "auto" in a
    config (`resolve_device` turns it into "cuda" when CUDA is available before PPO gets it)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Arithmetic of the transformer's window encoder while PPO trains: "fp32", or "bf16" (its matrix products in
    bfloat16 under autocast, on a CPU with native bfloat16 or a CUDA device: `resolve_precision`). The heads, the
    losses, the optimiser, validation, export and the daemon stay float32. An MLP has no encoder: bf16 leaves it
    as it is."""

    def __post_init__(self) -> None:
        positive = {
            "total_timesteps": self.total_timesteps,
            "num_envs": self.num_envs,
            "num_steps": self.num_steps,
            "num_minibatches": self.num_minibatches,
            "update_epochs": self.update_epochs,
            "learning_rate": self.learning_rate,
            "clip_coef": self.clip_coef,
        }
        if isinstance(self.torch_threads, int):
            positive["torch_threads"] = self.torch_threads
        for key, value in positive.items():
            if value <= 0:
                raise ValueError(f"PPOConfig.{key} must be > 0, was {value}")
        for key, fraction in (("gamma", self.gamma), ("gae_lambda", self.gae_lambda)):
            if not 0.0 <= fraction <= 1.0:
                raise ValueError(f"PPOConfig.{key} must be in [0, 1], was {fraction}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"PPOConfig.precision must be 'fp32' or 'bf16', was {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", self.device):
            raise ValueError(f"PPOConfig.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', was {self.device!r}")

    @property
    def batch_size(self) -> int:
        """Transitions per rollout."""
        return self.num_envs * self.num_steps

    @property
    def num_iterations(self) -> int:
        """Rollout/update iterations the run takes."""
        return max(1, self.total_timesteps // self.batch_size)
