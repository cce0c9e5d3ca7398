"""`ai-trading bot` / `python -m bot`: backtest end to end, live-mode guard, model card refusal, config errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from adapters.ohlcv import load_ohlcv
from adapters.sample_data import sample_path
from bot.__main__ import main, normalise_overrides
from monitoring.logging import reset_logging
from tests.support.policy_model import corrupt_card, export_policy, fitted_spec, mismatch_sha, random_weights

REPO = Path(__file__).resolve().parents[1]
NO_LIMITS = [
    "bot.risk.max_position_notional=1e12",
    "bot.risk.max_total_notional=1e12",
    "bot.risk.max_order_notional=1e12",
    "bot.risk.max_orders_per_minute=1000",
    "bot.risk.max_daily_loss=1",
    "bot.risk.max_drawdown=1",
    "bot.risk.reduce_at=1",
]


@pytest.fixture(autouse=True)
def _logging() -> Iterator[None]:
    yield
    reset_logging()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = load_ohlcv(sample_path())
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    out = tmp_path_factory.mktemp("cli-model")
    export_policy(out, spec, random_weights(spec, 2, seed=0), (0.0, 1.0))
    return out


@pytest.mark.integration
def test_backtest_runs_end_to_end_without_torch(model_dir: Path, tmp_path: Path) -> None:
    args = [
        "mode=backtest",
        f"model_path={model_dir / 'best_model.onnx'}",
        "bot.start=2024-01-01",
        "bot.end=2024-03-01",
        f"output_dir={tmp_path}",
        "run_name=bt",
        *NO_LIMITS,
    ]
    code = (
        "import sys; from bot.__main__ import main; rc = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'the daemon imported torch'; "
        "assert not any(m == 'training' or m.startswith('training.') for m in sys.modules), 'imported training'; "
        "sys.exit(rc)"
    )
    env = {**os.environ, "AI_TRADING_LOG_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "total return" in done.stdout and "buy_and_hold" in done.stdout
    assert "candles/s" in done.stdout
    summary = json.loads((tmp_path / "bt" / "summary.json").read_text())
    policy = summary["evaluation"]["backtest"]["policy"]
    trades = pd.read_parquet(tmp_path / "bt" / "trades-backtest.parquet")
    assert policy["trade_count"] == len(trades) > 0
    assert summary["candles"] == 31 * 24 + 29 * 24
    equity = pd.read_parquet(tmp_path / "bt" / "equity-backtest.parquet")
    assert policy["final_equity"] == pytest.approx(equity["equity"].iloc[-1])
    assert json.loads((tmp_path / "bt" / "config.json").read_text())["bot"]["mode"] == "backtest"


def test_live_mode_refuses_without_confirmation(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], model_dir: Path
) -> None:
    monkeypatch.delenv("AI_TRADING_CONFIRM_LIVE", raising=False)
    monkeypatch.setenv("AI_TRADING_BINANCE_API_KEY", "k" * 16)
    monkeypatch.setenv("AI_TRADING_BINANCE_SECRET", "s" * 16)
    assert main(["mode=live", f"model_path={model_dir / 'best_model.onnx'}"]) == 2
    assert "bot.confirm_live=true" in capsys.readouterr().err


def test_live_mode_refuses_without_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], model_dir: Path
) -> None:
    for name in list(os.environ):
        if name.startswith("AI_TRADING_BINANCE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AI_TRADING_CONFIRM_LIVE", "1")
    assert main(["mode=live", f"model_path={model_dir / 'best_model.onnx'}"]) == 2
    err = capsys.readouterr().err
    assert "mode=live needs API keys" in err and "AI_TRADING_BINANCE_API_KEY" in err


@pytest.mark.parametrize(("damage", "message"), [(corrupt_card, "invalid JSON"), (mismatch_sha, "sha256 mismatch")])
def test_a_corrupt_or_mismatched_card_stops_the_start(
    damage: object, message: str, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "model"
    target.mkdir()
    for name in ("best_model.onnx", "best_model.json"):
        (target / name).write_bytes((model_dir / name).read_bytes())
    damage(target / "best_model.onnx")  # type: ignore[operator]
    assert main(["mode=paper", f"model_path={target / 'best_model.onnx'}"]) == 1
    err = capsys.readouterr().err
    assert "model refused" in err and message in err


def test_bad_config_names_the_key_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bot.risk.max_drawdown=lots"]) == 2
    assert "bot.risk.max_drawdown" in capsys.readouterr().err
    assert main(["bot.modee=paper"]) == 2
    assert "bot.modee" in capsys.readouterr().err
    assert main(["mode=sideways"]) == 2
    assert "bot.mode" in capsys.readouterr().err


def test_help_lists_the_overridable_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for key in (
        "bot.mode",
        "bot.model_path",
        "bot.confirm_live",
        "bot.risk.max_drawdown",
        "exchange.exchange_id",
        "wandb.enabled",
        "data.path",
        "costs.taker_fee_bps",
    ):
        assert key in out
    assert normalise_overrides(["mode=live", "data.path=x", "confirm_live=true"]) == [
        "bot.mode=live",
        "data.path=x",
        "bot.confirm_live=true",
    ]
