"""A real Prometheus server for tests: started on a free loopback port, scraping one static target every second.

Use the module-scoped fixture by importing it into a test module::

    from tests.support.prometheus import prometheus  # noqa: F401

    def test_x(prometheus: PrometheusServer) -> None:
        metrics.start_http_server(prometheus.target_port)   # the exporter Prometheus scrapes
        prometheus.wait_for('aitrading_equity{bot_id="x"}', lambda r: float(r[0]["value"][1]) == 1.0)

Prometheus is started once per test session and scrapes ``127.0.0.1:<target_port>``; each test binds its own
exporter to that port (give every test its own ``bot_id`` so series don't mix, and close the exporter at the end
of the test). Prometheus's service discovery hands targets to the scraper only every 5 s (not configurable in
2.42), so fixture setup takes ~5 s once per session, polling until the target is listed; after that an exporter
is scraped within a second. Everything waits by polling the HTTP API, never by sleeping.

The binary is ``/usr/bin/prometheus`` (Debian package ``prometheus``) or ``$PROMETHEUS_BIN``. Where it is
missing the fixture skips, except under CI (``CI=true``), where it fails so that nothing skips silently.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import free_port, service_binary

DEFAULT_BINARY = "/usr/bin/prometheus"
POLL_INTERVAL_S = 0.1
READY_TIMEOUT_S = 20.0
FIRST_SAMPLE_TIMEOUT_S = 30.0

Result = list[dict[str, Any]]
"""The ``data.result`` list of an instant query: ``[{"metric": {...}, "value": [ts, "1.5"]}, ...]``."""


class PrometheusQueryError(RuntimeError):
    """Prometheus answered a query with an error (bad PromQL, execution error)."""


def prometheus_binary() -> str | None:
    """Return the Prometheus binary to run, or None when it is not installed."""
    return service_binary("PROMETHEUS_BIN", DEFAULT_BINARY, "prometheus")


def sample_value(result: Result) -> float:
    """Return the value of the only sample of an instant-query result; fail if there is not exactly one."""
    if len(result) != 1:
        raise AssertionError(f"expected exactly one series, got {len(result)}: {result}")
    return float(result[0]["value"][1])


@dataclass
class PrometheusServer:
    """A running Prometheus: its URL, the port it scrapes, and helpers to query it."""

    url: str
    """Base URL, e.g. http://127.0.0.1:40123."""
    target_port: int
    """Port on 127.0.0.1 that Prometheus scrapes /metrics from (bind your exporter here)."""
    process: subprocess.Popen[bytes]
    """The Prometheus process (stopped by its PID in teardown)."""
    log_path: Path
    """File holding Prometheus's stderr."""
    scrape_interval_s: float = 1.0
    """Scrape and evaluation interval."""

    def _get(self, path: str, params: dict[str, str] | None = None, timeout_s: float = 5.0) -> dict[str, Any]:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                body: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace")
            try:
                detail = json.loads(text).get("error", text)
            except json.JSONDecodeError:
                detail = text
            raise PrometheusQueryError(f"GET {path} {params or ''} failed with HTTP {e.code}: {detail}") from e
        if body.get("status") != "success":
            raise PrometheusQueryError(f"GET {path} {params or ''} failed: {body.get('error', body)}")
        return body

    def query(self, promql: str) -> Result:
        """Run an instant query now and return its result vector; raise PrometheusQueryError if it fails."""
        data = self._get("/api/v1/query", {"query": promql})["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: Result = data["result"]
        return result

    def series(self, match: str) -> list[dict[str, str]]:
        """Return the label sets of the series matching a selector (``/api/v1/series``)."""
        found: list[dict[str, str]] = self._get("/api/v1/series", {"match[]": match})["data"]
        return found

    def wait_for(
        self,
        promql: str,
        predicate: Callable[[Result], bool] = bool,
        timeout_s: float = FIRST_SAMPLE_TIMEOUT_S,
    ) -> Result:
        """Poll `promql` until `predicate(result)` holds and return that result; fail after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        result: Result = []
        while True:
            result = self.query(promql)
            if predicate(result):
                return result
            self._check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"Prometheus query {promql!r} did not satisfy the condition within {timeout_s} s; last result: "
                    f"{result}; scrape targets: {self.target_health()}"
                )
            time.sleep(POLL_INTERVAL_S)  # polling interval, not synchronisation

    def target_health(self) -> list[dict[str, Any]]:
        """Return the active scrape targets' URL, health and last error."""
        targets = self._get("/api/v1/targets")["data"]["activeTargets"]
        return [{"url": t["scrapeUrl"], "health": t["health"], "error": t["lastError"]} for t in targets]

    def _check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise RuntimeError(f"Prometheus exited with code {code}: {_tail(self.log_path)}")


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def start_prometheus(
    workdir: Path, target_port: int | None = None, *, scrape_interval_s: float = 1.0
) -> PrometheusServer:
    """Start Prometheus in `workdir` scraping 127.0.0.1:`target_port` and return once /-/ready answers."""
    binary = prometheus_binary()
    if binary is None:
        raise FileNotFoundError(f"prometheus binary not found at {DEFAULT_BINARY} or on PATH")
    target_port = free_port() if target_port is None else target_port
    web_port = free_port()
    interval = f"{int(scrape_interval_s * 1000)}ms"
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "scrape_configs": [
            {"job_name": "ai-trading-bot", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]},
        ],
    }
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{web_port}",
                "--log.level=warn",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = PrometheusServer(
        url=f"http://127.0.0.1:{web_port}",
        target_port=target_port,
        process=process,
        log_path=log_path,
        scrape_interval_s=scrape_interval_s,
    )
    try:
        _wait_ready(server)
    except BaseException:
        stop_prometheus(server)
        raise
    return server


