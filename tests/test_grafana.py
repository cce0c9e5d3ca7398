"""Tests of monitoring/grafana.py: the dashboard as code, its PromQL on a real Prometheus, export and push.

Grafana itself is not installable here (DESIGN.md, "Real components"), so: every panel's PromQL runs against the
real Prometheus fixture, scraping a real exporter fed by a replayed paper bot; and the push goes through the real
`grafana-client` to a small local HTTP server that answers like Grafana's HTTP API and records the requests.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

from monitoring import grafana
from monitoring.metrics import BotMetrics
from tests.support.prometheus import PrometheusServer, Result
from tests.test_metrics_exporter import SYMBOL, replay_paper_bot

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "glsa_test-token-7d1f0c2b9a"

REQUIRED_PANELS = {
    "Equity",
    "PnL",
    "Positions",
    "Orders by status",
    "Fills rate",
    "Slippage (bps)",
    "Decision latency",
    "Inference latency",
    "Data staleness",
    "Risk halts",
    "Reconciliation discrepancies",
    "Sink queue depth",
    "Sink drops",
    "Heartbeat age",
}
"""Panels the DESIGN.md metrics contract asks for."""


def substitute(expr: str, bot_id: str = ".*") -> str:
    """Replace Grafana's template variables with what Grafana would send for 'All' and a 1-minute interval."""
    return (
        expr.replace("$bot_id", bot_id)
        .replace("$mode", ".*")
        .replace("$symbol", ".*")
        .replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
    )


# ----------------------------------------------------------------------------- dashboard model


def test_checked_in_dashboard_equals_the_generated_one() -> None:
    path = ROOT / grafana.DEFAULT_OUTPUT
    assert path.read_text(encoding="utf-8") == grafana.render_json(), (
        f"{path} is stale: run python -m monitoring.grafana --write {grafana.DEFAULT_OUTPUT}"
    )


def test_dashboard_has_the_contract_panels_and_a_valid_layout() -> None:
    dashboard = grafana.build_dashboard()
    panels = dashboard["panels"]
    titles = {p["title"] for p in panels}
    assert titles >= REQUIRED_PANELS
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        xs, ys = range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])
        area = {(x, y) for x in xs for y in ys}
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        ref_ids = [t["refId"] for t in panel.get("targets", ())]
        assert len(ref_ids) == len(set(ref_ids))
    assert dashboard["uid"] == grafana.DASHBOARD_UID and dashboard["id"] is None
    latency = next(p for p in panels if p["title"] == "Decision latency")
    quantiles = [t["expr"].split(",")[0] for t in latency["targets"]]
    assert quantiles == ["histogram_quantile(0.5", "histogram_quantile(0.99"]


def test_dashboard_queries_only_the_exported_metrics() -> None:
    families = {m.name: m.type for m in BotMetrics(bot_id="names", mode="paper").registry.collect()}
    exported = set()
    for name, kind in families.items():
        if kind == "counter":
            exported.add(name + "_total")
        elif kind == "histogram":
            exported |= {name + "_bucket", name + "_sum", name + "_count"}
        else:
            exported.add(name)
    text = json.dumps(grafana.build_dashboard())
    referenced = set(re.findall(r"\b(aitrading_[a-z_]+)", text))
    assert referenced, "the dashboard queries nothing"
    assert referenced <= exported, f"queried but not exported: {sorted(referenced - exported)}"
    panel_exprs = " ".join(expr for _, expr in grafana.panel_queries(grafana.build_dashboard()))
    for expr in re.findall(r"[a-z_]+\(|\b[a-z_]+\{", panel_exprs):
        name = expr.rstrip("({")
        assert name.startswith("aitrading_") or name in {
            "sum",
            "max",
            "rate",
            "increase",
            "histogram_quantile",
            "time",
            "by",
        }, name


def test_provisioning_points_at_the_datasource_and_dashboard_the_code_uses() -> None:
    datasources = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    source = datasources["datasources"][0]
    assert (source["type"], source["uid"]) == ("prometheus", grafana.DATASOURCE_UID)
    variable = next(v for v in grafana.build_dashboard()["templating"]["list"] if v["name"] == "datasource")
    assert variable["current"]["value"] == grafana.DATASOURCE_UID
    providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/ai-trading.yml").read_text())
    provider = providers["providers"][0]
    assert provider["type"] == "file" and provider["folder"] == grafana.DEFAULT_FOLDER


