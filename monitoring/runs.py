"""Read training/backtest runs through one interface, from the local run tree or from a W&B server.

Reports (`training.reports`) and the dashboard read runs here, never from W&B or the file tree directly:

- `LocalRuns(root)` reads the `outputs/<run_id>/` directories that every run writes
  (`monitoring.run_store`); it works offline and is what the tests exercise.
- `WandbRuns(project, entity)` reads the same things from a W&B server through `wandb.Api()`:
  `runs(path, filters, order)` to list, `run.scan_history(keys)` for every history row (never the sampled
  `history()`), `run.summary`, `run.config`, and the `<split>/trades` table file logged by
  `training.wandb_callback.trade_plots`. No server is reachable here, so this backend is kept thin and is
  untested; it maps W&B's flat `test/policy/sharpe` summary keys back to our nested summary layout.

`open_runs(project, entity, runs_dir, backend="auto")` picks W&B only when it is configured for online use
(an API key in `WANDB_API_KEY` or in the netrc for the W&B host, and `WANDB_MODE` not offline/disabled),
else the local tree; the chosen source says which it is, where it reads, and why (`RunSource.reason`).
This module imports neither torch nor `training` (the dashboard uses it), and imports `wandb` only inside
the W&B backend.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import pandas as pd
import structlog

from monitoring.run_store import RunStore, current_config
from monitoring.wandb_server import base_url, credentials_source, offline_reason

log = structlog.get_logger()

Backend = Literal["auto", "local", "wandb"]


class RunSourceError(RuntimeError):
    """The requested run source cannot be opened (e.g. no W&B key, or the W&B server is unreachable)."""


class RunNotFoundError(KeyError):
    """A run id that the source does not hold; the message lists the ids it does hold."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "run not found"


@dataclass(frozen=True)
class RunInfo:
    """One run as a report sees it, whichever backend it came from."""

    run_id: str
    """Our run id (the local directory name; the W&B run's display name for W&B runs)."""
    created: datetime | None
    """When the run was made (UTC), if known."""
    config: dict[str, Any] = field(default_factory=dict)
    """The resolved training config, in today's shape (`monitoring.run_store.current_config`)."""
    summary: dict[str, Any] = field(default_factory=dict)
    """Final figures: `test` → {policy, buy_and_hold, sma_crossover} → metrics, or `folds` for walk-forward."""
    url: str | None = None
    """Where to look at the run: a W&B URL or the local directory."""
    job_type: str | None = None
    """W&B job type ("train", "analysis", ...), when known."""

    def test_metrics(self) -> tuple[str | None, dict[str, Any]]:
        """Return (fold label or None, {strategy: metrics}) of the run's out-of-sample test split."""
        test = self.summary.get("test")
        if isinstance(test, Mapping) and test:
            return None, {str(k): dict(v) for k, v in test.items() if isinstance(v, Mapping)}
        folds = self.summary.get("folds")
        if isinstance(folds, Mapping) and folds:
            last = max(folds, key=lambda k: int(k) if str(k).isdigit() else -1)
            fold_test = folds[last].get("test", {}) if isinstance(folds[last], Mapping) else {}
            return f"fold{last}", {str(k): dict(v) for k, v in fold_test.items() if isinstance(v, Mapping)}
        return None, {}

    def default_split(self) -> str:
        """The split a trade report reads unless told otherwise: the (last fold's) test split."""
        fold, _ = self.test_metrics()
        return "test" if fold is None else f"{fold}-test"

    def split_metrics(self, split: str) -> dict[str, Any]:
        """Return {strategy: metrics} of `split`: the test split's, or a backtest's (`summary.evaluation.<split>`)."""
        if split == self.default_split():
            return self.test_metrics()[1]
        evaluation = self.summary.get("evaluation")
        figures = evaluation.get(split) if isinstance(evaluation, Mapping) else None
        if isinstance(figures, Mapping):
            return {str(k): dict(v) for k, v in figures.items() if isinstance(v, Mapping)}
        return {}


class RunSource(Protocol):
    """Where runs are read from; both backends implement this."""

    kind: str
    """"local" or "wandb"."""
    location: str
    """What it reads: a directory or `entity/project`."""
    reason: str
    """Why this backend was chosen (set by `open_runs`)."""

    def list_runs(self, limit: int | None = None) -> list[RunInfo]:
        """Return runs, newest first, at most `limit`."""
        ...

    def get_run(self, run_id: str) -> RunInfo:
        """Return one run; RunNotFoundError listing the known ids if absent."""
        ...

    def history(self, run_id: str, keys: Sequence[str] | None = None) -> pd.DataFrame:
        """Return every logged row (column `step` plus metric columns), optionally only `keys`."""
        ...

    def trades(self, run_id: str, split: str = "test") -> pd.DataFrame:
        """Return the closed trades of a split (empty frame if none)."""
        ...

    def trade_splits(self, run_id: str) -> list[str]:
        """Return the splits of a run that stored trades ("test", "backtest", "fold2-test", ...), sorted."""
        ...

    def equity(self, run_id: str, split: str = "test") -> pd.Series:
        """Return the equity curve of a split indexed by UTC time (empty series if none)."""
        ...


