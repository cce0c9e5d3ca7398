"""Grafana dashboard of the trading bot as code: build its JSON, export it, push it through `grafana-client`.

The dashboard queries only the ``aitrading_*`` metrics of `monitoring.metrics` through a Prometheus datasource
(template variable ``$datasource``), filtered by the variables ``$bot_id``, ``$mode`` and ``$symbol``. The
checked-in copy ``deploy/grafana/dashboards/ai-trading.json`` (provisioned by
``deploy/grafana/provisioning/dashboards/ai-trading.yml``) is this module's output; regenerate it with::

    python -m monitoring.grafana --write deploy/grafana/dashboards/ai-trading.json

Command line (also ``ai-trading grafana ...``)::

    ai-trading grafana export [--out FILE]                     # JSON to FILE or stdout
    ai-trading grafana push --url URL [--token-file F] [--folder NAME]

``push`` reads a service-account token from ``--token-file`` or ``$GRAFANA_TOKEN`` (never from the command
line, never logged), creates the folder if needed and saves the dashboard with ``overwrite=True``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

import structlog

log = structlog.get_logger()

DASHBOARD_UID: Final = "ai-trading-bot"
"""Stable uid of the dashboard (pushes overwrite it in place)."""
DASHBOARD_TITLE: Final = "ai-trading bot"
"""Title shown in Grafana."""
DEFAULT_FOLDER: Final = "ai-trading"
"""Folder the CLI pushes into by default."""
DATASOURCE_UID: Final = "prometheus"
"""Uid of the provisioned Prometheus datasource (deploy/grafana/provisioning/datasources/prometheus.yml)."""
DEFAULT_OUTPUT: Final = Path("deploy/grafana/dashboards/ai-trading.json")
"""Where the checked-in dashboard JSON lives, relative to the repository root."""

SEL: Final = 'bot_id=~"$bot_id",mode=~"$mode"'
"""Label matchers every panel query starts with."""
SEL_SYMBOL: Final = SEL + ',symbol=~"$symbol"'
"""Label matchers of per-symbol queries."""

PanelKind = Literal["timeseries", "stat"]


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel."""

    expr: str
    """PromQL, with Grafana variables ($bot_id, $mode, $symbol, $__rate_interval, $__range)."""
    legend: str = ""
    """Legend template, e.g. {{symbol}}."""


@dataclass(frozen=True)
class Panel:
    """One dashboard panel."""

    title: str
    """Panel title."""
    queries: tuple[Query, ...]
    """Its PromQL targets."""
    description: str
    """What the panel shows and how to read it."""
    unit: str = "short"
    """Grafana unit id (s, percentunit, short, ...)."""
    kind: PanelKind = "timeseries"
    """Visualisation type."""
    core: bool = False
    """Whether a healthy running bot always has data for it (tests assert it returns data)."""
    thresholds: tuple[tuple[float | None, str], ...] = ()
    """Stat thresholds as (from value, colour); the first step's value is None (base)."""


@dataclass(frozen=True)
class Row:
    """A titled group of panels."""

    title: str
    """Row title."""
    panels: tuple[Panel, ...] = field(default_factory=tuple)
    """Panels in the row, laid out left to right."""


def _quantiles(metric: str, *quantiles: float) -> tuple[Query, ...]:
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by (le, bot_id) (rate({metric}_bucket{{{SEL}}}[$__rate_interval])))",
            f"p{round(q * 100)} {{{{bot_id}}}}",
        )
        for q in quantiles
    )


