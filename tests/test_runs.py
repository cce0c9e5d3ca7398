"""monitoring.runs: the run-reading interface, its local backend and the backend selection.

The W&B backend needs a W&B server, which tests cannot reach: it is not exercised here (its selection is).
Runs are written with the real `RunWriter`, as training writes them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from monitoring.run_store import RunWriter
from monitoring.runs import (
    LocalRuns,
    RunInfo,
    RunNotFoundError,
    RunSourceError,
    choose_backend,
    open_runs,
    unflatten_summary,
)

ROOT = Path(__file__).resolve().parents[1]


def _write_run(root: Path, run_id: str, total_return: float, mtime: float) -> Path:
    writer = RunWriter(root, run_id, config={"model": {"name": "mlp"}, "env": {"initial_equity": 10_000.0}})
    for step in (1024, 2048, 3072):
        writer.log_metrics(step, {"losses/policy_loss": -0.01 * step / 1024, "grad_norm/total": 0.5})
        writer.log_metrics(step, {"charts/episodic_return": step / 1e4})
    writer.write_trades(
        [
            {
                "entry_time": pd.Timestamp("2025-01-01 03:00", tz="UTC"),
                "exit_time": pd.Timestamp("2025-01-01 05:00", tz="UTC"),
                "pnl": 12.5,
                "is_open": False,
            },
            {
                "entry_time": pd.Timestamp("2025-01-02 10:00", tz="UTC"),
                "exit_time": pd.Timestamp("2025-01-02 11:00", tz="UTC"),
                "pnl": -4.0,
                "is_open": True,
            },
        ]
    )
    writer.write_frame(
        "equity-test",
        pd.Series(
            [10_000.0, 10_012.5],
            index=pd.DatetimeIndex(["2025-01-01", "2025-01-02"], tz="UTC", name="date"),
            name="equity",
        ).to_frame(),
    )
    writer.write_summary({"test": {"policy": {"total_return": total_return}, "buy_and_hold": {"total_return": 0.01}}})
    writer.close()
    os.utime(writer.dir, (mtime, mtime))
    return writer.dir


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    root = tmp_path / "outputs"
    _write_run(root, "run-old", 0.05, 1_700_000_000)
    _write_run(root, "run-new", -0.02, 1_700_000_100)
    (root / "not-a-run").mkdir()
    return root


def test_local_runs_lists_newest_first_and_limits(runs_root: Path) -> None:
    source = LocalRuns(runs_root)
    assert [r.run_id for r in source.list_runs()] == ["run-new", "run-old"]
    assert [r.run_id for r in source.list_runs(limit=1)] == ["run-new"]
    newest = source.list_runs()[0]
    assert newest.summary["test"]["policy"]["total_return"] == -0.02
    assert newest.config["model"]["name"] == "mlp"
    assert newest.created is not None and newest.created.year == 2023


def test_local_runs_reads_every_history_row_trades_and_equity(runs_root: Path) -> None:
    source = LocalRuns(runs_root)
    history = source.history("run-old")
    assert len(history) == 6  # every logged row, not a sample
    assert history["losses/policy_loss"].dropna().tolist() == pytest.approx([-0.01, -0.02, -0.03])
    only = source.history("run-old", ["grad_norm/total"])
    assert list(only.columns) == ["step", "grad_norm/total"]
    trades = source.trades("run-old")
    assert trades["pnl"].tolist() == [12.5, -4.0]
    assert str(trades["entry_time"].dt.tz) == "UTC"
    assert source.trades("run-old", split="validation").empty
    equity = source.equity("run-old")
    assert isinstance(equity.index, pd.DatetimeIndex) and equity.iloc[-1] == 10_012.5
    assert source.equity("run-old", split="validation").empty


def test_unknown_run_id_lists_the_known_ones(runs_root: Path) -> None:
    source = LocalRuns(runs_root)
    with pytest.raises(RunNotFoundError) as error:
        source.get_run("abc123")
    message = str(error.value)
    assert "abc123" in message and "run-new" in message and "run-old" in message
    assert str(runs_root.resolve()) in message
    with pytest.raises(RunNotFoundError):
        source.trades("abc123")


def test_test_metrics_of_plain_and_walk_forward_runs() -> None:
    plain = RunInfo("a", None, summary={"test": {"policy": {"sharpe": 1.0}}})
    assert plain.test_metrics() == (None, {"policy": {"sharpe": 1.0}})
    folds = RunInfo(
        "b",
        None,
        summary={"folds": {"0": {"test": {"policy": {"sharpe": 0.1}}}, "2": {"test": {"policy": {"sharpe": 0.3}}}}},
    )
    assert folds.test_metrics() == ("fold2", {"policy": {"sharpe": 0.3}})
    assert RunInfo("c", None).test_metrics() == (None, {})


def test_unflatten_summary_rebuilds_our_layout_from_wandb_keys() -> None:
    flat = {"test/policy/total_return": 0.1, "test/buy_and_hold/sharpe": -1.0, "_runtime": 3, "run_id": "x"}
    assert unflatten_summary(flat) == {
        "test": {"policy": {"total_return": 0.1}, "buy_and_hold": {"sharpe": -1.0}},
        "run_id": "x",
    }


@pytest.mark.parametrize(
    ("env", "kind", "words"),
    [
        ({"WANDB_MODE": "offline", "WANDB_API_KEY": "k" * 40}, "local", "offline"),
        ({"WANDB_MODE": "disabled", "WANDB_API_KEY": "k" * 40}, "local", "disabled"),
        ({"WANDB_API_KEY": "k" * 40}, "wandb", "WANDB_API_KEY"),
        (
            {"WANDB_MODE": "online", "WANDB_API_KEY": "k" * 40, "WANDB_BASE_URL": "http://wandb.local:8080"},
            "wandb",
            "wandb.local",
        ),
        ({}, "local", "no W&B API key"),
    ],
)
def test_choose_backend_auto(env: dict[str, str], kind: str, words: str, tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), **env}
    choice = choose_backend("auto", env)
    assert choice.kind == kind
    assert words in choice.reason


def test_choose_backend_finds_a_key_in_netrc(tmp_path: Path) -> None:
    netrc_file = tmp_path / ".netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password " + "a" * 40 + "\n")
    netrc_file.chmod(0o600)
    assert choose_backend("auto", {"HOME": str(tmp_path)}).kind == "wandb"
    assert choose_backend("auto", {"HOME": str(tmp_path), "WANDB_BASE_URL": "https://other.host"}).kind == "local"
    assert choose_backend("auto", {"HOME": str(tmp_path), "WANDB_MODE": "offline"}).kind == "local"


def test_explicit_backends_and_bad_name() -> None:
    assert choose_backend("local", {"WANDB_API_KEY": "k"}).kind == "local"
    assert choose_backend("wandb", {"WANDB_MODE": "offline"}).kind == "wandb"
    with pytest.raises(ValueError, match="backend"):
        choose_backend("cloud", {})  # type: ignore[arg-type]


def test_open_runs_offline_reads_local_and_says_why(runs_root: Path, tmp_path: Path) -> None:
    source = open_runs("ai-trading", None, runs_root, env={"WANDB_MODE": "offline", "HOME": str(tmp_path)})
    assert source.kind == "local"
    assert "offline" in source.reason
    assert source.location == str(runs_root.resolve())
    assert [r.run_id for r in source.list_runs()] == ["run-new", "run-old"]


def test_open_runs_on_missing_directory_lists_nothing(tmp_path: Path) -> None:
    source = open_runs(runs_dir=tmp_path / "absent", backend="local")
    assert source.list_runs() == []


def test_module_imports_neither_torch_nor_training() -> None:
    code = (
        "import sys, monitoring.runs; "
        "bad = [m for m in ('torch', 'training', 'wandb') if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_explicit_wandb_backend_without_a_key_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No server is reachable in tests; with no key wandb.Api() refuses before any network call.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "absent-netrc"))
    with pytest.raises(RunSourceError, match="cannot read runs from W&B project 'ai-trading'"):
        open_runs("ai-trading", None, tmp_path, backend="wandb")
