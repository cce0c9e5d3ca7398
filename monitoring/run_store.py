"""Every run's own directory: what training and backtests write, and what reports and the dashboard read.

W&B offline runs cannot be read back reliably (shared/reference/wandb-facts.md), so each run also writes
plain files, whether W&B is on or off::

    outputs/<run_id>/
      config.json        resolved config (plus data hash, data span, code version)
      metrics.parquet    step-level history: one row per logged step, a column per metric key
      trades-<split>.parquet  closed trades of an evaluation or backtest
      summary.json       final figures (evaluation table, best checkpoint, W&B run id/url)
      models/            checkpoints and the exported model

Writes are atomic (temporary file + rename) so a reader never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    import pandas as pd

# pandas is imported where frames are written or read: the paper and live daemon use this module
# (json_safe) without pandas, which costs ~90 MB of resident memory (issue 6).

log = structlog.get_logger()

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.parquet"
SUMMARY_FILE = "summary.json"

FLAT_PPO_KEYS: dict[str, str] = {
    "total_timesteps": "total_timesteps",
    "lr": "learning_rate",
    "num_envs": "num_envs",
    "num_steps": "num_steps",
    "num_minibatches": "num_minibatches",
    "update_epochs": "update_epochs",
    "gamma": "gamma",
    "gae_lambda": "gae_lambda",
    "clip_coef": "clip_coef",
    "clip_vloss": "clip_vloss",
    "ent_coef": "ent_coef",
    "vf_coef": "vf_coef",
    "max_grad_norm": "max_grad_norm",
    "target_kl": "target_kl",
    "anneal_lr": "anneal_lr",
    "norm_adv": "norm_adv",
    "torch_threads": "torch_threads",
    "device": "device",
}
"""The PPO settings that configs before issue 10 held flat under `training` (`training.lr`), each with its field
of `training.ppo` (training.ppo_config.PPOConfig) now. Older runs' config.json files have that shape; command lines and
sweep specs still accept the flat spellings (training.train.canonical_key)."""


def current_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Return a saved run config in today's shape: an older run's flat PPO settings moved under `training.ppo`."""
    training = config.get("training")
    if not isinstance(training, Mapping) or not any(key in FLAT_PPO_KEYS for key in training):
        return dict(config)
    nested = training.get("ppo")
    ppo = dict(nested) if isinstance(nested, Mapping) else {}
    rest: dict[str, Any] = {}
    for key, value in training.items():
        if key in FLAT_PPO_KEYS:
            ppo.setdefault(FLAT_PPO_KEYS[key], value)
        elif key != "ppo":
            rest[key] = value
    return {**config, "training": {**rest, "ppo": ppo}}


def json_safe(value: Any) -> Any:
    """Return `value` with NaN/inf as None, numpy scalars as Python numbers, paths and times as strings."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if hasattr(value, "tolist") and callable(value.tolist):
        return json_safe(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str | int | bool) or value is None:
        return value
    return str(value)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON atomically, NaN/inf as null."""
    _atomic_write_bytes(path, json.dumps(json_safe(payload), indent=2, sort_keys=True).encode())


