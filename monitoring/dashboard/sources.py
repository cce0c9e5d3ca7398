"""Where the dashboard's runs come from: the local run tree at once, W&B once a background thread connects.

The W&B backend is opened after a quick reachability probe of the server, so that serving never waits on it;
unreadable run files of the local tree (a corrupt ``summary.json``) are listed by path instead of failing a page.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import structlog

from monitoring.run_store import CONFIG_FILE, SUMMARY_FILE
from monitoring.runs import (
    Backend,
    LocalRuns,
    RunSource,
    RunSourceError,
    choose_backend,
    open_runs,
)
from monitoring.wandb_server import base_url

log = structlog.get_logger()


@dataclass(frozen=True)
class Problem:
    """A run file the dashboard could not read: where it is and what is wrong."""

    path: str
    message: str


def scan_run_files(root: Path) -> list[Problem]:
    """Return the config/summary JSON files under `root` that do not parse to a JSON object."""
    problems: list[Problem] = []
    if not root.is_dir():
        return problems
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for name in (CONFIG_FILE, SUMMARY_FILE):
            file = run_dir / name
            if not file.exists():
                continue
            try:
                data = json.loads(file.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                problems.append(Problem(str(file), f"{name} of run {run_dir.name} is not valid JSON: {e}"))
                continue
            if not isinstance(data, dict):
                problems.append(Problem(str(file), f"{name} of run {run_dir.name} is not a JSON object"))
    return problems


def probe_wandb_server(env: Mapping[str, str], timeout_s: float = 3.0) -> str | None:
    """Return None when the W&B server accepts a TCP connection within `timeout_s`, else why it did not."""
    url = base_url(env)
    parsed = urlparse(url)
    host = parsed.hostname or url
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as e:
        return f"W&B server {url} is not reachable ({e})"


class Sources:
    """The run source the pages read: local at once, W&B once a background thread has connected to it."""

    def __init__(
        self,
        project: str = "ai-trading",
        entity: str | None = None,
        runs_dir: Path | str = "outputs",
        backend: Backend = "auto",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.project, self.entity, self.backend = project, entity, backend
        self.runs_dir = Path(runs_dir)
        self.env = dict(os.environ if env is None else env)
        self.local = LocalRuns(self.runs_dir)
        self._lock = threading.Lock()
        self._source: RunSource = self.local
        self.state = "connecting"
        self.message = ""
        self.ready = threading.Event()
        """Set once the source is settled (local from the start, or W&B connected / given up)."""

    @property
    def source(self) -> RunSource:
        """The run source to read now."""
        with self._lock:
            return self._source

    def start(self) -> None:
        """Pick the backend; connect to W&B in a daemon thread so that serving never waits on it."""
        choice = choose_backend(self.backend, self.env)
        if choice.kind == "local":
            self._settle(self.local, "offline", f"W&B offline: {choice.reason}.")
            return
        self.message = f"Connecting to W&B ({choice.reason}); showing the local runs meanwhile."
        log.info("wandb_connecting", reason=choice.reason, runs_dir=str(self.runs_dir))
        threading.Thread(target=self._connect, name="dashboard:wandb-connect", daemon=True).start()

    def _connect(self) -> None:
        unreachable = probe_wandb_server(self.env)
        if unreachable is not None:
            self._settle(self.local, "offline", f"W&B offline: {unreachable}.")
            return
        try:
            source = open_runs(self.project, self.entity, self.runs_dir, self.backend, self.env)
        except RunSourceError as e:
            self._settle(self.local, "offline", f"W&B offline: {e}.")
            return
        if source.kind == "wandb":
            self._settle(source, "online", f"W&B online: {source.reason}.")
        else:
            self._settle(self.local, "offline", f"W&B offline: {source.reason}.")

    def _settle(self, source: RunSource, state: str, message: str) -> None:
        with self._lock:
            self._source, self.state = source, state
            self.message = message + ("" if state == "online" else f" Showing the local runs in {self.local.location}.")
        if state == "online":
            log.info("wandb_online", location=source.location)
        else:
            log.warning("wandb_offline", message=self.message, runs_dir=self.local.location)
        self.ready.set()

    def status(self) -> dict[str, Any]:
        """Return the state ("offline", "connecting", "online"), the sentence saying so, and the source."""
        source = self.source
        with self._lock:
            state, message = self.state, self.message
        return {"wandb": state, "message": message, "source": source.kind, "location": source.location}

    def problems(self) -> list[Problem]:
        """Return unreadable run files of the local tree (the W&B backend reports its errors per request)."""
        return scan_run_files(self.runs_dir) if self.source.kind == "local" else []
