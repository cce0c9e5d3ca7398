"""`ai-trading train` keeps the daemon's model; `training.publish=true` or `ai-trading models publish` replace it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bot.model.card import ModelCard

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "data.start=2025-03-01",
    "training.total_timesteps=1024",
    "training.num_envs=4",
    "training.num_steps=256",
    "env.episode_length=256",
    "training.eval_every=1",
    "training.progress=false",
    "log_level=WARNING",
]


def ai_trading(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `ai-trading ARGS` as a user would, from `cwd`, with this checkout's code."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_train_keeps_the_daemons_model_until_published(tmp_path: Path) -> None:
    # A model the daemon already serves: another run's export, published.
    first = ai_trading(tmp_path, "train", *TINY, "seed=1", "run_name=serving", "training.publish=true")
    assert first.returncode == 0, first.stderr
    assert "published as the daemon's default model" in first.stdout
    served = tmp_path / "models" / "best_model.onnx"
    served_bytes = served.read_bytes()
    assert ModelCard.load(tmp_path / "models" / "best_model.json").run_id == "serving"

    # A smoke run on the side leaves it alone and says how to publish.
    smoke = ai_trading(tmp_path, "train", *TINY, "seed=2", "run_name=smoke")
    assert smoke.returncode == 0, smoke.stderr
    assert served.read_bytes() == served_bytes
    assert (tmp_path / "outputs" / "smoke" / "models" / "best_model.onnx").is_file()
    assert "ai-trading models publish smoke" in smoke.stdout

    # Publishing by run id (and by directory) makes it the daemon's model, its card naming the run.
    published = ai_trading(tmp_path, "models", "publish", "smoke")
    assert published.returncode == 0, published.stderr
    assert served.read_bytes() == (tmp_path / "outputs" / "smoke" / "models" / "best_model.onnx").read_bytes()
    card = ModelCard.load(tmp_path / "models" / "best_model.json")
    assert card.run_id == "smoke"
    card.verify_onnx(served)
    again = ai_trading(tmp_path, "models", "publish", str(tmp_path / "outputs" / "serving"), "--to", "elsewhere")
    assert again.returncode == 0, again.stderr
    assert ModelCard.load(tmp_path / "elsewhere" / "best_model.json").run_id == "serving"
    assert not list((tmp_path / "models").glob(".*publishing"))

    # A damaged export is refused before anything is copied.
    broken = tmp_path / "outputs" / "broken"
    shutil.copytree(tmp_path / "outputs" / "serving", broken)
    with (broken / "models" / "best_model.onnx").open("ab") as handle:
        handle.write(b"garbage")
    refused = ai_trading(tmp_path, "models", "publish", "broken")
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "refusing to publish" in refused.stderr
    assert json.loads(refused.stderr)["event"] == "model_publish_failed"  # piped: the JSON line only
    assert ModelCard.load(tmp_path / "models" / "best_model.json").run_id == "smoke"


def test_publish_of_an_unknown_run_is_one_line(tmp_path: Path) -> None:
    result = ai_trading(tmp_path, "models", "publish", "no-such-run")
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "no-such-run" in line and "Traceback" not in line
    assert "publish" in ai_trading(tmp_path, "models", "--help").stdout
