"""Read offline W&B runs back with wandb's own reader (`wandb leet inspect --json`, wandb >= 0.31).

wandb 0.31 has no Python reader for a `.wandb` transaction log (reference/wandb-facts.md); its CLI's
``leet inspect --json`` prints every record as one JSON line (run, config, history, summary, exit, ...), and
``--summary --json`` the run's final state. Tests use these to check what a run really logged.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class OfflineRun:
    """What one offline run logged: its run record, config, history rows, summary and exit code."""

    path: Path
    """The run's directory (offline-run-...)."""
    run: dict[str, Any]
    """The `run` record: project, entity, run_group, job_type, display_name, ..."""
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None

    def values(self, key: str) -> list[Any]:
        """Every logged value of `key`, in order."""
        return [row[key] for row in self.history if key in row]

    def logged_keys(self) -> set[str]:
        """Every key logged in the history."""
        return {key for row in self.history for key in row}


def _wandb_cli() -> list[str]:
    exe = Path(sys.executable).with_name("wandb")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("wandb")
    return [found] if found else [sys.executable, "-m", "wandb"]


def _nested(update: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (v.get("value", v) if isinstance(v, dict) and set(v) <= {"value", "desc"} else v) for k, v in update.items()
    }


def read_offline_run(run_dir: Path) -> OfflineRun:
    """Parse the `.wandb` log of one offline run directory with `wandb leet inspect --json`."""
    done = subprocess.run(
        [*_wandb_cli(), "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"wandb leet inspect {run_dir} failed ({done.returncode}): {done.stderr[-2000:]}")
    run = OfflineRun(path=run_dir, run={}, config={})
    for line in done.stdout.splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        kind = record.get("type")
        if kind == "run":
            run.run = record["run"]
            run.config.update(_nested(record["run"].get("config", {}).get("update", {})))
        elif kind == "config":
            run.config.update(_nested(record["config"].get("update", {})))
        elif kind == "history":
            run.history.append(record["history"]["item"])
        elif kind == "summary":
            run.summary.update(record["summary"].get("update", {}))
        elif kind == "exit":
            run.exit_code = int(record["exit"].get("exit_code", 0))
    return run


def offline_runs(root: Path) -> list[OfflineRun]:
    """Every offline run under `root` (any depth), oldest first."""
    dirs = sorted({p.parent for p in root.rglob("offline-run-*/run-*.wandb")}, key=lambda p: p.name)
    return [read_offline_run(d) for d in dirs]