def _not_found(run_id: str, known: Sequence[str], location: str) -> RunNotFoundError:
    shown = ", ".join(known[:20]) + (f", ... ({len(known)} in all)" if len(known) > 20 else "")
    return RunNotFoundError(f"no run {run_id!r} in {location}; runs there: {shown or 'none'}")


class LocalRuns:
    """Runs from an `outputs/` tree (`monitoring.run_store`)."""

    kind = "local"

    def __init__(self, root: Path | str = "outputs", reason: str = "local run directory requested") -> None:
        self.store = RunStore(root)
        self.root = Path(root)
        self.location = str(self.root.resolve())
        self.reason = reason

    def list_runs(self, limit: int | None = None) -> list[RunInfo]:
        """Return runs, newest first (directory modification time), at most `limit`."""
        records = self.store.runs()
        if limit is not None:
            records = records[: max(0, limit)]
        return [RunInfo(r.run_id, r.created, r.config, r.summary, url=str(r.path), job_type=None) for r in records]

    def get_run(self, run_id: str) -> RunInfo:
        """Return one run by its directory name."""
        try:
            record = self.store.get(run_id)
        except KeyError:
            raise _not_found(run_id, [r.run_id for r in self.store.runs()], self.location) from None
        return RunInfo(record.run_id, record.created, record.config, record.summary, url=str(record.path))

    def history(self, run_id: str, keys: Sequence[str] | None = None) -> pd.DataFrame:
        """Return every metrics row of the run (several rows may share a step; missing values are NaN)."""
        self.get_run(run_id)
        return self.store.get(run_id).history(keys)

    def trades(self, run_id: str, split: str = "test") -> pd.DataFrame:
        """Return `trades-<split>.parquet` of the run (empty frame if absent)."""
        self.get_run(run_id)
        return self.store.get(run_id).trades(split)

    def trade_splits(self, run_id: str) -> list[str]:
        """Return the splits with a `trades-<split>.parquet` file (a backtest writes `backtest`)."""
        self.get_run(run_id)
        return sorted(
            p.name.removeprefix("trades-").removesuffix(".parquet")
            for p in (self.root / run_id).glob("trades-*.parquet")
        )

    def equity(self, run_id: str, split: str = "test") -> pd.Series:
        """Return `equity-<split>.parquet` as a series indexed by time (empty if absent)."""
        self.get_run(run_id)
        path = self.root / run_id / f"equity-{split}.parquet"
        if not path.exists():
            return pd.Series(dtype="float64", name="equity")
        frame = pd.read_parquet(path)
        if "date" in frame.columns:
            frame = frame.set_index(pd.to_datetime(frame["date"], utc=True)).drop(columns="date")
        column = "equity" if "equity" in frame.columns else frame.columns[0]
        return frame[column].astype("float64").rename("equity")


