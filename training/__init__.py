"""Offline side: the trading env, models, PPO, callbacks, export; importing it registers the env.

Only gymnasium's registry is touched here (no torch), so `import training` stays light.
"""

import os

from gymnasium.envs.registration import register, registry

# torch's OpenMP threads sleep rather than spin while they wait for work (read once, when torch loads; an
# OMP_WAIT_POLICY already set wins). With training.torch_threads > 1 on a machine whose cores are busy with
# other work, spinning threads wait on each other: measured 5-10x slower PPO updates than with passive ones.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ENV_ID = "ai-trading/Trading-v0"
"""Gymnasium id of `training.env.TradingEnv` (vector entry point `training.vec_env.TradingVectorEnv`)."""

if ENV_ID not in registry:
    register(
        id=ENV_ID,
        entry_point="training.env:TradingEnv",
        vector_entry_point="training.vec_env:TradingVectorEnv",
    )
