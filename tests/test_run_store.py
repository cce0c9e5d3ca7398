"""Run directories written by training/backtests read back intact, atomically, NaN-safe."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitoring.run_store import FLAT_PPO_KEYS, RunStore, RunWriter, current_config, json_safe


def test_written_run_reads_back(tmp_path: Path) -> None:
    writer = RunWriter(tmp_path, "run-a", config={"seed": 3, "model": {"name": "mlp"}})
    for step in range(5):
        writer.log_metrics(step * 10, {"losses/value_loss": 1.0 / (step + 1), "charts/SPS": 100.0 + step})
    writer.write_trades([{"side": "long", "pnl": 1.5}, {"side": "long", "pnl": -0.5}], split="test")
    writer.write_summary({"test/sharpe": 1.25, "test/profit_factor": math.inf})
    writer.close()

    record = RunStore(tmp_path).get("run-a")
    assert record.config == {"seed": 3, "model": {"name": "mlp"}}
    history = record.history()
    assert list(history["step"]) == [0, 10, 20, 30, 40]
    assert history["losses/value_loss"].iloc[-1] == 0.2
    assert list(record.history(["charts/SPS"]).columns) == ["step", "charts/SPS"]
    assert record.trades("test")["pnl"].sum() == 1.0
    # inf is not JSON: it is stored as null rather than as an invalid token.
    assert record.summary == {"test/sharpe": 1.25, "test/profit_factor": None}
    assert json.loads((tmp_path / "run-a" / "summary.json").read_text())["test/profit_factor"] is None


def test_runs_are_listed_newest_first_and_unknown_ids_fail(tmp_path: Path) -> None:
    RunWriter(tmp_path, "old", config={})
    RunWriter(tmp_path, "new", config={})
    (tmp_path / "not-a-run").mkdir()
    os.utime(tmp_path / "old", (1_000_000, 1_000_000))
    assert [r.run_id for r in RunStore(tmp_path).runs()] == ["new", "old"]
    with pytest.raises(KeyError, match="missing"):
        RunStore(tmp_path).get("missing")


def test_json_safe_converts_numpy_and_non_finite() -> None:
    payload = {"a": np.float32(1.5), "b": np.array([1, 2]), "c": float("nan"), "d": (np.int64(3),)}
    assert json_safe(payload) == {"a": 1.5, "b": [1, 2], "c": None, "d": [3]}


def test_corrupt_summary_is_reported_not_fatal(tmp_path: Path) -> None:
    RunWriter(tmp_path, "r", config={"x": 1})
    (tmp_path / "r" / "summary.json").write_text("{not json")
    record = RunStore(tmp_path).get("r")
    assert record.summary == {}
    assert record.config == {"x": 1}


OLD_CONFIG: dict[str, Any] = {
    "seed": 3,
    "model": {"name": "mlp"},
    "training": {"total_timesteps": 4096, "lr": 2e-4, "num_envs": 4, "eval_every": 2, "walk_forward": {"folds": 0}},
}
"""A config.json of a run from before issue 10: the PPO settings flat under `training`."""


def test_an_older_runs_flat_config_is_read_in_todays_shape(tmp_path: Path) -> None:
    from monitoring.dashboard.app import run_overview
    from monitoring.runs import LocalRuns

    RunWriter(tmp_path, "old", config=OLD_CONFIG).write_summary({"train_seconds": 4.0, "test": {}})
    record = RunStore(tmp_path).get("old")
    assert record.config["training"] == {
        "eval_every": 2,
        "walk_forward": {"folds": 0},
        "ppo": {"total_timesteps": 4096, "learning_rate": 2e-4, "num_envs": 4},
    }
    assert run_overview(LocalRuns(tmp_path).get_run("old"))["total_timesteps"] == 4096


flat_settings = st.dictionaries(st.sampled_from(sorted(FLAT_PPO_KEYS)), st.integers() | st.floats(allow_nan=False))
run_settings = st.dictionaries(st.sampled_from(["eval_every", "publish", "embargo_bars"]), st.booleans())


@given(flat=flat_settings, run=run_settings)
def test_current_config_moves_exactly_the_flat_ppo_settings(flat: dict[str, float], run: dict[str, bool]) -> None:
    old = {"seed": 1, "training": {**run, **flat}}
    new = current_config(old)
    ppo = {FLAT_PPO_KEYS[k]: v for k, v in flat.items()}
    assert new == ({"seed": 1, "training": {**run, "ppo": ppo}} if flat else old)
    assert current_config(new) == new  # today's shape is left as it is
