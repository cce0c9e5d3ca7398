"""`ai-trading dashboard` / `python -m monitoring.dashboard`: the user guide's web dashboard.

    ai-trading dashboard [--project P] [--entity E] [--port 8502] [--runs-dir outputs] [--host 127.0.0.1]
                         [--ledger state/paper.db]

Pages (Flask, charts drawn by Bokeh; BokehJS is served from the installed package, so it works offline):

- ``/``: model comparison — each run's out-of-sample test metrics after costs, against buy-and-hold and the
  SMA rule on the same bars — and the runs' reward and validation curves side by side (``?run=ID`` repeated
  picks the runs, ``?limit=N`` the count).
- ``/runs/<run_id>``: one run's training metrics (reward, loss components, validation, gradient norm), its
  equity curve, P&L distribution and win/loss by hour of day, weekday (UTC, by entry time) and trade duration.
  ``?from=YYYY-MM-DD&to=YYYY-MM-DD`` limits the trade analytics to the trades entered in those days (UTC).
- ``/runs/<run_id>/model``: the run's exported model card, its sha256 checked against the ONNX file.
- ``/sweeps/<name>``: a sweep's trials (state, objective, parameters), each linked to its run.
- ``/live``: a running daemon read from its ledger (``--ledger``), refreshing itself (`monitoring.dashboard.live`).
- ``/api/status``, ``/api/runs``, ``/api/runs/<run_id>[/model]``, ``/api/sweeps/<name>``, ``/api/live``: the same
  figures as JSON.

Runs are read through `monitoring.runs` (never torch or `training`); trade figures come from
`monitoring.reports.analytics`, charts from `monitoring.dashboard.charts`. The W&B backend is opened in a
background thread (`monitoring.dashboard.sources`), after a quick reachability probe of the server, so the page
is served at once from the local run tree and says which source it shows and why (W&B offline, connecting, or
online). Unreadable run files (a corrupt ``summary.json``) are listed on the page by path instead of failing it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import structlog
from bokeh.util.paths import bokehjs_path
from flask import Flask, jsonify, render_template, request, send_from_directory, url_for
from jinja2 import DictLoader
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, make_server

from monitoring.dashboard.catalog import SweepNotFoundError, link, list_sweeps, model_path, register_catalog
from monitoring.dashboard.charts import (
    bar_chart,
    embed_charts,
    equity_chart,
    histogram_chart,
    line_chart,
    returns_chart,
)
from monitoring.dashboard.live import LiveLedger, register_live
from monitoring.dashboard.period import Period, parse_period
from monitoring.dashboard.sources import Sources
from monitoring.dashboard.templates import TEMPLATES
from monitoring.reports.analytics import (
    STRATEGIES,
    STRATEGY_LABELS,
    TEST_METRICS,
    compare_with_baselines,
    equity_curve,
    format_metric,
    metric_series,
    pnl_histogram,
    prepare_trades,
    trade_stats,
    win_loss_by,
)
from monitoring.run_store import json_safe
from monitoring.runs import RunInfo, RunNotFoundError, RunSource, finite

log = structlog.get_logger()

TRAINING_KEYS: tuple[tuple[str, str], ...] = (
    ("charts/episodic_return", "reward (episodic return)"),
    ("losses/policy_loss", "policy loss"),
    ("losses/value_loss", "value loss"),
    ("losses/entropy", "entropy"),
    ("validation/sharpe", "validation sharpe"),
    ("validation/exposure", "validation exposure"),
    ("grad_norm/total", "gradient norm"),
)
INTEGER_KEYS = frozenset({"trade_count", "trades", "wins", "losses"})
"""Figures shown as whole numbers."""


# --- page data --------------------------------------------------------------------------------------------


def fmt_metric(key: str, value: Any) -> str:
    """Format a metric as the reports do: percentages for returns and rates, 3 decimals otherwise."""
    return format_metric(key, value, INTEGER_KEYS)


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
    _, excess, beats_baselines = compare_with_baselines(results)
    return {
        "run_id": run.run_id,
        "created": run.created,
        "url": run.url,
        "split": split,
        "model": (model or {}).get("name"),
        "total_timesteps": ((training or {}).get("ppo") or {}).get("total_timesteps"),
        "metrics": {s: {k: finite(results[s].get(k)) for k, _ in TEST_METRICS} for s in STRATEGIES if s in results},
        "excess_return_vs_buy_and_hold": excess,
        "beats_baselines": beats_baselines,
        "has_results": bool(results.get("policy")),
    }


def training_curves(history: pd.DataFrame) -> dict[str, dict[str, list[Any]]]:
    """Return {metric key: {"step": [...], "value": [...]}} for the training panels the run logged."""
    curves: dict[str, dict[str, list[Any]]] = {}
    for key, _ in TRAINING_KEYS:
        series = metric_series(history, key)
        if len(series):
            curves[key] = {"step": [int(s) for s in series.index], "value": [float(v) for v in series]}
    return curves


# --- the web app --------------------------------------------------------------------------------------------


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


def run_details(source: RunSource, run_id: str, period: Period | None = None) -> dict[str, Any]:
    """Return everything the run page shows, as plain data; a part that cannot be read becomes an error note."""
    period = period or Period()
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
    every = prepare_trades(trades)
    frame = period.select(every)
    curve, note = equity_curve(equity, every, _initial_equity(run))
    curve = period.clip(curve)
    details["trades"] = {
        "period": {"from": period.first_day or None, "to": period.last_day or None, "of_trades": len(every)},
        "first_entry": every["entry_time"].min().date().isoformat() if "entry_time" in every and len(every) else None,
        "last_entry": every["entry_time"].max().date().isoformat() if "entry_time" in every and len(every) else None,
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


def create_app(sources: Sources, limit: int = 10, live: LiveLedger | None = None) -> Flask:
    """Return the Flask app serving the dashboard pages and JSON endpoints from `sources` (and `live`'s ledger)."""
    app = Flask("monitoring.dashboard.app")
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
        try:
            period = parse_period(request.args.get("from"), request.args.get("to"))
        except ValueError as e:
            return jsonify({"error": str(e)}), 400
        details = run_details(sources.source, run_id, period)
        details.pop("_equity_series", None)
        return jsonify(json_safe(details))

    @app.get("/")
    def overview() -> Any:
        chosen = request.args.getlist("run")
        rows, without, names = comparison(chosen)
        by_id = {r["run_id"]: sources.source.get_run(r["run_id"]) for r in rows}
        sweep_columns = ["sweep", "method", "trials", "states", "metric", "best"]
        sweeps = [
            [
                link(w["name"], url_for("sweep_page", name=w["name"])),
                w.get("method"),
                w.get("n_trials"),
                " ".join(f"{k} {v}" for k, v in (w.get("states") or {}).items()) or w.get("problem", ""),
                w.get("metric"),
                fmt_metric(w.get("metric") or "", w.get("best_value")),
            ]
            for w in list_sweeps(sources.runs_dir)
        ]
        columns = ["run", "created (UTC)", "model", "split"] + [t for _, t in TEST_METRICS]
        columns += ["buy & hold return", "SMA return", "excess vs buy & hold", "beats both"]
        table = []
        for r in rows:
            policy = r["metrics"].get("policy", {})
            created = r["created"].strftime("%Y-%m-%d %H:%M") if r["created"] else "?"
            run = by_id[r["run_id"]]
            has_model = model_path(run) is not None
            table.append(
                [
                    link(r["run_id"], url_for("run_page", run_id=r["run_id"])),
                    created,
                    link(r["model"] or "?", url_for("model_page", run_id=r["run_id"]) if has_model else None),
                    r["split"],
                ]
                + [fmt_metric(k, policy.get(k)) for k, _ in TEST_METRICS]
                + [fmt_metric("total_return", r["metrics"].get(s, {}).get("total_return")) for s in STRATEGIES[1:]]
                + [
                    fmt_metric("total_return", r["excess_return_vs_buy_and_hold"]),
                    "yes" if r["beats_baselines"] else "no",
                ]
            )
        figures: dict[str, Any] = {}
        if rows:
            figures["returns"] = returns_chart(rows)
            histories = {r["run_id"]: read_curves(sources.source, r["run_id"])[0] for r in rows}
            for key, key_title in (TRAINING_KEYS[0], TRAINING_KEYS[4]):
                lines = {run_id: curves[key] for run_id, curves in histories.items() if key in curves}
                if lines:
                    figures[key] = line_chart(f"{key_title} per run", lines)
        script, divs = embed_charts(figures)
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
            sweeps=sweeps,
            sweep_columns=sweep_columns,
        )

    @app.get("/runs/<run_id>")
    def run_page(run_id: str) -> Any:
        period_error = ""
        try:
            period = parse_period(request.args.get("from"), request.args.get("to"))
        except ValueError as e:
            period, period_error = Period(), f"{e}; showing every trade"
        details = run_details(sources.source, run_id, period)
        run, trades = details["run"], details["trades"]
        has_model = model_path(sources.source.get_run(run_id)) is not None
        metric_columns = ["metric"] + [STRATEGY_LABELS[s] for s in STRATEGIES if s in run["metrics"]]
        metric_rows = (
            [
                [title] + [fmt_metric(key, run["metrics"][s].get(key)) for s in STRATEGIES if s in run["metrics"]]
                for key, title in TEST_METRICS
            ]
            if run["metrics"]
            else []
        )
        figures: dict[str, Any] = {
            key: line_chart(title, {title: details["training"][key]})
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
                figures["equity"] = equity_chart(details["_equity_series"])
            figures["pnl"] = histogram_chart(trades["pnl_histogram"])
            for by in ("hour", "weekday", "duration"):
                rows = trades[f"by_{by}"]
                context["by_tables"].append((by, _by_table(rows, by)))
                if rows:
                    figures[f"by-{by}"] = bar_chart(f"Win rate by {by}", rows, by)
        script, divs = embed_charts(figures)
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
            period=period,
            period_error=period_error,
            first_entry=(trades or {}).get("first_entry"),
            last_entry=(trades or {}).get("last_entry"),
            model_href=url_for("model_page", run_id=run_id) if has_model else None,
            **context,
        )

    register_live(app, live or LiveLedger(None), page)
    register_catalog(app, sources, page, fmt_metric)

    @app.errorhandler(RunNotFoundError)
    @app.errorhandler(SweepNotFoundError)
    def not_found(e: KeyError) -> Any:
        if request.path.startswith("/api/"):
            return jsonify({"error": str(e)}), 404
        return page("error.html", "Not found", 404, message=str(e))

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
    parser.add_argument(
        "--ledger",
        default="state/paper.db",
        help="a running daemon's ledger (SQLite file or database URL) for the live page /live "
        "(default state/paper.db, the paper daemon's; waited for until it exists)",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


def serve(
    sources: Sources, host: str = "127.0.0.1", port: int = 8502, limit: int = 10, ledger: str | None = None
) -> BaseWSGIServer:
    """Return a threaded WSGI server bound to host:port (port 0: a free one); call `serve_forever` on it."""
    return make_server(host, port, create_app(sources, limit=limit, live=LiveLedger(ledger)), threaded=True)


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
        server = serve(sources, args.host, args.port, args.limit, args.ledger)
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
