"""`ai-trading dashboard` / `python -m monitoring.dashboard`: the user guide's web dashboard.

    ai-trading dashboard [--project P] [--entity E] [--port 8502] [--runs-dir outputs] [--host 127.0.0.1]

Pages (Flask, charts drawn by Bokeh; BokehJS is served from the installed package, so it works offline):

- ``/``: model comparison — each run's out-of-sample test metrics after costs, against buy-and-hold and the
  SMA rule on the same bars — and the runs' reward and validation curves side by side (``?run=ID`` repeated
  picks the runs, ``?limit=N`` the count).
- ``/runs/<run_id>``: one run's training metrics (reward, loss components, validation, gradient norm), its
  equity curve, P&L distribution and win/loss by hour of day, weekday (UTC, by entry time) and trade duration.
- ``/api/status``, ``/api/runs``, ``/api/runs/<run_id>``: the same figures as JSON.

Runs are read through `monitoring.runs` (never torch or `training`). The W&B backend is opened in a
background thread, after a quick reachability probe of the server, so the page is served at once from the
local run tree and says which source it shows and why (W&B offline, connecting, or online). Unreadable run
files (a corrupt ``summary.json``) are listed on the page by path instead of failing it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import structlog
from bokeh.embed import components
from bokeh.models import FactorRange
from bokeh.palettes import Category10_10
from bokeh.plotting import figure
from bokeh.util.paths import bokehjs_path
from flask import Flask, jsonify, render_template, request, send_from_directory
from jinja2 import DictLoader
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, make_server

from monitoring.run_store import CONFIG_FILE, SUMMARY_FILE, json_safe
from monitoring.runs import (
    DEFAULT_WANDB_HOST,
    Backend,
    LocalRuns,
    RunInfo,
    RunNotFoundError,
    RunSource,
    RunSourceError,
    choose_backend,
    finite,
    open_runs,
)

log = structlog.get_logger()

STRATEGIES = ("policy", "buy_and_hold", "sma_crossover")
STRATEGY_LABELS = {"policy": "policy", "buy_and_hold": "buy & hold", "sma_crossover": "SMA crossover"}
METRICS: tuple[tuple[str, str], ...] = (
    ("total_return", "total return"),
    ("sharpe", "sharpe"),
    ("sortino", "sortino"),
    ("max_drawdown", "max drawdown"),
    ("win_rate", "win rate"),
    ("profit_factor", "profit factor"),
    ("trade_count", "trades"),
    ("exposure", "exposure"),
)
PERCENT_KEYS = {"total_return", "max_drawdown", "win_rate", "exposure"}
TRAINING_KEYS: tuple[tuple[str, str], ...] = (
    ("charts/episodic_return", "reward (episodic return)"),
    ("losses/policy_loss", "policy loss"),
    ("losses/value_loss", "value loss"),
    ("losses/entropy", "entropy"),
    ("validation/sharpe", "validation sharpe"),
    ("validation/exposure", "validation exposure"),
    ("grad_norm/total", "gradient norm"),
)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
DURATION_BUCKETS: tuple[tuple[float, str], ...] = (
    (1.0, "<=1h"),
    (4.0, "1-4h"),
    (12.0, "4-12h"),
    (24.0, "12-24h"),
    (72.0, "1-3d"),
    (168.0, "3-7d"),
    (float("inf"), ">7d"),
)
"""Trade-duration buckets: (upper bound in hours, inclusive; label)."""


# --- figures ------------------------------------------------------------------------------------------------


def fmt_metric(key: str, value: Any) -> str:
    """Format a metric as the reports do: percentages for returns and rates, 3 decimals otherwise."""
    number = finite(value)
    if number is None:
        return "n/a"
    if key in PERCENT_KEYS:
        return f"{number:.2%}"
    if key in ("trade_count", "trades", "wins", "losses"):
        return str(int(number))
    return f"{number:.3f}"


def run_split(run: RunInfo) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """Return (split name, {strategy: metrics}) of the run's out-of-sample result: test split or backtest."""
    fold, test = run.test_metrics()
    if test:
        return ("test" if fold is None else f"{fold}-test"), test
    evaluation = run.summary.get("evaluation")
    if isinstance(evaluation, Mapping):
        for name, reports in evaluation.items():
            if isinstance(reports, Mapping) and reports:
                return str(name), {str(k): dict(v) for k, v in reports.items() if isinstance(v, Mapping)}
    return None, {}