def test_export_writes_the_same_json_to_a_file_and_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nested" / "dash.json"
    assert grafana.main(["export", "--out", str(out)]) == 0
    assert out.read_text() == grafana.render_json()
    assert grafana.main(["export"]) == 0
    assert json.loads(capsys.readouterr().out)["uid"] == grafana.DASHBOARD_UID
    written = tmp_path / "w.json"
    assert grafana.main(["--write", str(written)]) == 0
    assert written.read_text() == grafana.render_json()
    assert grafana.main([]) == 2


# ----------------------------------------------------------------------------- PromQL on a real Prometheus


def _has_data(result: Result) -> bool:
    return bool(result) and all(math.isfinite(float(r["value"][1])) for r in result)


@pytest.mark.integration
def test_every_panel_query_runs_on_prometheus_and_core_panels_have_data(
    prometheus: PrometheusServer,
) -> None:
    dashboard = grafana.build_dashboard()
    queries = grafana.panel_queries(dashboard)
    core = {p.title for row in grafana.ROWS for p in row.panels if p.core}
    with BotMetrics(bot_id="it-grafana", mode="paper") as metrics:
        replay_paper_bot(metrics, bars=150)
        metrics.sink_queue_depth("wandb", 3)
        metrics.sink_dropped("mqtt", 0)
        metrics.inference_latency.observe(0.0002)
        metrics.start_http_server(prometheus.target_port)
        prometheus.wait_for('aitrading_events_total{bot_id="it-grafana",type="heartbeat"}')

        # Every expression parses and evaluates (a PromQL error raises PrometheusQueryError).
        for _title, expr in queries:
            prometheus.query(substitute(expr))

        # New observations after the first scrape, so rate()-based panels (quantiles, fill rate) have a slope.
        replay_paper_bot(metrics, bars=150)
        metrics.inference_latency.observe(0.0004)
        metrics.sink_dropped("mqtt")
        metrics.set_feature_drift({"volatility": (1.9, 0.44), "hour_sin": (0.0, 0.01)})
        metrics.set_model_age(400.5)
        fed = core | {"Feature drift (PSI)", "Feature drift (KS)", "Model age"}
        for title, expr in queries:
            if title in fed:
                prometheus.wait_for(substitute(expr, "it-grafana"), _has_data, timeout_s=15)

        p99_expr = next(e for t, e in queries if t == "Inference latency" and e.startswith("histogram_quantile(0.99,"))
        p99 = prometheus.query(substitute(p99_expr, "it-grafana"))
        assert 0.00025 <= float(p99[0]["value"][1]) <= 0.0005  # the 0.0004 s observation's bucket
        psi_expr = next(e for t, e in queries if t == "Feature drift (PSI)")
        drift = {
            r["metric"]["feature"]: float(r["value"][1]) for r in prometheus.query(substitute(psi_expr, "it-grafana"))
        }
        assert drift == {"volatility": 1.9, "hour_sin": 0.0}
        positions = prometheus.query(substitute(next(e for t, e in queries if t == "Positions"), "it-grafana"))
        assert {r["metric"]["symbol"] for r in positions} == {SYMBOL}

        # Template variables: label_values(metric, label) must find the bot.
        for variable in dashboard["templating"]["list"]:
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable.get("definition", ""))
            if match:
                selector, label = match.groups()
                found = prometheus.query(f"count by ({label}) ({substitute(selector)})")
                assert found and all(label in r["metric"] for r in found), variable["name"]


# ----------------------------------------------------------------------------- push through grafana-client


