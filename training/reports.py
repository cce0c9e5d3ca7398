"""`ai-trading report` / `python -m training.reports`: performance and trade reports from runs.

The user guide's Report Generator, same options::

    ai-trading report --project ai-trading --report-type performance --limit 5
    ai-trading report --project ai-trading --report-type trade --run-id abc123
    ai-trading report --project ai-trading --format md --output-dir ./my-reports
    ai-trading report --report-type trade --ledger state/paper.db --since 2024-05-01 --until 2024-05-02
    ai-trading report --report-type shadows --ledger state/paper.db --since 2024-05-01 --format json

Runs are read through `monitoring.runs` (the local `outputs/` tree, or a W&B server when one is
configured; the report says which). A report is a directory ``<output-dir>/<type>-...-<UTC time>/`` holding
``report.md`` (default), ``report.html`` (the same, charts embedded) or ``report.json`` (machine-readable),
with the matplotlib PNG charts beside it.

- ``performance``: the last ``--limit`` finished runs side by side: out-of-sample test metrics after costs,
  against buy-and-hold and the SMA rule on the same bars; training progress: reward curves, loss components,
  gradient norms, and the validation metric and exposure (how the policy's action mix evolved: share of
  validation bars it held a position).
- ``trade``: one run's test-split trades: cumulative P&L, win/loss distribution, trade duration vs return,
  win rate by hour of entry, monthly returns, best and worst trades. With ``--ledger`` (a daemon's SQLite file
  or a database URL), the same analysis of the trades the daemon closed in ``[--since, --until)`` (UTC), with
  metrics from its equity snapshots (`monitoring.reports.ledger_run`); the directory is ``trade-ledger-<UTC time>``.
- ``shadows``: needs ``--ledger``: the live policy and each shadow model the daemon ran beside it
  (``bot.shadow_models``) over ``[--since, --until)`` (UTC), one row per model, live first: total return,
  annualised Sharpe, max drawdown (from the books' equity marks, within daemon sessions), closed trades, win rate,
  realised P&L and agreement with live's targets (`monitoring.reports.shadows`); the directory is
  ``shadows-ledger-<UTC time>``.

The daemon's scheduled daily report is `monitoring.reports.ledger.write_daily_report` (torch-free; the
builders and renderers live in `monitoring`, this module is their CLI). With a W&B source,
``--publish`` (or ``--publish-wandb``) also builds a W&B Report with the Reports API (``wandb_workspaces``, in the
``dashboard`` extra); it needs a usable W&B server, and without one the command says so in one line and exits 1
before writing anything (saving a Report cannot be tested here: no server).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import structlog

from bot.clock import utc_now
from monitoring.reports.ledger import build_ledger_report
from monitoring.reports.ledger_run import LedgerReadError, open_ledger, read_ledger_run
from monitoring.reports.model import Report, ReportError
from monitoring.reports.render import FORMATS, RENDERERS
from monitoring.reports.shadows import build_shadow_report
from monitoring.reports.trades import build_trade
from monitoring.runs import Backend, RunSource, RunSourceError, open_runs
from training.cli import EXIT_OK, run_tool
from training.report_performance import build_performance

log = structlog.get_logger()

ReportType = Literal["performance", "trade", "shadows"]
REPORT_TYPES: tuple[str, ...] = ("performance", "trade", "shadows")


# --- entry points ---------------------------------------------------------------------------------------------


def _report_dir(output_dir: Path, name: str) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    candidate = output_dir / name
    counter = 2
    while candidate.exists():
        candidate = output_dir / f"{name}-{counter}"
        counter += 1
    candidate.mkdir()
    return candidate


def generate_report(
    report_type: str = "performance",
    *,
    project: str = "ai-trading",
    entity: str | None = None,
    runs_dir: Path | str = "outputs",
    backend: Backend = "auto",
    run_id: str | None = None,
    split: str | None = None,
    limit: int = 5,
    fmt: str = "md",
    output_dir: Path | str = "reports",
    source: RunSource | None = None,
    publish_wandb: bool = False,
    ledger: str | Path | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Path:
    """Write a report and return the path of its main file (charts beside it); ReportError if impossible.

    With `ledger`, a trade report of the trades a daemon closed in [`since`, `until`) instead of a run's; the
    ``shadows`` report (live vs shadow models) needs `ledger`.
    """
    if report_type not in REPORT_TYPES:
        raise ReportError(f"report type must be one of {list(REPORT_TYPES)}, was {report_type!r}")
    if fmt not in FORMATS:
        raise ReportError(f"format must be one of {list(FORMATS)}, was {fmt!r}")
    if report_type == "shadows":
        if ledger is None:
            raise ReportError("--report-type shadows compares the models of a daemon's ledger: pass --ledger too")
        return _shadow_report(ledger, since, until, fmt, Path(output_dir))
    if ledger is not None:
        if report_type != "trade":
            raise ReportError(f"--ledger makes a trade report (or shadows); --report-type {report_type} reads runs")
        return _ledger_report(ledger, since, until, fmt, Path(output_dir))
    if since is not None or until is not None:
        raise ReportError("--since/--until select a window of a ledger: pass --ledger too")
    if source is None:
        source = open_runs(project, entity, runs_dir, backend)
    now = utc_now().replace(microsecond=0)  # reports are stamped to the second
    stamp = now.strftime("%Y%m%d-%H%M%S")
    name = f"performance-{stamp}" if report_type == "performance" else f"trade-{run_id or 'latest'}-{stamp}"
    out_dir = _report_dir(Path(output_dir), name)
    try:
        if report_type == "performance":
            report = build_performance(source, limit, out_dir)
        else:
            report = build_trade(source, run_id, out_dir, split)
    except BaseException:
        for path in out_dir.iterdir():
            path.unlink()
        out_dir.rmdir()
        raise
    report.meta = {
        "generated (UTC)": now.isoformat(),
        "project": project if entity is None else f"{entity}/{project}",
        "source": f"{source.kind}: {source.location}",
        "why this source": source.reason,
        **report.meta,
    }
    path = out_dir / f"report.{fmt}"
    path.write_text(RENDERERS[fmt](report), encoding="utf-8")
    log.info("report_written", path=str(path), report_type=report_type, format=fmt, source=source.kind)
    if publish_wandb:
        url = publish_wandb_report(report, source, project, entity)
        if url:
            log.info("wandb_report_saved", url=url)
    return path


def _ledger_report(
    ledger: str | Path, since: datetime | None, until: datetime | None, fmt: str, output_dir: Path
) -> Path:
    now = utc_now().replace(microsecond=0)  # reports are stamped to the second
    with open_ledger(ledger) as book:
        try:
            run = read_ledger_run(book, since, until)
        except ValueError as e:
            raise ReportError(str(e)) from None
        out_dir = _report_dir(output_dir, f"trade-ledger-{now.strftime('%Y%m%d-%H%M%S')}")
        try:
            report = build_ledger_report(run, out_dir)
        except BaseException:
            for path in out_dir.iterdir():
                path.unlink()
            out_dir.rmdir()
            raise
    report.meta = {"generated (UTC)": now.isoformat(), "source": f"ledger: {run.location}", **report.meta}
    path = out_dir / f"report.{fmt}"
    path.write_text(RENDERERS[fmt](report), encoding="utf-8")
    log.info("report_written", path=str(path), report_type="trade", format=fmt, source="ledger")
    return path


def _shadow_report(
    ledger: str | Path, since: datetime | None, until: datetime | None, fmt: str, output_dir: Path
) -> Path:
    now = utc_now().replace(microsecond=0)  # reports are stamped to the second
    with open_ledger(ledger) as book:
        report = build_shadow_report(book, since, until)  # before the directory: an error leaves nothing behind
    report.meta = {"generated (UTC)": now.isoformat(), "source": f"ledger: {report.meta['ledger']}", **report.meta}
    out_dir = _report_dir(output_dir, f"shadows-ledger-{now.strftime('%Y%m%d-%H%M%S')}")
    path = out_dir / f"report.{fmt}"
    path.write_text(RENDERERS[fmt](report), encoding="utf-8")
    log.info("report_written", path=str(path), report_type="shadows", format=fmt, source="ledger")
    return path


def utc_time(text: str) -> datetime:
    """Parse an ISO date or date-time (UTC when it has no offset) for --since/--until."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO date or time such as 2024-05-01 or 2024-05-01T12:00, was {text!r}"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def publish_wandb_report(report: Report, source: RunSource, project: str, entity: str | None) -> str | None:
    """Save a W&B Report with the training-progress panels (needs `wandb_workspaces` and a server; untested here)."""
    if source.kind != "wandb":
        log.warning("wandb_report_skipped", reason="the runs were read locally; a W&B Report needs a W&B server")
        return None
    try:
        import wandb_workspaces.reports.v2 as wr  # type: ignore[import-not-found]  # not a dependency: optional, see the module docstring
    except ImportError:
        log.warning("wandb_report_skipped", reason="wandb_workspaces is not installed (pip install wandb-workspaces)")
        return None
    runs = [r.get("run_id") for r in report.data.get("runs", [])] or [report.data.get("run_id")]
    runset = wr.Runset(entity=entity or "", project=project, filters=f"Metric('displayName') in {runs!r}")
    panels = [
        wr.LinePlot(title="Reward curves", x="Step", y=["charts/episodic_return"]),
        wr.LinePlot(title="Loss components", x="Step", y=["losses/policy_loss", "losses/value_loss"]),
        wr.LinePlot(title="Gradient norms", x="Step", y=["grad_norm/total"]),
        wr.BarPlot(title="Test return", metrics=["test/policy/total_return", "test/buy_and_hold/total_return"]),
        wr.RunComparer(diff_only=True),
    ]
    saved = wr.Report(
        project=project,
        entity=entity or "",
        title=report.title,
        description=f"ai-trading {report.report_type} report",
        blocks=[wr.PanelGrid(runsets=[runset], panels=panels)],
    ).save()
    return str(getattr(saved, "url", "")) or None


