"""Offline side: the trading env, models, PPO, callbacks, export; importing it registers the env.

Only gymnasium's registry is touched here (no torch), so `import training` stays light.
"""

from gymnasium.envs.registration import register, registry

ENV_ID = "ai-trading/Trading-v0"
"""Gymnasium id of `training.env.TradingEnv` (vector entry point `training.vec_env.TradingVectorEnv`)."""

if ENV_ID not in registry:
    register(
        id=ENV_ID,
        entry_point="training.env:TradingEnv",
        vector_entry_point="training.vec_env:TradingVectorEnv",
    )