class WandbRuns:
    """Runs of a W&B project read through `wandb.Api()` (needs a server; untested here, see module doc)."""

    kind = "wandb"

    def __init__(self, project: str, entity: str | None = None, reason: str = "W&B backend requested") -> None:
        import wandb

        # Api() checks the key against the server here, so an unreachable server fails (after the timeout) now.
        self.api = wandb.Api(timeout=15)
        self.project = project
        self.entity = entity or self.api.default_entity
        self.path = f"{self.entity}/{project}" if self.entity else project
        self.location = f"W&B project {self.path}"
        self.reason = reason

    def _runs(self, limit: int | None) -> list[Any]:
        runs = self.api.runs(self.path, filters={"jobType": "train"}, order="-created_at")
        found: list[Any] = []
        for run in runs:
            found.append(run)
            if limit is not None and len(found) >= limit:
                break
        return found

    def _info(self, run: Any) -> RunInfo:
        created = pd.Timestamp(run.created_at, tz="UTC").to_pydatetime() if run.created_at else None
        summary = unflatten_summary(dict(run.summary))
        config = current_config(dict(run.config))
        return RunInfo(run.name or run.id, created, config, summary, url=run.url, job_type=run.job_type)

    def _run(self, run_id: str) -> Any:
        import wandb

        try:
            return self.api.run(f"{self.path}/{run_id}")
        except (wandb.errors.CommError, ValueError):
            pass
        matches = list(self.api.runs(self.path, filters={"display_name": run_id}))
        if not matches:
            raise _not_found(run_id, [r.name for r in self._runs(50)], self.location)
        return matches[0]

    def list_runs(self, limit: int | None = None) -> list[RunInfo]:
        """Return the project's training runs, newest first."""
        return [self._info(r) for r in self._runs(limit)]

    def get_run(self, run_id: str) -> RunInfo:
        """Return one run by W&B id or display name (our run id)."""
        return self._info(self._run(run_id))

    def history(self, run_id: str, keys: Sequence[str] | None = None) -> pd.DataFrame:
        """Return every history row (`scan_history`, not the sampled `history`)."""
        run = self._run(run_id)
        if keys:
            # scan_history(keys=...) yields only rows holding every key asked for: ask one key at a time.
            parts = [pd.DataFrame(list(run.scan_history(keys=[key, "_step"]))) for key in keys]
            frame = (
                pd.concat([p for p in parts if len(p)], ignore_index=True)
                if any(len(p) for p in parts)
                else (pd.DataFrame())
            )
        else:
            frame = pd.DataFrame(list(run.scan_history()))
        if "_step" in frame.columns:
            frame = frame.rename(columns={"_step": "step"})
        keep = [c for c in frame.columns if not str(c).startswith("_")]
        return frame[keep] if len(frame.columns) else pd.DataFrame({"step": pd.Series(dtype="int64")})

    def _table(self, run: Any, key: str) -> pd.DataFrame:
        ref = run.summary.get(key)
        if not isinstance(ref, Mapping) or "path" not in ref:
            return pd.DataFrame()
        with tempfile.TemporaryDirectory() as scratch:
            run.file(ref["path"]).download(root=scratch, replace=True)
            data = json.loads((Path(scratch) / ref["path"]).read_text())
        return pd.DataFrame(data.get("data", []), columns=data.get("columns"))

    def trade_splits(self, run_id: str) -> list[str]:
        """Return the run's default split (W&B runs are listed by split only through their logged tables)."""
        return [self.get_run(run_id).default_split()]

    def trades(self, run_id: str, split: str = "test") -> pd.DataFrame:
        """Return the `<split>/trades` table the training run logged."""
        frame = self._table(self._run(run_id), f"{split}/trades")
        for column in ("entry_time", "exit_time"):
            if column in frame.columns:
                frame[column] = pd.to_datetime(frame[column], utc=True)
        return frame

    def equity(self, run_id: str, split: str = "test") -> pd.Series:
        """Return an empty series: W&B runs log the equity curve by bar number only (reports use trades)."""
        return pd.Series(dtype="float64", name="equity")


def unflatten_summary(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Turn W&B's flat `a/b/c` summary keys into nested dicts (`{"a": {"b": {"c": v}}}`)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if str(key).startswith("_"):
            continue
        parts = str(key).split("/")
        node = nested
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        if parts[-1] not in node or not isinstance(node[parts[-1]], dict):
            node[parts[-1]] = value
    return nested


@dataclass(frozen=True)
class BackendChoice:
    """Which backend `open_runs` will use, and why."""

    kind: Literal["local", "wandb"]
    """The backend."""
    reason: str
    """A sentence saying why."""


def choose_backend(backend: Backend = "auto", env: Mapping[str, str] | None = None) -> BackendChoice:
    """Decide between the W&B API and the local run tree (pure: reads only `env` and the netrc file)."""
    env = os.environ if env is None else env
    if backend == "local":
        return BackendChoice("local", "local run directory requested (--backend local)")
    if backend == "wandb":
        return BackendChoice("wandb", "W&B backend requested (--backend wandb)")
    if backend != "auto":
        raise ValueError(f"backend must be 'auto', 'local' or 'wandb', was {backend!r}")
    off = offline_reason(env)
    if off is not None:
        return BackendChoice("local", f"{off}: reading the local run directory")
    host = base_url(env)
    source = credentials_source(env)
    if source == "WANDB_API_KEY":
        return BackendChoice("wandb", f"WANDB_API_KEY is set: reading runs from the W&B server {host}")
    if source is not None:
        return BackendChoice("wandb", f"a W&B API key for {host} is in the netrc file: reading runs from the server")
    return BackendChoice("local", "no W&B API key configured: reading the local run directory")


def open_runs(
    project: str = "ai-trading",
    entity: str | None = None,
    runs_dir: Path | str = "outputs",
    backend: Backend = "auto",
    env: Mapping[str, str] | None = None,
) -> RunSource:
    """Open the run source `choose_backend` picks; in auto mode a W&B client that cannot start falls back to local."""
    choice = choose_backend(backend, env)
    if choice.kind == "wandb":
        try:
            return WandbRuns(project, entity, reason=choice.reason)
        except Exception as e:  # wandb raises its own error types for a bad key / unreachable host
            if backend == "wandb":
                raise RunSourceError(f"cannot read runs from W&B project {project!r}: {e}") from e
            reason = f"{choice.reason}, but the W&B client failed ({e}); reading the local run directory"
            log.warning("wandb_runs_unavailable", error=str(e), fallback=str(runs_dir))
            return LocalRuns(runs_dir, reason=reason)
    return LocalRuns(runs_dir, reason=choice.reason)


def finite(value: Any) -> float | None:
    """Return `value` as a float if it is a finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None