ROWS: Final = (
    Row(
        "Account",
        (
            Panel(
                "Equity",
                (Query(f"aitrading_equity{{{SEL}}}", "{{bot_id}} ({{mode}})"),),
                "Account value in the quote currency (mark to market).",
                core=True,
            ),
            Panel(
                "PnL",
                (
                    Query(f"aitrading_realized_pnl{{{SEL}}}", "realized {{bot_id}}"),
                    Query(f"aitrading_unrealized_pnl{{{SEL}}}", "unrealized {{bot_id}}"),
                ),
                "Realized PnL after fees and unrealized PnL of open positions (quote currency).",
                core=True,
            ),
            Panel(
                "Drawdown",
                (Query(f"aitrading_drawdown_ratio{{{SEL}}}", "{{bot_id}}"),),
                "Fall from the peak equity.",
                unit="percentunit",
                core=True,
            ),
            Panel(
                "Positions",
                (Query(f"aitrading_position{{{SEL_SYMBOL}}}", "{{symbol}} {{bot_id}}"),),
                "Signed position per symbol, in the base currency.",
                core=True,
            ),
        ),
    ),
    Row(
        "Orders and execution",
        (
            Panel(
                "Orders by status",
                (
                    Query(
                        f"sum by (status) (increase(aitrading_orders_total{{{SEL_SYMBOL}}}[$__rate_interval]))",
                        "{{status}}",
                    ),
                ),
                "Orders entering each status per interval (new, sent, open, filled, cancelled, rejected, unknown).",
                core=True,
            ),
            Panel(
                "Open orders",
                (Query(f"sum by (symbol) (aitrading_open_orders{{{SEL_SYMBOL}}})", "{{symbol}}"),),
                "Orders not yet in a final state.",
                core=True,
            ),
            Panel(
                "Fills rate",
                (
                    Query(
                        f"sum by (symbol, side) (rate(aitrading_fills_total{{{SEL_SYMBOL}}}[$__rate_interval]))",
                        "{{symbol}} {{side}}",
                    ),
                ),
                "Fills per second.",
                unit="ops",
                core=True,
            ),
            Panel(
                "Slippage (bps)",
                (
                    Query(
                        "histogram_quantile(0.5, sum by (le) "
                        f"(rate(aitrading_slippage_bps_bucket{{{SEL_SYMBOL}}}[$__rate_interval])))",
                        "p50",
                    ),
                    Query(
                        "histogram_quantile(0.95, sum by (le) "
                        f"(rate(aitrading_slippage_bps_bucket{{{SEL_SYMBOL}}}[$__rate_interval])))",
                        "p95",
                    ),
                    Query(
                        f"sum(rate(aitrading_slippage_bps_sum{{{SEL_SYMBOL}}}[$__rate_interval])) / "
                        f"sum(rate(aitrading_slippage_bps_count{{{SEL_SYMBOL}}}[$__rate_interval]))",
                        "mean",
                    ),
                ),
                "Adverse slippage of fills against the decision price (negative: price improvement).",
            ),
            Panel(
                "Trades closed",
                (
                    Query(
                        f"sum by (outcome) (increase(aitrading_trades_closed_total{{{SEL_SYMBOL}}}[$__range]))",
                        "{{outcome}}",
                    ),
                ),
                "Round trips closed in the selected range, by outcome after fees.",
                kind="stat",
            ),
        ),
    ),
    Row(
        "Latency",
        (
            Panel(
                "Decision latency",
                _quantiles("aitrading_decision_latency_seconds", 0.5, 0.99),
                "Candle received to order decided (features, policy, risk): p50 and p99.",
                unit="s",
                core=True,
            ),
            Panel(
                "Inference latency",
                _quantiles("aitrading_inference_latency_seconds", 0.5, 0.99),
                "One ONNX policy run: p50 and p99.",
                unit="s",
                core=True,
            ),
        ),
    ),
    Row(
        "Data and risk",
        (
            Panel(
                "Data staleness",
                (Query(f"max by (symbol) (aitrading_data_staleness_seconds{{{SEL_SYMBOL}}})", "{{symbol}}"),),
                "Age of the latest candle per symbol.",
                unit="s",
                core=True,
            ),
            Panel(
                "Risk state",
                (Query(f"max by (state) (aitrading_risk_state{{{SEL}}})", "{{state}}"),),
                "1 for the risk manager's current state (active, reducing, halted).",
                core=True,
            ),
            Panel(
                "Risk halts",
                (Query(f"sum(increase(aitrading_risk_halts_total{{{SEL}}}[$__range]))", "halts"),),
                "Times the risk manager halted trading in the selected range.",
                kind="stat",
                core=True,
                thresholds=((None, "green"), (1, "red")),
            ),
            Panel(
                "Risk refusals",
                (
                    Query(
                        f"sum by (reason) (rate(aitrading_risk_refusals_total{{{SEL_SYMBOL}}}[$__rate_interval]))",
                        "{{reason}}",
                    ),
                    Query(
                        f"sum by (problem) (rate(aitrading_candles_refused_total{{{SEL_SYMBOL}}}[$__rate_interval]))",
                        "candle {{problem}}",
                    ),
                ),
                "Orders refused by the risk manager per second, by reason, and live candles the candle guard "
                "refused, by problem.",
                unit="ops",
            ),
            Panel(
                "Reconciliation discrepancies",
                (
                    Query(
                        f"sum by (kind) (increase(aitrading_reconciliation_discrepancies_total{{{SEL}}}[$__range]))",
                        "{{kind}}",
                    ),
                ),
                "Ledger/venue mismatches found in the selected range.",
                kind="stat",
                thresholds=((None, "green"), (1, "red")),
            ),
        ),
    ),
    Row(
        "Model",
        (
            Panel(
                "Feature drift (PSI)",
                (Query(f"max by (feature) (aitrading_feature_drift_psi{{{SEL}}})", "{{feature}}"),),
                "Population stability index of each feature's live window against its training distribution "
                "(model card); below 0.1 stable, above 0.25 (bot.drift.psi_threshold) the bot raises an alert.",
            ),
            Panel(
                "Feature drift (KS)",
                (Query(f"max by (feature) (aitrading_feature_drift_ks{{{SEL}}})", "{{feature}}"),),
                "Kolmogorov-Smirnov statistic of each feature's live window against training (0 = same, "
                "1 = disjoint); above bot.drift.ks_threshold the bot raises an alert.",
            ),
            Panel(
                "Model age",
                (Query(f"max by (bot_id) (aitrading_model_age_days{{{SEL}}})", "{{bot_id}}"),),
                "Days since the live model's training data ended; past bot.model_max_age_days it is stale.",
                unit="d",
                kind="stat",
            ),
        ),
    ),
    Row(
        "Shadow models",
        (
            Panel(
                "Shadow vs live equity",
                (
                    Query(f"aitrading_equity{{{SEL}}}", "live {{bot_id}}"),
                    Query(f"max by (model) (aitrading_shadow_equity{{{SEL}}})", "shadow {{model}}"),
                ),
                "The live book and each shadow model's virtual book (bot.shadow_models), marked at each close; a "
                "shadow's book starts with the bot's equity when the daemon starts.",
            ),
            Panel(
                "Shadow agreement",
                (Query(f"max by (model) (aitrading_shadow_agreement_ratio{{{SEL}}})", "{{model}}"),),
                "Share of the decisions where a shadow's target equalled the live policy's.",
                unit="percentunit",
            ),
            Panel(
                "Shadow trades",
                (
                    Query(
                        f"sum by (model, outcome) (increase(aitrading_shadow_trades_closed_total{{{SEL}}}[$__range]))",
                        "{{model}} {{outcome}}",
                    ),
                ),
                "Round trips each shadow closed in the selected range, by outcome.",
                kind="stat",
            ),
            Panel(
                "Shadow failures",
                (Query(f"sum by (model) (increase(aitrading_shadow_failures_total{{{SEL}}}[$__range]))", "{{model}}"),),
                "Shadows dropped at run time in the selected range (an alert says why; the live policy trades on).",
                kind="stat",
            ),
        ),
    ),
    Row(
        "Sinks and liveness",
        (
            Panel(
                "Sink queue depth",
                (Query(f"max by (sink) (aitrading_sink_queue_depth{{{SEL}}})", "{{sink}}"),),
                "Events waiting in each sink's queue (W&B, MQTT, ledger).",
                core=True,
            ),
            Panel(
                "Sink drops",
                (Query(f"sum by (sink) (rate(aitrading_sink_dropped_total{{{SEL}}}[$__rate_interval]))", "{{sink}}"),),
                "Events dropped per second by a slow or dead sink.",
                unit="ops",
                core=True,
            ),
            Panel(
                "Sink connection",
                (
                    Query(f"min by (sink) (aitrading_sink_connected{{{SEL}}})", "{{sink}} connected"),
                    Query(
                        f"sum by (sink) (rate(aitrading_sink_connect_failures_total{{{SEL}}}[$__rate_interval]))",
                        "{{sink}} failed attempts/s",
                    ),
                ),
                "1 while the MQTT bridge holds its broker connection; failed attempts per second while it is away "
                "(the log says when an outage begins, when its error changes and how it ended).",
            ),
            Panel(
                "Heartbeat age",
                (Query(f"time() - max by (bot_id) (aitrading_heartbeat_timestamp_seconds{{{SEL}}})", "{{bot_id}}"),),
                "Seconds since the latest heartbeat; red means the bot is silent.",
                unit="s",
                kind="stat",
                core=True,
                thresholds=((None, "green"), (60, "orange"), (180, "red")),
            ),
            Panel(
                "Uptime",
                (Query(f"max by (bot_id) (aitrading_uptime_seconds{{{SEL}}})", "{{bot_id}}"),),
                "Seconds since the daemon started.",
                unit="s",
                kind="stat",
                core=True,
            ),
            Panel(
                "Alerts",
                (
                    Query(
                        f"sum by (level, code) (increase(aitrading_alerts_total{{{SEL}}}[$__range]))",
                        "{{level}} {{code}}",
                    ),
                ),
                "Alerts raised in the selected range.",
                kind="stat",
            ),
        ),
    ),
)
"""The dashboard's rows and panels, top to bottom."""