@dataclass
class FakeGrafana:
    """Records requests and answers like Grafana's HTTP API for folders and dashboards/db."""

    folders: list[dict[str, Any]] = field(default_factory=list)
    dashboard_status: int = 200
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def fake_grafana() -> Iterator[FakeGrafana]:
    """Serve a minimal Grafana API on 127.0.0.1 (Grafana is not installable here; see the module docstring)."""
    state = FakeGrafana()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            state.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "body": body,
                    "authorization": self.headers.get("Authorization"),
                }
            )
            return body

        def do_GET(self) -> None:
            self._record()
            if self.path.split("?")[0] == "/api/folders":
                self._reply(200, state.folders)
            else:
                self._reply(404, {"message": "not found"})

        def do_POST(self) -> None:
            body = self._record()
            if self.path == "/api/folders":
                folder = {"id": 7, "uid": "fld-new", "title": body["title"]}
                state.folders.append(folder)
                self._reply(200, folder)
            elif self.path == "/api/dashboards/db":
                if state.dashboard_status != 200:
                    self._reply(state.dashboard_status, {"message": "version-mismatch", "status": "version-mismatch"})
                    return
                uid = body["dashboard"]["uid"]
                self._reply(
                    200,
                    {
                        "id": 1,
                        "uid": uid,
                        "url": f"/d/{uid}/ai-trading-bot",
                        "status": "success",
                        "version": 3,
                        "slug": "ai-trading-bot",
                    },
                )
            else:
                self._reply(404, {"message": "not found"})

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_push_saves_the_dashboard_in_a_new_folder_with_the_token(
    fake_grafana: FakeGrafana, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Push through the real grafana-client to a local stand-in for Grafana (no Grafana binary here)."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with capture_logs() as logs:
        code = grafana.main(
            ["push", "--url", fake_grafana.url, "--token-file", str(token_file), "--folder", "Trading bots"]
        )
    assert code == 0
    calls = [(r["method"], r["path"].split("?")[0]) for r in fake_grafana.requests]
    assert calls == [("GET", "/api/folders"), ("POST", "/api/folders"), ("POST", "/api/dashboards/db")]
    assert all(r["authorization"] == f"Bearer {TOKEN}" for r in fake_grafana.requests)
    assert fake_grafana.requests[1]["body"] == {"title": "Trading bots"}
    body = fake_grafana.requests[2]["body"]
    assert body["overwrite"] is True and body["folderUid"] == "fld-new"
    assert body["dashboard"] == grafana.build_dashboard()
    out = json.loads(capsys.readouterr().out)
    assert out == {
        "uid": grafana.DASHBOARD_UID,
        "url": "/d/ai-trading-bot/ai-trading-bot",
        "version": 3,
        "status": "success",
    }
    assert TOKEN not in repr(logs)
    assert any(e["event"] == "grafana_dashboard_pushed" for e in logs)


def test_push_reuses_an_existing_folder_and_reads_the_token_from_the_environment(
    fake_grafana: FakeGrafana, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_grafana.folders.append({"id": 3, "uid": "fld-old", "title": grafana.DEFAULT_FOLDER})
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    assert grafana.main(["push", "--url", fake_grafana.url]) == 0
    assert [r["path"].split("?")[0] for r in fake_grafana.requests] == ["/api/folders", "/api/dashboards/db"]
    assert fake_grafana.requests[-1]["body"]["folderUid"] == "fld-old"
    assert fake_grafana.requests[-1]["authorization"] == f"Bearer {TOKEN}"


def test_push_failures_exit_nonzero_without_leaking_the_token(
    fake_grafana: FakeGrafana, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    assert grafana.main(["push", "--url", fake_grafana.url]) == 2
    assert "GRAFANA_TOKEN" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    assert grafana.main(["push", "--url", fake_grafana.url, "--token-file", str(empty)]) == 2
    assert f"token file {empty} is empty" in capsys.readouterr().err
    assert fake_grafana.requests == []

    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    fake_grafana.dashboard_status = 412
    assert grafana.main(["push", "--url", fake_grafana.url, "--folder", ""]) == 1
    err = capsys.readouterr().err
    assert "push of dashboard ai-trading-bot" in err and TOKEN not in err
    assert [r["path"] for r in fake_grafana.requests] == ["/api/dashboards/db"]  # no folder: General
    assert "folderUid" not in fake_grafana.requests[0]["body"]


def test_push_to_an_unreachable_grafana_names_the_url_without_credentials() -> None:
    with pytest.raises(grafana.GrafanaPushError, match=r"to http://127\.0\.0\.1:9/ failed") as info:
        grafana.push_dashboard("http://admin:s3cret@127.0.0.1:9/", None, folder=None, timeout_s=2)
    assert "s3cret" not in str(info.value)