def run_overview(run: RunInfo) -> dict[str, Any]:
    """Return one run's comparison row: test metrics of the policy and both baselines, excess return."""
    split, results = run_split(run)
    model = run.config.get("model") if isinstance(run.config.get("model"), Mapping) else {}
    training = run.config.get("training") if isinstance(run.config.get("training"), Mapping) else {}
    returns = {s: finite(results.get(s, {}).get("total_return")) for s in STRATEGIES}
    policy_return = returns["policy"]
    excess = (
        None if policy_return is None or returns["buy_and_hold"] is None else policy_return - returns["buy_and_hold"]
    )
    beats = [
        policy_return > r for s, r in returns.items() if s != "policy" and r is not None and policy_return is not None
    ]
    return {
        "run_id": run.run_id,
        "created": run.created,
        "url": run.url,
        "split": split,
        "model": (model or {}).get("name"),
        "total_timesteps": (training or {}).get("total_timesteps"),
        "metrics": {s: {k: finite(results[s].get(k)) for k, _ in METRICS} for s in STRATEGIES if s in results},
        "excess_return_vs_buy_and_hold": excess,
        "beats_baselines": bool(beats) and all(beats),
        "has_results": bool(results.get("policy")),
    }


def metric_series(history: pd.DataFrame, key: str) -> pd.Series:
    """One metric against step, NaN rows dropped, repeated steps averaged; fold runs use the last fold."""
    columns = [c for c in history.columns if c == key or (c.startswith("fold") and c.split("/", 1)[-1] == key)]
    if not columns:
        return pd.Series(dtype="float64")
    column = sorted(columns)[-1]
    frame = history[["step", column]].dropna()
    return frame.groupby("step")[column].mean().astype("float64") if len(frame) else pd.Series(dtype="float64")


def training_curves(history: pd.DataFrame) -> dict[str, dict[str, list[Any]]]:
    """Return {metric key: {"step": [...], "value": [...]}} for the training panels the run logged."""
    curves: dict[str, dict[str, list[Any]]] = {}
    for key, _ in TRAINING_KEYS:
        series = metric_series(history, key)
        if len(series):
            curves[key] = {"step": [int(s) for s in series.index], "value": [float(v) for v in series]}
    return curves


def prepare_trades(trades: pd.DataFrame) -> pd.DataFrame:
    """Return trades with UTC times, float P&L and `duration_seconds` (derived from the times if absent)."""
    frame = trades.copy()
    for column in ("entry_time", "exit_time"):
        if column in frame.columns:
            frame[column] = pd.to_datetime(frame[column], utc=True)
    if "duration_seconds" not in frame.columns and {"entry_time", "exit_time"} <= set(frame.columns):
        frame["duration_seconds"] = (frame["exit_time"] - frame["entry_time"]).dt.total_seconds()
    frame["pnl"] = frame["pnl"].astype("float64")
    return frame


def trade_stats(frame: pd.DataFrame) -> dict[str, Any]:
    """Return counts, win rate (share of trades with P&L > 0, as the evaluation defines it) and P&L figures."""
    pnl = frame["pnl"]
    wins, losses = pnl[pnl > 0], pnl[pnl <= 0]
    hours = frame["duration_seconds"].astype("float64") / 3600.0 if "duration_seconds" in frame else pd.Series([])
    return {
        "trades": len(frame),
        "wins": len(wins),
        "losses": len(losses),
        "win_rate": float((pnl > 0).mean()) if len(pnl) else None,
        "total_pnl": float(pnl.sum()),
        "average_win": float(wins.mean()) if len(wins) else None,
        "average_loss": float(losses.mean()) if len(losses) else None,
        "largest_win": float(pnl.max()) if len(pnl) else None,
        "largest_loss": float(pnl.min()) if len(pnl) else None,
        "average_duration_hours": float(hours.mean()) if len(hours) else None,
        "total_costs": float(frame["costs"].sum()) if "costs" in frame else None,
    }


def duration_bucket(hours: float) -> str:
    """Return the `DURATION_BUCKETS` label of a trade lasting `hours`."""
    return next(label for upper, label in DURATION_BUCKETS if hours <= upper)