def _datasource() -> dict[str, str]:
    return {"type": "prometheus", "uid": "${datasource}"}


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": _datasource(),
        "query": {"query": query, "refId": f"{name}-query"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def _panel_json(panel: Panel, panel_id: int, grid: dict[str, int]) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": colour, "value": value} for value, colour in panel.thresholds]
    defaults: dict[str, Any] = {"unit": panel.unit}
    if steps:
        defaults["thresholds"] = {"mode": "absolute", "steps": steps}
        defaults["color"] = {"mode": "thresholds"}
    out: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": _datasource(),
        "gridPos": grid,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": _datasource(),
                "expr": q.expr,
                "legendFormat": q.legend,
                "range": True,
                "instant": False,
            }
            for i, q in enumerate(panel.queries)
        ],
    }
    if panel.kind == "stat":
        out["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        }
    else:
        out["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "none"},
        }
    return out


def build_dashboard() -> dict[str, Any]:
    """Return the dashboard model (Grafana's JSON, ``id`` null, stable ``uid``)."""
    panels: list[dict[str, Any]] = []
    next_id = 1
    y = 0
    for row in ROWS:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            }
        )
        next_id += 1
        y += 1
        x = 0
        row_height = 0
        for panel in row.panels:
            width, height = (6, 5) if panel.kind == "stat" else (12, 8)
            if x + width > 24:
                x, y = 0, y + row_height
                row_height = 0
            panels.append(_panel_json(panel, next_id, {"h": height, "w": width, "x": x, "y": y}))
            next_id += 1
            x += width
            row_height = max(row_height, height)
        y += row_height
    return {
        "id": None,
        "uid": DASHBOARD_UID,
        "title": DASHBOARD_TITLE,
        "description": "Trading bot health and results from the aitrading_* metrics (monitoring/metrics.py).",
        "tags": ["ai-trading", "trading", "prometheus"],
        "timezone": "utc",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {"selected": False, "text": "Prometheus", "value": DATASOURCE_UID},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                    "includeAll": False,
                    "multi": False,
                },
                _variable("bot_id", "Bot", "label_values(aitrading_events_total, bot_id)"),
                _variable("mode", "Mode", 'label_values(aitrading_events_total{bot_id=~"$bot_id"}, mode)'),
                _variable("symbol", "Symbol", 'label_values(aitrading_position{bot_id=~"$bot_id"}, symbol)'),
            ]
        },
        "panels": panels,
    }


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """Return (panel title, PromQL) for every target of every panel in a dashboard model."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):
            out.append((str(panel["title"]), str(target["expr"])))
    return out


def render_json(dashboard: dict[str, Any] | None = None) -> str:
    """Return the dashboard as the exact text of the checked-in JSON file (sorted keys, 2-space indent)."""
    return json.dumps(dashboard if dashboard is not None else build_dashboard(), indent=2, sort_keys=True) + "\n"


def write_dashboard(path: Path) -> None:
    """Write the dashboard JSON to `path`, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_json(), encoding="utf-8")


