"""Real tiny training runs (2048 PPO steps on the bundled candles, a few seconds each) for the tools that read runs.

`training.train` writes them through `monitoring.run_store`, exactly as reports, model analysis and the
dashboard find them in ``outputs/``.
"""

from __future__ import annotations

import os
from pathlib import Path


def train_tiny_run(root: Path, name: str, seed: int, export_dir: Path | None = None) -> None:
    """Train run `name` into ``root/outputs/<name>``, exporting the model to `export_dir` (``root/models/<name>``)."""
    from training.train import main

    export_dir = root / "models" / name if export_dir is None else export_dir
    code = main(
        [
            f"seed={seed}",
            f"run_name={name}",
            "data.start=2025-03-01",
            "training.total_timesteps=2048",
            "training.num_envs=4",
            "training.num_steps=256",
            "env.episode_length=256",
            "training.eval_every=1",
            "training.progress=false",
            "log_level=WARNING",
            f"output_dir={root / 'outputs'}",
            f"training.export_dir={export_dir}",
            "training.publish=true",
        ]
    )
    assert code == 0


def train_two_runs(root: Path) -> Path:
    """Train run-a (seed 1) and run-b (seed 2, the newer one by mtime) under `root`; return their ``outputs``."""
    train_tiny_run(root, "run-a", 1)
    train_tiny_run(root, "run-b", 2)
    os.utime(root / "outputs" / "run-a", (1_700_000_000, 1_700_000_000))
    os.utime(root / "outputs" / "run-b", (1_700_000_100, 1_700_000_100))
    return root / "outputs"