def win_loss_by(frame: pd.DataFrame, by: str) -> list[dict[str, Any]]:
    """Return win/loss rows grouped by "hour" or "weekday" of entry (UTC) or by "duration" bucket, in order."""
    if by == "hour" and "entry_time" in frame:
        keys, labels = frame["entry_time"].dt.hour, {h: f"{h:02d}:00" for h in range(24)}
    elif by == "weekday" and "entry_time" in frame:
        keys, labels = frame["entry_time"].dt.day_of_week, dict(enumerate(WEEKDAYS))
    elif by == "duration" and "duration_seconds" in frame:
        order = {label: i for i, (_, label) in enumerate(DURATION_BUCKETS)}
        keys = (frame["duration_seconds"].astype("float64") / 3600.0).map(lambda h: order[duration_bucket(h)])
        labels = {i: label for label, i in order.items()}
    else:
        return []
    rows = []
    for key, group in frame.groupby(keys.to_numpy(), sort=True):
        pnl = group["pnl"]
        rows.append(
            {
                by: labels[int(key)],
                "trades": len(pnl),
                "wins": int((pnl > 0).sum()),
                "losses": int((pnl <= 0).sum()),
                "win_rate": float((pnl > 0).mean()),
                "total_pnl": float(pnl.sum()),
                "mean_pnl": float(pnl.mean()),
            }
        )
    return rows


def pnl_histogram(pnl: pd.Series, bins: int = 30) -> dict[str, list[float] | list[int]]:
    """Return shared bin edges and the counts of winning and losing trades per bin."""
    values = pnl.to_numpy(dtype="float64")
    if not len(values):
        return {"edges": [], "wins": [], "losses": []}
    edges = np.histogram_bin_edges(values, bins=max(1, min(bins, len(values))))
    wins, _ = np.histogram(values[values > 0], bins=edges)
    losses, _ = np.histogram(values[values <= 0], bins=edges)
    return {"edges": edges.tolist(), "wins": wins.tolist(), "losses": losses.tolist()}


def equity_curve(equity: pd.Series, trades: pd.DataFrame, initial: float) -> tuple[pd.Series, str]:
    """Return the run's equity curve, or one rebuilt from trade P&L at exit times when none was stored."""
    if len(equity):
        return equity, "equity curve of the split (every bar)"
    if len(trades) and "exit_time" in trades:
        ordered = trades.sort_values("exit_time")
        curve = initial + ordered["pnl"].cumsum()
        return pd.Series(curve.to_numpy(), index=pd.DatetimeIndex(ordered["exit_time"]), name="equity"), (
            "initial equity plus cumulative trade P&L at each exit"
        )
    return pd.Series(dtype="float64", name="equity"), "no equity data"


# --- where the runs come from -------------------------------------------------------------------------------


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
    url = env.get("WANDB_BASE_URL") or DEFAULT_WANDB_HOST
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


# --- charts -------------------------------------------------------------------------------------------------


def _figure(title: str, **kwargs: Any) -> Any:
    tools = "pan,wheel_zoom,box_zoom,reset,save,hover"
    return figure(title=title, height=280, sizing_mode="stretch_width", tools=tools, **kwargs)


def _line_chart(title: str, lines: Mapping[str, dict[str, list[Any]]], x_label: str = "environment step") -> Any:
    chart = _figure(title, x_axis_label=x_label)
    for i, (name, curve) in enumerate(lines.items()):
        chart.line(curve["step"], curve["value"], legend_label=name[-30:], color=Category10_10[i % 10], line_width=2)
    chart.legend.location = "top_left"
    return chart


def _bar_chart(title: str, rows: Sequence[Mapping[str, Any]], by: str) -> Any:
    labels = [str(r[by]) for r in rows]
    chart = _figure(title, x_range=labels, y_range=(0, 1), y_axis_label="win rate")
    chart.vbar(x=labels, top=[r["win_rate"] for r in rows], width=0.8, color=Category10_10[0])
    return chart