def redact_url(url: str) -> str:
    """Return `url` without any user:password part, for logs and messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


class GrafanaPushError(RuntimeError):
    """Grafana refused the push or could not be reached; the message names the URL (without credentials)."""


def push_dashboard(
    url: str,
    token: str | None,
    *,
    folder: str | None = DEFAULT_FOLDER,
    dashboard: dict[str, Any] | None = None,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """Save the dashboard to the Grafana at `url` (overwriting by uid) in `folder`; return Grafana's reply."""
    # grafana-client is in the [dashboard] extra; import here so `--help` and export work without it.
    from grafana_client.api import GrafanaApi
    from grafana_client.client import GrafanaException

    model = dashboard if dashboard is not None else build_dashboard()
    safe_url = redact_url(url)
    api = GrafanaApi.from_url(url, credential=token, timeout=timeout_s)
    try:
        payload: dict[str, Any] = {
            "dashboard": model,
            "overwrite": True,
            "message": "pushed by ai-trading grafana push",
        }
        if folder:
            payload["folderUid"] = _ensure_folder(api, folder)
        reply: dict[str, Any] = api.dashboard.update_dashboard(payload)
    except GrafanaException as e:
        raise GrafanaPushError(f"push of dashboard {model['uid']} to {safe_url} failed: {e}") from e
    except OSError as e:  # connection refused, DNS, TLS: niquests errors derive from OSError
        raise GrafanaPushError(f"push of dashboard {model['uid']} to {safe_url} failed: {e}") from e
    log.info(
        "grafana_dashboard_pushed",
        url=safe_url,
        uid=model["uid"],
        folder=folder,
        version=reply.get("version"),
        dashboard_url=reply.get("url"),
    )
    return reply


