"""`ai-trading quickstart`: train → export → daemon backtest over the held-out split, offline, agreeing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from bot.app_config import BotAppConfig
from bot.config import load_config
from bot.model.card import ModelCard
from training.quickstart import AGREEMENT_PP, main, run_quickstart

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_trains_exports_and_the_daemon_backtest_agrees_with_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, models = tmp_path / "outputs", tmp_path / "models"
    result = run_quickstart(
        ["training.total_timesteps=8192", f"output_dir={out}", f"training.export_dir={models}", "seed=3"]
    )
    printed = capsys.readouterr().out

    # The published model is a valid ONNX export with a card naming the run that made it.
    assert result.model_path == models / "best_model.onnx" and result.model_path.is_file()
    card = ModelCard.from_json((models / "best_model.json").read_text())
    assert card.run_id == result.train_dir.name

    # The daemon replayed exactly training's held-out window and reached the same result.
    summary = json.loads((result.backtest_dir / "summary.json").read_text())
    test_range = json.loads((result.train_dir / "summary.json").read_text())["data_range"]["test"]
    assert pd.Timestamp(summary["window"]["start"]) == pd.Timestamp(test_range["first"])
    assert pd.Timestamp(summary["window"]["end"]) == pd.Timestamp(test_range["last"])
    assert summary["candles"] == test_range["rows"]
    ours, theirs = result.backtest["policy"], result.training_test["policy"]
    assert ours["trade_count"] == theirs["trade_count"]
    assert result.return_gap_pp <= AGREEMENT_PP and result.agrees
    assert (result.backtest_dir / "trades-backtest.parquet").is_file()

    # The same window with the shipped limits, as `ai-trading bot` would trade it: the config is default.yaml's,
    # every candle was replayed, and the model trades under those limits (sizing respects them).
    shipped = load_config(BotAppConfig, []).bot.risk
    defaults_config = json.loads((result.defaults_dir / "config.json").read_text())["bot"]["risk"]
    assert Decimal(defaults_config["max_position_notional"]) == shipped.max_position_notional
    assert Decimal(defaults_config["max_order_notional"]) == shipped.max_order_notional
    assert result.defaults["candles"] == test_range["rows"]
    if theirs["trade_count"] > 0:
        assert result.defaults["orders"] > 0
    assert "with the shipped risk limits: total return" in printed

    # The W&B run was written offline, and the user is told how to sync it and what to run next.
    assert result.wandb_dir is not None and any(result.wandb_dir.rglob("*.wandb"))
    assert "daemon backtest vs training evaluation of the test split: agree" in printed
    assert f"wandb sync {result.wandb_dir}" in printed
    assert "buy_and_hold" in printed and "sma_crossover" in printed
    assert "ai-trading bot" in printed


def test_quickstart_rejects_a_bad_override_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-wandb", f"output_dir={tmp_path}", "training.no_such_key=1"]) == 2
    assert "training.no_such_key" in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "nothing should be written for a rejected config"


def test_quickstart_rejects_a_non_override_argument(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bogus"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


@pytest.mark.integration
def test_quickstart_help_is_reachable_from_the_console_script() -> None:
    env = {**os.environ, "WANDB_MODE": "offline"}
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "quickstart", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "--timesteps" in done.stdout and "bundled BTC/USDT" in done.stdout