def _returns_chart(rows: Sequence[Mapping[str, Any]]) -> Any:
    factors = [(r["run_id"][-24:], STRATEGY_LABELS[s]) for r in rows for s in STRATEGIES if s in r["metrics"]]
    values = [100 * (r["metrics"][s]["total_return"] or 0.0) for r in rows for s in STRATEGIES if s in r["metrics"]]
    colors = [Category10_10[STRATEGIES.index(s)] for r in rows for s in STRATEGIES if s in r["metrics"]]
    chart = _figure("Test-split total return after costs (%)", x_range=FactorRange(factors=factors))
    chart.vbar(x=factors, top=values, width=0.9, color=colors)
    chart.xaxis.major_label_orientation = 0.9
    return chart


def _equity_chart(equity: pd.Series) -> Any:
    index = pd.DatetimeIndex(equity.index)
    times = index.tz_convert(None) if index.tz is not None else index
    chart = _figure("Equity", x_axis_type="datetime", y_axis_label="equity")
    chart.line(times, equity.to_numpy(), color=Category10_10[0], line_width=2)
    return chart


def _histogram_chart(histogram: Mapping[str, list[Any]]) -> Any:
    edges = histogram["edges"]
    chart = _figure("P&L per trade", x_axis_label="P&L", y_axis_label="trades")
    for name, color in (("wins", Category10_10[2]), ("losses", Category10_10[3])):
        chart.quad(
            top=histogram[name], bottom=0, left=edges[:-1], right=edges[1:], color=color, alpha=0.7, legend_label=name
        )
    return chart