def build_parser() -> argparse.ArgumentParser:
    """Return the CLI parser (the user guide's options plus --runs-dir, --backend, --publish-wandb)."""
    parser = argparse.ArgumentParser(
        prog="ai-trading report",
        description="Write a performance-comparison or trade-analysis report from training runs, or a trade or "
        "live-vs-shadow report from a daemon's ledger.",
        epilog="Examples:\n  ai-trading report --project ai-trading --report-type performance --limit 5\n"
        "  ai-trading report --project ai-trading --report-type trade --run-id abc123\n"
        "  ai-trading report --project ai-trading --format md --output-dir ./my-reports\n"
        "  ai-trading report --report-type shadows --ledger state/paper.db --since 2024-05-01",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--project",
        default=os.environ.get("WANDB_PROJECT") or "ai-trading",
        help="W&B project (recorded in the report; read from when the W&B backend is used)",
    )
    parser.add_argument("--entity", default=os.environ.get("WANDB_ENTITY") or None, help="W&B entity")
    parser.add_argument("--report-type", choices=REPORT_TYPES, default="performance")
    parser.add_argument("--limit", type=int, default=5, help="runs to compare (performance report)")
    parser.add_argument("--run-id", default=None, help="run to analyse (trade report; default: newest finished run)")
    parser.add_argument(
        "--split",
        default=None,
        help="trade report: the split to read (test, backtest, fold2-test, ...); default: the run's test split, "
        "or its only split with trades",
    )
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="md")
    parser.add_argument("--output-dir", default="reports", help="where report directories are written")
    parser.add_argument("--runs-dir", default="outputs", help="local run directory tree (local backend)")
    parser.add_argument(
        "--backend",
        choices=("auto", "local", "wandb"),
        default="auto",
        help="auto: W&B when an API key is configured and WANDB_MODE is not offline, else local",
    )
    parser.add_argument(
        "--publish",
        "--publish-wandb",
        dest="publish_wandb",
        action="store_true",
        help="also build a W&B Report with the Reports API (wandb-workspaces); needs a usable W&B server",
    )
    parser.add_argument(
        "--ledger",
        default=None,
        help="a daemon's ledger (SQLite file such as state/paper.db, or a database URL): report its closed trades "
        "(trade) or compare its live and shadow models (shadows, which needs it)",
    )
    parser.add_argument("--since", type=utc_time, default=None, help="with --ledger: window start (ISO, UTC)")
    parser.add_argument("--until", type=utc_time, default=None, help="with --ledger: window end, exclusive (ISO, UTC)")
    parser.add_argument("--log-level", default="WARNING")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the report CLI; print the report's path; exit 0 ok, 1 error, 2 bad usage."""
    return run_tool(build_parser(), argv, _report, (ReportError, RunSourceError, LedgerReadError))


