"""training.reports on real tiny training runs (two PPO runs of 2048 steps on the bundled candles)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring.reports.model import ReportError
from monitoring.runs import LocalRuns
from tests.support.training_runs import train_two_runs
from training import reports
from training.reports import generate_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real runs; run-b is the newer one."""
    return train_two_runs(tmp_path_factory.mktemp("report-runs"))


def _summary(runs: Path, run_id: str) -> dict:
    return json.loads((runs / run_id / "summary.json").read_text())


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100, (path, width, height)


def _pct(value: float) -> str:
    return f"{value:.2%}"


def test_performance_markdown_holds_each_runs_test_figures_and_charts(trained: Path, tmp_path: Path) -> None:
    path = generate_report("performance", runs_dir=trained, backend="local", limit=5, output_dir=tmp_path)
    assert path.name == "report.md" and path.parent.parent == tmp_path
    text = path.read_text()
    for run_id in ("run-a", "run-b"):
        test = _summary(trained, run_id)["test"]
        row = next(line for line in text.splitlines() if line.startswith(f"| {run_id} |") and "mlp" in line)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[4] == _pct(test["policy"]["total_return"])
        assert cells[5] == f"{test['policy']['sharpe']:.3f}"
        assert cells[10] == str(test["policy"]["trade_count"])
        baseline = next(line for line in text.splitlines() if line.startswith(f"| {run_id} |") and "mlp" not in line)
        assert _pct(test["buy_and_hold"]["total_return"]) in baseline
        assert _pct(test["sma_crossover"]["total_return"]) in baseline
    # Newest first.
    assert text.index("| run-b |") < text.index("| run-a |")
    assert "local: " in text and "ai-trading" in text
    charts = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert set(charts) >= {
        "returns_comparison.png",
        "reward_curves.png",
        "loss_components.png",
        "gradient_norms.png",
        "validation_progress.png",
    }
    for chart in charts:
        _assert_png(path.parent / chart)


def test_performance_limit_keeps_the_newest_runs(trained: Path, tmp_path: Path) -> None:
    path = generate_report("performance", runs_dir=trained, backend="local", limit=1, fmt="json", output_dir=tmp_path)
    data = json.loads(path.read_text())
    assert [r["run_id"] for r in data["runs"]] == ["run-b"]
    run = data["runs"][0]
    test = _summary(trained, "run-b")["test"]
    assert run["test"]["policy"]["total_return"] == test["policy"]["total_return"]
    assert run["excess_return_vs_buy_and_hold"] == pytest.approx(
        test["policy"]["total_return"] - test["buy_and_hold"]["total_return"]
    )
    history = pd.read_parquet(trained / "run-b" / "metrics.parquet")
    last_grad = history[["step", "grad_norm/total"]].dropna().groupby("step").mean().iloc[-1, 0]
    assert run["final_training_values"]["grad_norm/total"] == pytest.approx(last_grad)
    assert data["meta"]["source"].startswith("local: ")
    assert {c["file"] for c in data["charts"]} >= {"reward_curves.png", "loss_components.png"}


def test_trade_report_matches_the_trades_parquet(trained: Path, tmp_path: Path) -> None:
    path = generate_report("trade", run_id="run-a", runs_dir=trained, backend="local", fmt="json", output_dir=tmp_path)
    data = json.loads(path.read_text())
    trades = pd.read_parquet(trained / "run-a" / "trades-test.parquet")
    summary = _summary(trained, "run-a")["test"]["policy"]
    stats = data["trade_stats"]
    assert stats["trades"] == len(trades) == summary["trade_count"]
    assert stats["win_rate"] == pytest.approx(summary["win_rate"])
    assert stats["total_pnl"] == pytest.approx(trades["pnl"].sum())
    assert stats["wins"] == int((trades["pnl"] > 0).sum())
    # Monthly returns compound to the split's total return.
    monthly = np.array([m["return"] for m in data["monthly_returns"]])
    assert np.prod(1 + monthly) - 1 == pytest.approx(summary["total_return"], abs=1e-9)
    hours = data["win_rate_by_hour"]
    assert sum(h["trades"] for h in hours) == len(trades)
    assert data["top_trades"]["best"][0]["pnl"] == pytest.approx(trades["pnl"].max())
    assert data["top_trades"]["worst"][0]["pnl"] == pytest.approx(trades["pnl"].min())
    for chart in data["charts"]:
        _assert_png(path.parent / chart["file"])
    assert {c["file"] for c in data["charts"]} == {
        "cumulative_pnl.png",
        "win_loss_distribution.png",
        "trade_duration.png",
        "win_rate_by_hour.png",
        "monthly_returns.png",
    }


def test_trade_report_markdown_and_html_show_the_same_numbers(trained: Path, tmp_path: Path) -> None:
    summary = _summary(trained, "run-b")["test"]["policy"]
    trades = pd.read_parquet(trained / "run-b" / "trades-test.parquet")
    md = generate_report("trade", run_id="run-b", runs_dir=trained, backend="local", output_dir=tmp_path).read_text()
    assert f"| total return | {_pct(summary['total_return'])} |" in md
    assert f"| trades | {len(trades)} |" in md
    assert f"| win rate | {_pct(summary['win_rate'])} |" in md
    page = generate_report(
        "trade", run_id="run-b", runs_dir=trained, backend="local", fmt="html", output_dir=tmp_path
    ).read_text()
    assert f"<td>{_pct(summary['total_return'])}</td>" in page
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == 5
    assert all(base64.b64decode(i)[:8] == PNG_SIGNATURE for i in images)


def test_trade_report_without_run_id_uses_the_newest_run(trained: Path, tmp_path: Path) -> None:
    path = generate_report("trade", runs_dir=trained, backend="local", fmt="json", output_dir=tmp_path)
    assert json.loads(path.read_text())["run_id"] == "run-b"