def _charts(figures: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    if not figures:
        return "", {}
    script, divs = components(dict(figures))
    return str(script), {str(k): str(v) for k, v in divs.items()}


# --- the web app --------------------------------------------------------------------------------------------

TEMPLATES = {
    "base.html": """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }} · ai-trading</title>
<script src="{{ url_for('bokehjs', name='bokeh.min.js') }}"></script>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}
.banner{padding:.6em 1em;border-radius:4px;margin-bottom:1em}.offline,.connecting{background:#fff3cd}
.online{background:#d1e7dd}.problem{background:#f8d7da;padding:.6em 1em}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}
</style>{{ script|safe }}</head><body>
<p><a href="{{ url_for('overview') }}">ai-trading dashboard</a> · project {{ project }}</p>
<div class="banner {{ status.wandb }}" id="wandb-status">{{ status.message }}
 Source: {{ status.source }} ({{ status.location }}).</div>
{% if problems %}<div class="problem" id="problems"><b>Unreadable run files</b><ul>
{% for p in problems %}<li><code>{{ p.path }}</code>: {{ p.message }}</li>{% endfor %}</ul></div>{% endif %}
<h1>{{ title }}</h1>{% block body %}{% endblock %}</body></html>""",
    "table.html": """<table{% if id %} id="{{ id }}"{% endif %}>
<tr>{% for c in columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>{% endfor %}</table>""",
    "overview.html": """{% extends "base.html" %}{% block body %}
{% if not rows and not without_results %}<div id="empty-state">
<p><b>No runs found</b> in <code>{{ location }}</code>.</p>
<p>Train one with <code>ai-trading train</code> (or <code>ai-trading quickstart</code>), or point
<code>--runs-dir</code> at the <code>outputs/</code> directory your runs were written to.</p></div>{% else %}
<h2>Model comparison (out-of-sample, after costs)</h2>
<form method="get">{% for r in all_runs %}<label><input type="checkbox" name="run" value="{{ r }}"
{% if r in chosen %}checked{% endif %}> {{ r }}</label> {% endfor %}<button>compare</button></form>
{% with id="comparison", columns=columns, rows=rows %}{% include "table.html" %}{% endwith %}
{% for name in divs %}{{ divs[name]|safe }}{% endfor %}
{% if without_results %}<p>Runs without test results: {% for r in without_results %}
<a href="{{ url_for('run_page', run_id=r) }}">{{ r }}</a> {% endfor %}</p>{% endif %}{% endif %}{% endblock %}""",
    "run.html": """{% extends "base.html" %}{% block body %}
{% for e in errors %}<div class="problem">{{ e }}</div>{% endfor %}
<h2>Test metrics{% if split %} (split {{ split }}){% endif %}</h2>
{% if metric_rows %}
{% with id="metrics", columns=metric_columns, rows=metric_rows %}{% include "table.html" %}{% endwith %}
{% else %}<p>No test results in this run's summary.</p>{% endif %}
<h2>Training metrics</h2>{% if training_divs %}
<div class="grid">{% for d in training_divs %}{{ d|safe }}{% endfor %}</div>
{% else %}<p>The run logged no training metrics.</p>{% endif %}
<h2>Trade performance</h2>{% if stats_rows %}
{% with id="trade-stats", columns=["statistic", "value"], rows=stats_rows %}{% include "table.html" %}{% endwith %}
<p>{{ equity_note }}</p><div class="grid">{{ divs.get("equity", "")|safe }}{{ divs.get("pnl", "")|safe }}</div>
<h2>Win/loss by time and duration</h2><p>Hours and weekdays are UTC, by entry time.</p>
{% for by, table in by_tables %}<h3>By {{ by }}</h3>
{% with id="by-" ~ by, columns=table.columns, rows=table.rows %}{% include "table.html" %}{% endwith %}
{{ divs.get("by-" ~ by, "")|safe }}{% endfor %}{% else %}<p>No trades in this split.</p>{% endif %}{% endblock %}""",
    "error.html": """{% extends "base.html" %}{% block body %}
<p class="problem" id="error">{{ message }}</p>{% endblock %}""",
}


def _initial_equity(run: RunInfo) -> float:
    env = run.config.get("env") if isinstance(run.config.get("env"), Mapping) else {}
    return finite((env or {}).get("initial_equity")) or 10_000.0


def read_curves(source: RunSource, run_id: str) -> tuple[dict[str, dict[str, list[Any]]], str | None]:
    """Return (training curves, None), or ({}, why) when the run's metrics history cannot be read."""
    # Local histories are read whole (fold runs prefix their keys); W&B is asked for the panels' keys only.
    keys = None if source.kind == "local" else [key for key, _ in TRAINING_KEYS]
    try:
        return training_curves(source.history(run_id, keys)), None
    except Exception as e:  # a corrupt metrics file or a W&B error must not take the page down
        log.warning("run_history_unreadable", run_id=run_id, error=str(e))
        return {}, f"cannot read the training metrics of run {run_id} in {source.location}: {e}"


def run_details(source: RunSource, run_id: str) -> dict[str, Any]:
    """Return everything the run page shows, as plain data; a part that cannot be read becomes an error note."""
    run = source.get_run(run_id)
    overview = run_overview(run)
    errors: list[str] = []
    where = f"run {run_id} in {source.location}"
    curves, error = read_curves(source, run_id)
    if error:
        errors.append(error)
    details: dict[str, Any] = {"run": overview, "training": curves, "trades": None}
    split = overview["split"]
    if split is None:
        return details | {"errors": errors}
    try:
        trades, equity = source.trades(run_id, split), source.equity(run_id, split)
    except Exception as e:
        log.warning("run_trades_unreadable", run_id=run_id, split=split, error=str(e))
        errors.append(f"cannot read the trades or equity of split {split!r} of {where}: {e}")
        return details | {"errors": errors}
    if trades.empty or "pnl" not in trades.columns:
        return details | {"errors": errors}
    frame = prepare_trades(trades)
    curve, note = equity_curve(equity, frame, _initial_equity(run))
    details["trades"] = {
        "stats": trade_stats(frame),
        "by_hour": win_loss_by(frame, "hour"),
        "by_weekday": win_loss_by(frame, "weekday"),
        "by_duration": win_loss_by(frame, "duration"),
        "pnl_histogram": pnl_histogram(frame["pnl"]),
        "equity": {
            "points": len(curve),
            "first": finite(curve.iloc[0]) if len(curve) else None,
            "last": finite(curve.iloc[-1]) if len(curve) else None,
            "source": note,
        },
    }
    details["_equity_series"] = curve
    return details | {"errors": errors}


def _by_table(rows: Sequence[Mapping[str, Any]], by: str) -> dict[str, Any]:
    return {
        "columns": [by, "trades", "wins", "losses", "win rate", "total P&L", "mean P&L"],
        "rows": [
            [
                r[by],
                r["trades"],
                r["wins"],
                r["losses"],
                fmt_metric("win_rate", r["win_rate"]),
                f"{r['total_pnl']:,.2f}",
                f"{r['mean_pnl']:,.2f}",
            ]
            for r in rows
        ],
    }


def create_app(sources: Sources, limit: int = 10) -> Flask:
    """Return the Flask app serving the dashboard pages and JSON endpoints from `sources`."""
    app = Flask("monitoring.dashboard")
    app.jinja_loader = DictLoader(TEMPLATES)
    static_js = Path(bokehjs_path()) / "js"

    def page(template: str, title: str, status_code: int = 200, **context: Any) -> tuple[str, int]:
        context.setdefault("script", "")
        status = sources.status()
        problems = sources.problems()
        html = render_template(
            template, title=title, status=status, problems=problems, project=sources.project, **context
        )
        return html, status_code

    def comparison(chosen: Sequence[str]) -> tuple[list[dict[str, Any]], list[str], list[str]]:
        runs = sources.source.list_runs(limit=None if chosen else request.args.get("limit", limit, type=int))
        names = [r.run_id for r in runs]
        if chosen:
            runs = [r for r in runs if r.run_id in chosen]
        rows = [run_overview(r) for r in runs]
        return [r for r in rows if r["has_results"]], [r["run_id"] for r in rows if not r["has_results"]], names

    @app.get("/bokehjs/<path:name>")
    def bokehjs(name: str) -> Any:
        return send_from_directory(static_js, name)

    @app.get("/api/status")
    def api_status() -> Any:
        return jsonify(json_safe(sources.status()))

    @app.get("/api/runs")
    def api_runs() -> Any:
        rows, without, _ = comparison(request.args.getlist("run"))
        problems = [{"path": p.path, "message": p.message} for p in sources.problems()]
        return jsonify(
            json_safe({"status": sources.status(), "runs": rows, "without_results": without, "problems": problems})
        )

    @app.get("/api/runs/<run_id>")
    def api_run(run_id: str) -> Any:
        details = run_details(sources.source, run_id)
        details.pop("_equity_series", None)
        return jsonify(json_safe(details))

    @app.get("/")
    def overview() -> Any:
        chosen = request.args.getlist("run")
        rows, without, names = comparison(chosen)
        columns = ["run", "created (UTC)", "model", "split"] + [t for _, t in METRICS]
        columns += ["buy & hold return", "SMA return", "excess vs buy & hold", "beats both"]
        table = []
        for r in rows:
            policy = r["metrics"].get("policy", {})
            created = r["created"].strftime("%Y-%m-%d %H:%M") if r["created"] else "?"
            table.append(
                [r["run_id"], created, r["model"] or "?", r["split"]]
                + [fmt_metric(k, policy.get(k)) for k, _ in METRICS]
                + [fmt_metric("total_return", r["metrics"].get(s, {}).get("total_return")) for s in STRATEGIES[1:]]
                + [
                    fmt_metric("total_return", r["excess_return_vs_buy_and_hold"]),
                    "yes" if r["beats_baselines"] else "no",
                ]
            )
        figures: dict[str, Any] = {}
        if rows:
            figures["returns"] = _returns_chart(rows)
            histories = {r["run_id"]: read_curves(sources.source, r["run_id"])[0] for r in rows}
            for key, key_title in (TRAINING_KEYS[0], TRAINING_KEYS[4]):
                lines = {run_id: curves[key] for run_id, curves in histories.items() if key in curves}
                if lines:
                    figures[key] = _line_chart(f"{key_title} per run", lines)
        script, divs = _charts(figures)
        return page(
            "overview.html",
            "Runs",
            rows=table,
            columns=columns,
            without_results=without,
            all_runs=names,
            chosen=chosen or [r["run_id"] for r in rows],
            location=sources.source.location,
            script=script,
            divs=divs,
        )

    @app.get("/runs/<run_id>")
    def run_page(run_id: str) -> Any:
        details = run_details(sources.source, run_id)
        run, trades = details["run"], details["trades"]
        metric_columns = ["metric"] + [STRATEGY_LABELS[s] for s in STRATEGIES if s in run["metrics"]]
        metric_rows = (
            [
                [title] + [fmt_metric(key, run["metrics"][s].get(key)) for s in STRATEGIES if s in run["metrics"]]
                for key, title in METRICS
            ]
            if run["metrics"]
            else []
        )
        figures: dict[str, Any] = {
            key: _line_chart(title, {title: details["training"][key]})
            for key, title in TRAINING_KEYS
            if key in details["training"]
        }
        context: dict[str, Any] = {"stats_rows": [], "by_tables": [], "equity_note": ""}
        if trades is not None:
            stats = trades["stats"]
            context["stats_rows"] = [
                [
                    k.replace("_", " "),
                    fmt_metric(k, v)
                    if k in ("win_rate", "trades", "wins", "losses")
                    else (f"{v:,.2f}" if v is not None else "n/a"),
                ]
                for k, v in stats.items()
            ]
            context["equity_note"] = f"Equity: {trades['equity']['source']}."
            if len(details["_equity_series"]):
                figures["equity"] = _equity_chart(details["_equity_series"])
            figures["pnl"] = _histogram_chart(trades["pnl_histogram"])
            for by in ("hour", "weekday", "duration"):
                rows = trades[f"by_{by}"]
                context["by_tables"].append((by, _by_table(rows, by)))
                if rows:
                    figures[f"by-{by}"] = _bar_chart(f"Win rate by {by}", rows, by)
        script, divs = _charts(figures)
        training_divs = [divs[key] for key, _ in TRAINING_KEYS if key in divs]
        return page(
            "run.html",
            f"Run {run_id}",
            split=run["split"],
            metric_columns=metric_columns,
            metric_rows=metric_rows,
            errors=details["errors"],
            script=script,
            divs=divs,
            training_divs=training_divs,
            **context,
        )

    @app.errorhandler(RunNotFoundError)
    def not_found(e: RunNotFoundError) -> Any:
        if request.path.startswith("/api/"):
            return jsonify({"error": str(e)}), 404
        return page("error.html", "Run not found", 404, message=str(e))

    @app.errorhandler(Exception)
    def failed(e: Exception) -> Any:
        if isinstance(e, HTTPException):  # 404 of unknown URLs, 405, ...
            return e
        log.exception("dashboard_request_failed", path=request.path)
        message = f"{request.path} failed: {type(e).__name__}: {e}"
        if request.path.startswith("/api/"):
            return jsonify({"error": message}), 500
        return page("error.html", "Error", 500, message=message)

    return app


# --- command line -------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Return the CLI parser (the user guide's --project/--entity/--port plus --runs-dir, --host, --backend)."""
    parser = argparse.ArgumentParser(
        prog="ai-trading dashboard",
        description="Serve the web dashboard: training curves, trade analytics, model comparison, win/loss "
        "by time and duration. Reads W&B when a server is configured and reachable, else the local runs.",
        epilog="Examples:\n  ai-trading dashboard\n  ai-trading dashboard --project ai-trading --entity your-username\n"
        "  ai-trading dashboard --port 8502 --runs-dir outputs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--project", default=os.environ.get("WANDB_PROJECT") or "ai-trading", help="W&B project")
    parser.add_argument("--entity", default=os.environ.get("WANDB_ENTITY") or None, help="W&B entity")
    parser.add_argument("--port", type=int, default=8502, help="TCP port (0 picks a free one; default 8502)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--runs-dir", default="outputs", help="local run directory tree (default outputs)")
    parser.add_argument(
        "--backend",
        choices=("auto", "local", "wandb"),
        default="auto",
        help="auto: W&B when an API key is configured, WANDB_MODE is not offline and the server answers; else local",
    )
    parser.add_argument("--limit", type=int, default=10, help="runs compared on the front page (default 10)")
    parser.add_argument("--log-level", default="INFO")
    return parser


def serve(sources: Sources, host: str = "127.0.0.1", port: int = 8502, limit: int = 10) -> BaseWSGIServer:
    """Return a threaded WSGI server bound to host:port (port 0: a free one); call `serve_forever` on it."""
    return make_server(host, port, create_app(sources, limit=limit), threaded=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the dashboard until interrupted; exit 0 on Ctrl-C, 1 if it cannot listen, 2 on bad usage."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 2
    from monitoring.logging import configure_logging

    configure_logging(args.log_level)
    sources = Sources(args.project, args.entity, args.runs_dir, args.backend)
    sources.start()
    try:
        server = serve(sources, args.host, args.port, args.limit)
    except OSError as e:
        sys.stderr.write(f"ai-trading dashboard: cannot listen on {args.host}:{args.port}: {e}\n")
        return 1
    url = f"http://{args.host}:{server.server_port}/"
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("dashboard_exposed", host=args.host, note="the dashboard has no authentication")
    log.info("dashboard_serving", url=url, port=server.server_port, **sources.status())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("dashboard_stopped")
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