def _ensure_folder(api: Any, title: str) -> str:
    """Return the uid of the folder titled `title`, creating it if Grafana has none."""
    for existing in api.folder.get_all_folders():
        if existing.get("title") == title:
            return str(existing["uid"])
    created = api.folder.create_folder(title)
    log.info("grafana_folder_created", folder=title, uid=created.get("uid"))
    return str(created["uid"])


def _read_token(token_file: str | None) -> str | None:
    if token_file:
        path = Path(token_file)
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ValueError(f"cannot read the Grafana token file {path}: {e.strerror or e}") from e
        if not token:
            raise ValueError(f"the Grafana token file {path} is empty")
        return token
    return os.environ.get("GRAFANA_TOKEN") or None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ai-trading grafana", description="Export or push the bot's Grafana dashboard (built from code)."
    )
    parser.add_argument("--write", metavar="FILE", help="write the dashboard JSON to FILE (same as export --out)")
    sub = parser.add_subparsers(dest="command")
    export = sub.add_parser("export", help="write the dashboard JSON")
    export.add_argument("--out", metavar="FILE", help="output file (default: stdout)")
    push = sub.add_parser("push", help="save the dashboard to a Grafana server (overwrites by uid)")
    push.add_argument("--url", required=True, help="Grafana base URL, e.g. https://grafana.example.com")
    push.add_argument(
        "--token-file", metavar="FILE", help="file holding a service-account token (default: $GRAFANA_TOKEN)"
    )
    push.add_argument(
        "--folder",
        default=DEFAULT_FOLDER,
        help=f"folder title, created if missing (default: {DEFAULT_FOLDER}; '' = General)",
    )
    push.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout in seconds (default: 10)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `ai-trading grafana` command line; return the exit code (0 ok, 1 push failed, 2 bad usage)."""
    parser = _parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:
        return int(e.code or 0)
    if args.write:
        write_dashboard(Path(args.write))
        return 0
    if args.command == "export":
        if args.out and args.out != "-":
            write_dashboard(Path(args.out))
        else:
            sys.stdout.write(render_json())
        return 0
    if args.command == "push":
        try:
            token = _read_token(args.token_file)
        except ValueError as e:
            sys.stderr.write(f"ai-trading grafana push: {e}\n")
            return 2
        if token is None:
            sys.stderr.write("ai-trading grafana push: no token: pass --token-file FILE or set GRAFANA_TOKEN\n")
            return 2
        try:
            reply = push_dashboard(args.url, token, folder=args.folder or None, timeout_s=args.timeout)
        except GrafanaPushError as e:
            sys.stderr.write(f"ai-trading grafana push: {e}\n")
            return 1
        summary = {key: reply.get(key) for key in ("uid", "url", "version", "status")}
        sys.stdout.write(json.dumps(summary) + "\n")
        return 0
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