def test_unknown_run_id_names_the_runs_that_exist(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no run 'abc123'") as error:
        generate_report("trade", run_id="abc123", runs_dir=trained, backend="local", output_dir=tmp_path)
    assert "run-a" in str(error.value) and "run-b" in str(error.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_no_runs_says_where_it_looked(tmp_path: Path) -> None:
    empty = tmp_path / "empty-outputs"
    with pytest.raises(ReportError, match=re.escape(str(empty.resolve()))):
        generate_report("performance", runs_dir=empty, backend="local", output_dir=tmp_path / "reports")


def test_cli_writes_report_and_exits_nonzero_on_errors(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "my-reports"
    code = reports.main(
        ["--project", "ai-trading", "--format", "md", "--output-dir", str(out), "--runs-dir", str(trained)]
    )
    assert code == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed.is_file() and printed.parent.parent == out
    assert "Performance comparison of the last 2 run(s)" in printed.read_text()
    code = reports.main(
        ["--report-type", "trade", "--run-id", "nope", "--runs-dir", str(trained), "--output-dir", str(out)]
    )
    assert code == 1
    assert "no run 'nope'" in capsys.readouterr().err
    assert reports.main(["--report-type", "bogus"]) == 2


def test_report_reads_through_any_run_source(trained: Path, tmp_path: Path) -> None:
    source = LocalRuns(trained, reason="given by the caller")
    path = generate_report("performance", source=source, fmt="md", output_dir=tmp_path, limit=2)
    assert "given by the caller" in path.read_text()


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.integration
def test_trade_report_reads_a_backtest_run_and_its_ledger(trained: Path, tmp_path: Path) -> None:
    model = trained.parent / "models" / "run-a" / "best_model.onnx"
    outputs = tmp_path / "outputs"
    backtest = _cli(
        tmp_path,
        "bot",
        "mode=backtest",
        f"bot.model_path={model}",
        "bot.start=2025-10-01",
        f"output_dir={outputs}",
        "run_name=backtest-x",
        "bot.backtest_ledger=true",
        f"bot.ledger_url=sqlite:///{tmp_path / 'backtest.db'}",
        "wandb.enabled=false",
        # Lifted so that a target of 0 empties the position in one order: the ledger counts a round trip only
        # when the position is flat again, and this test is about the report path, not the risk limits.
        "bot.risk.max_order_notional=1000000",
    )
    assert backtest.returncode == 0, backtest.stderr
    # The daemon says which training run its model came from (the card's training.run_id) when it loads it.
    loaded = [json.loads(line) for line in backtest.stderr.splitlines() if '"policy_loaded"' in line]
    assert [event["run_id"] for event in loaded] == ["run-a"]
    trades = pd.read_parquet(outputs / "backtest-x" / "trades-backtest.parquet")
    assert len(trades) > 0

    def report(*args: str) -> subprocess.CompletedProcess[str]:
        return _cli(tmp_path, "report", "--report-type", "trade", "--runs-dir", str(outputs), "--format", "json", *args)

    # A backtest run has one split with trades, `backtest`: the report reads it without being told.
    result = report("--run-id", "backtest-x")
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / result.stdout.strip()).read_text())
    assert data["split"] == "backtest" and data["trade_stats"]["trades"] == len(trades)
    assert data["trade_stats"]["total_pnl"] == pytest.approx(trades["pnl"].sum())

    # A split it does not have is one line naming the ones it has; several splits need --split.
    missing = report("--run-id", "backtest-x", "--split", "test")
    assert missing.returncode == 1 and len(missing.stderr.splitlines()) == 1
    assert "its splits with trades: backtest" in missing.stderr
    shutil.copytree(outputs / "backtest-x", outputs / "backtest-y")
    shutil.copy(outputs / "backtest-y" / "trades-backtest.parquet", outputs / "backtest-y" / "trades-rerun.parquet")
    several = report("--run-id", "backtest-y")
    assert several.returncode == 1 and "pass --split" in several.stderr
    chosen = report("--run-id", "backtest-y", "--split", "rerun")
    assert chosen.returncode == 0, chosen.stderr

    # The README's way to a ledger for `--ledger`: bot.backtest_ledger=true with a bot.ledger_url file.
    ledger = report("--ledger", str(tmp_path / "backtest.db"))
    assert ledger.returncode == 0, ledger.stderr
    assert json.loads((tmp_path / ledger.stdout.strip()).read_text())["trade_stats"]["trades"] > 0


def test_performance_report_shows_pbo_and_dsr_of_the_compared_runs(trained: Path, tmp_path: Path) -> None:
    from training.overfitting import assess
    from training.sweep.overfitting import trial_returns

    path = generate_report("performance", runs_dir=trained, backend="local", limit=5, fmt="json", output_dir=tmp_path)
    data = json.loads(path.read_text())
    # Both runs recorded their selected checkpoint's validation returns; oldest first counts as trial 1.
    expected = assess([(run_id, trial_returns(trained / run_id)) for run_id in ("run-a", "run-b")])
    compared = data["overfitting"]
    assert compared["pbo"]["n_trials"] == 2 and compared["pbo"]["pbo"] == expected.study.pbo
    runs = {r["run_id"]: r["overfitting"]["compared"] for r in data["runs"]}
    assert runs["run-a"]["n_trials"] == 1 and runs["run-b"]["n_trials"] == 2
    assert runs["run-b"]["dsr"] == pytest.approx(expected.trials["run-b"].dsr)
    text = generate_report("performance", runs_dir=trained, backend="local", limit=5, output_dir=tmp_path).read_text()
    assert "Overfitting (validation split)" in text and "DSR among compared" in text and "PBO" in text
