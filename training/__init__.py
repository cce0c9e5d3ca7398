"""Offline side: the trading env, models, PPO, callbacks, export; importing it registers the env.

Only gymnasium's registry is touched here (no torch), so `import training` stays light.

The package may import adapters, bot (features, model card, evaluation, config) and monitoring.
"""

import os
import time
from collections.abc import Mapping

from gymnasium.envs.registration import register, registry

SPIN_COUNT = "30000"
"""libgomp's spin count when idle: a waiting thread spins this long (about 0.5 ms) before it sleeps."""


def openmp_wait_settings(environ: Mapping[str, str], others_running: int | None) -> dict[str, str]:
    """Return the OpenMP wait settings to add to `environ` before torch loads, given how many other processes
    are running on the machine's CPUs now (None: unknown).

    How torch's OpenMP threads wait between ops decides PPO's speed at training.ppo.torch_threads > 1, and the
    best choice depends on whether the cores are free. Measured on 2 cores, update frames/s at 2 threads:

    | machine | spinning (GOMP_SPINCOUNT=30000) | sleeping (OMP_WAIT_POLICY=PASSIVE) | 1 thread |
    | --- | --- | --- | --- |
    | idle, transformer_small | 2,339-2,443 | 1,833 | 1,214 |
    | idle, mlp | 82,000 | 40,000 | 48,600 |
    | one core busy, transformer_small | 621 | 1,201 | 954 |
    | one core busy, mlp | 21,000 | 44,000 | 43,000 |

    So the threads spin briefly when nothing else runs at start and sleep at once otherwise, or when that is
    unknown (the load average would be the wrong measure: it still counts a run that ended a minute ago).
    Settings already in `environ` (OMP_WAIT_POLICY or GOMP_SPINCOUNT) are the user's choice and win: nothing
    is added. The choice is made once per process; a machine that gets busy later keeps the spinning threads
    (set OMP_WAIT_POLICY=PASSIVE on a shared machine).
    """
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return {}
    settings = {"OMP_WAIT_POLICY": "PASSIVE"}
    if others_running == 0:
        settings["GOMP_SPINCOUNT"] = SPIN_COUNT  # libgomp's spin count wins over the passive policy's zero
    return settings


def others_running() -> int | None:
    """Return how many other tasks are running on the CPUs now (Linux's /proc/loadavg), fewest of 3 looks 5 ms
    apart (a process that only passes by is not work); None where it cannot be read."""
    counts = []
    for look in range(3):
        try:
            with open("/proc/loadavg", encoding="ascii") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        counts.append(running - 1)  # this process, reading the file, is running
        if look < 2:
            time.sleep(0.005)
    return max(0, min(counts))


# Read once, when torch loads: importing training before torch is what makes these settings take effect.
os.environ.update(openmp_wait_settings(os.environ, others_running()))

ENV_ID = "ai-trading/Trading-v0"
"""Gymnasium id of `training.env.TradingEnv` (vector entry point `training.vec_env.TradingVectorEnv`)."""

if ENV_ID not in registry:
    register(
        id=ENV_ID,
        entry_point="training.env:TradingEnv",
        vector_entry_point="training.vec_env:TradingVectorEnv",
    )
