"""W&B as its users know it: WANDB_* variables honoured, and what runs logged read back from the offline files.

Runs are read with wandb's own reader (`wandb leet inspect --json`, tests/support/wandb_runs.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from bot.__main__ import main as bot_main
from bot.model.policy import OnnxPolicy
from monitoring.logging import reset_logging
from tests.support.binance_server import BinanceServer
from tests.support.policy_model import export_policy, fitted_spec, random_weights
from tests.support.wandb_runs import OfflineRun, offline_runs
from tests.test_postgres_daemon import T0, FakeClock, _config, _run_paper

NO_LIMITS = [
    "bot.risk.max_position_notional=1e12",
    "bot.risk.max_total_notional=1e12",
    "bot.risk.max_order_notional=1e12",
    "bot.risk.max_orders_per_minute=1000",
    "bot.risk.max_daily_loss=1",
    "bot.risk.max_drawdown=1",
    "bot.risk.reduce_at=1",
]
CHARTS = ("live/cumulative_pnl", "live/win_loss_distribution", "live/duration_vs_return", "live/win_rate_by_hour")


def assert_charts(run: OfflineRun, trades: int) -> None:
    """Each trading chart is a W&B plot whose data table was written to the run's files."""
    for key in CHARTS:
        assert run.summary.get(f"{key}_table._type") == "table-file", key
        assert (run.path / "files" / run.summary[f"{key}_table.path"]).is_file(), key
    assert run.summary["live/cumulative_pnl_table.nrows"] == trades  # one point per closed trade
    assert run.summary["live/trades_closed"] == trades


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = load_ohlcv(sample_path())
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    return export_policy(tmp_path_factory.mktemp("model"), spec, random_weights(spec, 2, seed=0), (0.0, 1.0))


def _backtest(model_path: Path, output_dir: Path, *extra: str) -> None:
    args = [
        "mode=backtest",
        f"model_path={model_path}",
        "bot.start=2024-01-01",
        "bot.end=2024-02-01",
        f"output_dir={output_dir}",
        "run_name=bt",
        "wandb.enabled=true",
        *NO_LIMITS,
        *extra,
    ]
    try:
        assert bot_main(args) == 0
    finally:
        reset_logging()


@pytest.mark.integration
def test_a_backtest_run_logs_what_a_live_run_logs_beside_its_run_directory(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a run in ./wandb would land here
    _backtest(model_path, tmp_path / "outputs")
    assert not (tmp_path / "wandb").exists(), "a backtest must not write its W&B run to ./wandb"
    (run,) = offline_runs(tmp_path / "outputs" / "bt" / "wandb")
    assert run.run["project"] == "ai-trading" and run.exit_code == 0
    assert run.config["bot"]["mode"] == "backtest" and len(run.summary["model_sha"]) == 64
    equity = run.values("live/equity")
    assert 24 * 28 <= len(equity) <= 24 * 32  # one row per 1 h candle of January (downsampled to 1 h)
    assert all(0.0 <= d < 1.0 for d in run.values("live/drawdown"))
    assert run.values("live/position/BTC/USDT")
    trades = run.values("live/realized_pnl")
    assert trades, "the backtest's closed trades must be logged as live/* keys"
    assert {"live/entry_price", "live/exit_price", "live/duration_seconds"} <= run.logged_keys()
    # The trading charts, built at the end of the backtest from every closed trade.
    assert_charts(run, len(trades))


@pytest.mark.integration
def test_wandb_dir_project_and_entity_are_honoured(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("WANDB_PROJECT", "team-project")
    monkeypatch.setenv("WANDB_ENTITY", "team")
    _backtest(model_path, tmp_path / "outputs", "bot.end=2024-01-03")
    assert not list((tmp_path / "outputs").rglob("offline-run-*")), "WANDB_DIR must win over the run directory"
    (run,) = offline_runs(tmp_path / "elsewhere")
    assert run.run["project"] == "team-project"
    assert run.config["wandb"]["project"] == "ai-trading"  # the file's value, overridden by the environment
    monkeypatch.setenv("WANDB_MODE", "disabled")
    _backtest(model_path, tmp_path / "outputs-2", "bot.end=2024-01-03")
    assert len(offline_runs(tmp_path / "elsewhere")) == 1  # WANDB_MODE=disabled: nothing written


@pytest.mark.integration
async def test_a_paper_daemon_run_logs_trades_equity_and_charts(
    binance_server: BinanceServer, model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    clock = FakeClock(T0 + 30 * 60_000)
    binance_server.market_clock_ms = clock
    cfg = _config(tmp_path, model_path, f"sqlite:///{tmp_path / 'paper.db'}", 60, "wandb.enabled=true")
    engine = await _run_paper(binance_server, cfg, clock, OnnxPolicy.load(model_path))
    assert not (tmp_path / "wandb").exists()
    (run,) = offline_runs(tmp_path / "outputs" / "wandb")
    assert run.run["project"] == "ai-trading" and run.exit_code == 0 and run.config["bot"]["mode"] == "paper"
    equity = run.values("live/equity")
    assert 55 <= len(equity) <= engine.stats.candles + 1  # 1 h candles: one row each (the downsampling keeps 1 h)
    assert all(0.0 <= d < 1.0 for d in run.values("live/drawdown"))
    assert run.values("live/position/BTC/USDT") and "live/cash" in run.logged_keys()
    trades = run.values("live/realized_pnl")
    assert trades, "a 60-candle paper run of this policy closes trades"
    assert len(run.values("live/duration_seconds")) == len(trades)
    assert_charts(run, len(trades))


@pytest.mark.parametrize(
    ("env", "why"),
    [({"WANDB_MODE": "offline"}, "WANDB_MODE=offline"), ({"WANDB_MODE": ""}, "no W&B credentials")],
)
def test_report_publish_without_a_server_says_it_needs_one(tmp_path: Path, env: dict[str, str], why: str) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    child = {**os.environ, **env, "NETRC": str(tmp_path / "no-netrc"), "PYTHONPATH": str(root)}
    child.pop("WANDB_API_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "training.reports", "--publish", "--output-dir", str(tmp_path / "reports")],
        cwd=tmp_path,
        env=child,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    # Printed once: piped, as here, that is the JSON error line (a terminal gets the plain line instead).
    lines = [json.loads(line).get("error", "") if line.startswith("{") else line for line in done.stderr.splitlines()]
    lines = [line for line in lines if "--publish" in line]
    assert len(lines) == 1 and "--publish builds a W&B Report, which needs a usable W&B server" in lines[0]
    assert why in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "reports").exists()