def _atomic_write_parquet(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".parquet")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def new_run_id(prefix: str = "run") -> str:
    """Return a sortable, unique-enough run id: `<prefix>-YYYYmmdd-HHMMSS-<6 hex>`."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{prefix}-{stamp}-{os.urandom(3).hex()}"


class RunWriter:
    """Write one run's directory; metrics are buffered in memory and written on `flush`/`close`."""

    def __init__(self, root: Path | str, run_id: str | None = None, *, config: Mapping[str, Any] | None = None):
        self.run_id = run_id or new_run_id()
        self.dir = Path(root) / self.run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self._rows: list[dict[str, Any]] = []
        self._flushed_rows = 0
        if config is not None:
            self.write_config(config)

    def write_config(self, config: Mapping[str, Any]) -> None:
        """Store the resolved config of the run."""
        write_json(self.dir / CONFIG_FILE, config)

    def log_metrics(self, step: int, metrics: Mapping[str, float | int | None]) -> None:
        """Append one row of scalar metrics at `step`."""
        row: dict[str, Any] = {"step": int(step)}
        for key, value in metrics.items():
            row[key] = None if value is None else float(value)
        self._rows.append(row)

    def write_trades(self, trades: Sequence[Mapping[str, Any]], split: str = "test") -> Path:
        """Store closed trades of an evaluation or backtest split."""
        path = self.dir / f"trades-{split}.parquet"
        import pandas as pd

        _atomic_write_parquet(path, pd.DataFrame([dict(t) for t in trades]))
        return path

    def write_frame(self, name: str, frame: pd.DataFrame) -> Path:
        """Store any table (e.g. an equity curve) as `<name>.parquet`."""
        path = self.dir / f"{name}.parquet"
        _atomic_write_parquet(path, frame.reset_index() if frame.index.name else frame)
        return path

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Store (replace) the run's summary."""
        write_json(self.dir / SUMMARY_FILE, summary)

    def flush(self) -> None:
        """Write the metrics history so far."""
        if len(self._rows) == self._flushed_rows:
            return
        import pandas as pd

        _atomic_write_parquet(self.dir / METRICS_FILE, pd.DataFrame(self._rows))
        self._flushed_rows = len(self._rows)

    def close(self) -> None:
        """Flush everything."""
        self.flush()


@dataclass(frozen=True)
class RunRecord:
    """One run read back from its directory."""

    run_id: str
    path: Path
    config: dict[str, Any]
    """The resolved config, in today's shape (`current_config`)."""
    summary: dict[str, Any]

    @property
    def created(self) -> datetime:
        """When the directory was made (its modification time)."""
        return datetime.fromtimestamp(self.path.stat().st_mtime, tz=UTC)

    def history(self, keys: Iterable[str] | None = None) -> pd.DataFrame:
        """Every logged row (all of them, not a sample), optionally only some keys."""
        import pandas as pd

        path = self.path / METRICS_FILE
        if not path.exists():
            return pd.DataFrame({"step": pd.Series(dtype="int64")})
        frame = pd.read_parquet(path)
        if keys is not None:
            wanted = ["step", *[k for k in keys if k in frame.columns and k != "step"]]
            frame = frame[wanted]
        return frame

    def trades(self, split: str = "test") -> pd.DataFrame:
        """Closed trades of a split (empty frame if the run has none)."""
        import pandas as pd

        path = self.path / f"trades-{split}.parquet"
        return pd.read_parquet(path) if path.exists() else pd.DataFrame()


class RunStore:
    """Read runs from an `outputs/` tree."""

    def __init__(self, root: Path | str = "outputs"):
        self.root = Path(root)

    def runs(self) -> list[RunRecord]:
        """All runs with a config or summary, newest first."""
        if not self.root.is_dir():
            return []
        records = []
        for path in self.root.iterdir():
            if path.is_dir() and ((path / CONFIG_FILE).exists() or (path / SUMMARY_FILE).exists()):
                records.append(self._read(path))
        return sorted(records, key=lambda r: r.path.stat().st_mtime, reverse=True)

    def get(self, run_id: str) -> RunRecord:
        """One run by id; KeyError naming the root if absent."""
        path = self.root / run_id
        if not path.is_dir():
            raise KeyError(f"no run {run_id!r} under {self.root}")
        return self._read(path)

    @staticmethod
    def _read(path: Path) -> RunRecord:
        def load(name: str) -> dict[str, Any]:
            file = path / name
            if not file.exists():
                return {}
            try:
                data = json.loads(file.read_text())
            except json.JSONDecodeError as e:
                log.warning("run_file_unreadable", path=str(file), error=str(e))
                return {}
            return data if isinstance(data, dict) else {}

        config = current_config(load(CONFIG_FILE))
        return RunRecord(run_id=path.name, path=path, config=config, summary=load(SUMMARY_FILE))