def publish_refusal(env: Mapping[str, str] | None = None) -> str | None:
    """Why --publish cannot build a W&B Report here (no usable server, no wandb-workspaces), or None if it can."""
    from monitoring.wandb_server import server_status

    available, why = server_status(env)
    if not available:
        return (
            f"--publish builds a W&B Report, which needs a usable W&B server ({why}); "
            "run without --publish for the local report, or set WANDB_API_KEY (and WANDB_BASE_URL) for a server"
        )
    try:
        import wandb_workspaces.reports.v2  # type: ignore[import-not-found]  # noqa: F401  # optional extra
    except ImportError:
        return "--publish needs the wandb-workspaces package: pip install 'ai-trading[dashboard]'"
    return None


def _report(args: argparse.Namespace) -> int:
    if args.publish_wandb:
        refusal = publish_refusal()
        if refusal is not None:  # said before any work, so nothing half-made is left behind
            raise ReportError(refusal)
    path = generate_report(
        args.report_type,
        project=args.project,
        entity=args.entity,
        runs_dir=args.runs_dir,
        backend=args.backend,
        run_id=args.run_id,
        split=args.split,
        limit=args.limit,
        fmt=args.fmt,
        output_dir=args.output_dir,
        publish_wandb=args.publish_wandb,
        ledger=args.ledger,
        since=args.since,
        until=args.until,
    )
    print(path)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