def wait_for_target_discovery(server: PrometheusServer, timeout_s: float = FIRST_SAMPLE_TIMEOUT_S) -> None:
    """Poll until Prometheus lists its scrape target (service discovery hands targets over only every 5 s)."""
    deadline = time.monotonic() + timeout_s
    while not server.target_health():
        server._check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"Prometheus discovered no scrape target within {timeout_s} s: {_tail(server.log_path)}")
        time.sleep(POLL_INTERVAL_S)  # polling interval, not synchronisation


def _wait_ready(server: PrometheusServer) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        server._check_alive()
        try:
            with urllib.request.urlopen(server.url + "/-/ready", timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"Prometheus not ready after {READY_TIMEOUT_S} s: {_tail(server.log_path)}")
        time.sleep(POLL_INTERVAL_S)  # polling interval, not synchronisation


def stop_prometheus(server: PrometheusServer) -> None:
    """Stop the Prometheus process by its PID (SIGTERM, then SIGKILL after 10 s)."""
    process = server.process
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


_SHARED: PrometheusServer | None = None


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """Yield a running Prometheus that scrapes 127.0.0.1:`target_port` every second; skip if not installed.

    One server serves the whole session, even when several test modules import this fixture; setup returns once
    Prometheus has discovered its target, so an exporter bound to `target_port` is scraped within a second.
    """
    global _SHARED
    if prometheus_binary() is None:
        reason = f"prometheus binary not found ({DEFAULT_BINARY}); install the Debian package 'prometheus'"
        if _in_ci():
            pytest.fail(f"{reason} (CI=true: integration services must not be skipped)")
        pytest.skip(reason)
    if _SHARED is None or _SHARED.process.poll() is not None:
        server = start_prometheus(tmp_path_factory.mktemp("prometheus"))
        try:
            wait_for_target_discovery(server)
        except BaseException:
            stop_prometheus(server)
            raise
        _SHARED = server
    try:
        yield _SHARED
    finally:
        stop_prometheus(_SHARED)  # idempotent: the first module's teardown at session end stops it
