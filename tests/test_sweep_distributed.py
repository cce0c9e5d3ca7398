"""Sweeps across machines: two worker processes share one Optuna study on a real PostgreSQL server.

Each worker is `python -m training.sweep` in its own process with its own output directory (as on two
machines) and the same `--storage postgresql://...` and `--name`. They must split the trials (distinct trial
numbers, distinct parameters, exactly what the dry run listed); a worker killed mid-trial leaves a trial
that the next worker marks failed (heartbeats), and the study goes on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from tests.support.postgres import PostgresServer

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "training.total_timesteps=1024",
    "training.num_envs=4",
    "training.num_steps=128",
    "env.episode_length=128",
    "data.start=2025-06-01",
    "training.eval_every=1",
    "training.progress=false",
    "wandb.enabled=false",
]
SWEEP: dict[str, Any] = {
    "name": "shared",
    "method": "random",
    "metric": {"name": "validation/sharpe", "goal": "maximize"},
    "parameters": {
        "training.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 3e-3},
        "env.reward_scaling": {"min": 0.5, "max": 3.0},
    },
}

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _worker(config: Path, storage: str, out: Path, *extra: str, overrides: list[str] = TINY) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "training.sweep", "--config", str(config), "--storage", storage]
    args += ["--name", "shared", "--heartbeat-s", "1", "--output-dir", str(out), *extra, *overrides]
    return subprocess.Popen(
        args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _finish(process: subprocess.Popen[str], timeout_s: float = 600) -> tuple[str, str]:
    out, err = process.communicate(timeout=timeout_s)
    assert process.returncode == 0, err[-3000:]
    return out, err


def _events(stderr: str, name: str) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [row for row in rows if row.get("event") == name]


@pytest.fixture
def storage(postgres_server: PostgresServer) -> Any:
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name, driver="postgresql")  # the URL a user writes
    finally:
        postgres_server.drop_database(name)


def _study(storage: str) -> optuna.Study:
    return optuna.load_study(study_name="shared", storage=storage.replace("postgresql://", "postgresql+psycopg://"))


def _has_heartbeat(storage: str, trial_id: int) -> bool:
    import sqlalchemy as sa

    engine = sa.create_engine(storage.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT count(*) FROM trial_heartbeats WHERE trial_id = :id")
            return bool(conn.execute(query, {"id": trial_id}).scalar())
    finally:
        engine.dispose()


def test_two_workers_split_the_trials_of_one_postgresql_study(tmp_path: Path, storage: str) -> None:
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(SWEEP))
    dry = subprocess.run(
        [sys.executable, "-m", "training.sweep", "--config", str(config), "--storage", storage, "--name", "shared"]
        + ["--dry-run", "--count", "4", "--output-dir", str(tmp_path / "dry"), *TINY],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dry.returncode == 0, dry.stderr
    listed = {
        int(line.split()[0]): sorted(w for w in line.split()[1:] if w.startswith(("training.lr=", "env.reward")))
        for line in dry.stdout.splitlines()
        if line.startswith("    ") and line.split()[0].isdigit()
    }
    assert sorted(listed) == [0, 1, 2, 3]
    assert "expected duration: ~" in dry.stdout

    a = _worker(config, storage, tmp_path / "machine-a", "--count", "2")
    b = _worker(config, storage, tmp_path / "machine-b", "--count", "2")
    _finish(a)
    _finish(b)

    trials = _study(storage).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == 4, "no parameter set may run twice"
    machines = [Path(t.user_attrs["run_dir"]).parent.name for t in trials]
    assert sorted(machines) == ["machine-a", "machine-a", "machine-b", "machine-b"]
    # Trial N ran exactly what the dry run listed for N, whichever worker took it.
    for t in trials:
        ran = sorted(f"{k}={v!r}" for k, v in t.params.items())
        assert ran == listed[t.number], t.number


def test_a_killed_workers_trial_is_marked_failed_and_the_study_goes_on(tmp_path: Path, storage: str) -> None:
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(SWEEP))
    long_trial = [o for o in TINY if not o.startswith("training.total_timesteps")] + [
        "training.total_timesteps=2000000"
    ]
    doomed = _worker(config, storage, tmp_path / "machine-a", "--count", "1", overrides=long_trial)
    try:
        deadline = time.monotonic() + 300
        while True:  # poll the shared study until the doomed worker's trial is running
            try:
                running = [t for t in _study(storage).trials if t.state == optuna.trial.TrialState.RUNNING]
            except KeyError:  # the study is not created yet
                running = []
            # Killed only once its heartbeat is on record: a trial that never beat is not stale to Optuna.
            if running and _has_heartbeat(storage, running[0]._trial_id):
                break
            assert doomed.poll() is None, doomed.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the first worker never started a trial"
            time.sleep(0.2)  # polling interval, not synchronisation
        os.killpg(doomed.pid, signal.SIGKILL)  # as if its machine died: no cleanup, no final state written
        doomed.wait(timeout=30)
    finally:
        if doomed.poll() is None:
            os.killpg(doomed.pid, signal.SIGKILL)
            doomed.wait(timeout=30)
    assert [t.state for t in _study(storage).trials] == [optuna.trial.TrialState.RUNNING]

    _, err = _finish(_worker(config, storage, tmp_path / "machine-b", "--count", "2"))
    trials = _study(storage).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL
    assert [t.state for t in trials[1:]] == [optuna.trial.TrialState.COMPLETE] * 2
    (abandoned,) = _events(err, "sweep_trial_abandoned")
    assert abandoned["trial"] == 0 and "worker died" in abandoned["reason"]
    summary = json.loads((tmp_path / "machine-b" / "sweeps" / "shared" / "sweep_summary.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["fail", "complete", "complete"]
