"""The live-vs-shadow report: the live policy and each shadow model compared on a daemon's ledger window.

Read from the rows of `bot.ledger.shadows`: every model's marks (target and book equity at each close) and the
closed round trips (the shadows' virtual ones, the live bot's real ones from `Ledger.closed_trades`). Per model:

- Equity is one value per close (with several symbols a close has one mark per symbol, all with the same
  equity). A return is ``equity / previous equity - 1`` between consecutive closes of the same session only:
  virtual books restart with the daemon, so the step across a restart is no return.
- Total return compounds those returns; max drawdown is over the curve they compound to (starting at 1).
  Sharpe is `bot.evaluation.compute_metrics`'s over that curve: ``mean / std(ddof=1) * sqrt(bars per year)``,
  bars per year = a 365-day year in seconds / the median spacing of the model's consecutive marks in a session.
- Trades, win rate (P&L > 0) and realised P&L count round trips closed in the window.
- Agreement with live: the share of (close, symbol) where both the model and live asked for a target (not None)
  and the two are equal within `AGREEMENT_TOLERANCE`.

Torch-free; blocks on SQL (the CLI runs it, not the daemon's loop).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from bot.evaluation import SECONDS_PER_YEAR, compute_metrics
from bot.ledger.shadows import (
    AGREEMENT_TOLERANCE,
    LIVE_MODEL,
    ModelMark,
    Role,
    mark_rows,
    models_in,
    shadow_trade_rows,
    targets_agree,
)
from bot.ledger.store import Ledger
from bot.ledger.types import ClosedTrade
from monitoring.reports.ledger_run import LedgerReadError
from monitoring.reports.model import Report, ReportError, Section, Table

COLUMNS = [
    "model",
    "role",
    "total return",
    "Sharpe (annualised)",
    "max drawdown",
    "closed trades",
    "win rate",
    "realised PnL",
    "agreement with live",
    "marks",
]


@dataclass(frozen=True, slots=True)
class ModelFigures:
    """One model's row of the comparison; None where a figure has no data (NaN never appears)."""

    model: str
    role: Role
    total_return: float | None
    """Compounded from the returns within sessions (fraction; None without a return)."""
    sharpe: float | None
    """Annualised Sharpe of the per-mark returns (None with fewer than two, or constant non-zero ones)."""
    max_drawdown: float | None
    """Largest fall from a peak of the compounded curve (positive fraction; None without a return)."""
    trades: int
    win_rate: float | None
    realized_pnl: float
    """Sum of the closed trades' P&L after fees (account currency)."""
    agreement: float | None
    """Share of the compared (close, symbol) pairs with the live target; None for live or without a pair."""
    agreement_compared: int
    """(close, symbol) pairs where both this model and live had a target."""
    marks: int
    """Closes the model was marked at."""
    returns: int
    """Returns between consecutive marks within a session."""
    sessions: int
    bar_seconds: float | None
    """Median spacing of consecutive marks within a session (None with no such pair)."""
    periods_per_year: float | None
    """Bars in a 365-day year at that spacing: Sharpe's annualisation."""

    def to_dict(self) -> dict[str, Any]:
        """Return the figures as JSON-ready values."""
        return asdict(self)


def build_shadow_report(ledger: Ledger, since: datetime | None, until: datetime | None) -> Report:
    """Return the live-vs-shadow comparison of the marks and trades in [`since`, `until`) (UTC).

    Raises:
        ReportError: the window is empty or reversed, has no marks, or a book's equity is not positive.
        LedgerReadError: the ledger cannot be read.
    """
    window = _window(since, until)
    if since is not None and until is not None and until <= since:
        raise ReportError(f"the window's end must follow its start, was {window}")
    try:
        marks = mark_rows(ledger, since=since, until=until)
        live_trades = ledger.closed_trades(since=since, until=until)
        shadow_trades = shadow_trade_rows(ledger, since=since, until=until)
    except sa.exc.SQLAlchemyError as e:
        raise LedgerReadError(f"ledger {ledger.url}: cannot be read: {e}") from e
    if not marks:
        raise ReportError(
            f"ledger {ledger.url} has no model marks in {window} (UTC): no shadow models ran then "
            "(list them in bot.shadow_models to compare them with the live policy)"
        )
    trades: dict[str, list[ClosedTrade]] = defaultdict(list)
    trades[LIVE_MODEL] = list(live_trades)
    for item in shadow_trades:
        trades[item.model].append(item.trade)
    names = models_in(marks)
    names += sorted(name for name in trades if trades[name] and name not in names and name != LIVE_MODEL)
    by_model: dict[str, list[ModelMark]] = defaultdict(list)
    for mark in marks:
        by_model[mark.model].append(mark)
    live_targets = _targets(by_model.get(LIVE_MODEL, []))
    figures = [_figures(ledger, name, by_model.get(name, []), trades.get(name, []), live_targets) for name in names]
    return Report(
        title=f"Live vs shadow models, ledger {window}",
        report_type="shadows",
        meta={"ledger": ledger.url, "window (UTC)": window},
        sections=[
            Section(
                "Models compared",
                paragraphs=_paragraphs(figures, window),
                tables=[Table(f"Live policy and shadow models, {window} (UTC)", COLUMNS, [_row(f) for f in figures])],
            )
        ],
        data={
            "ledger": ledger.url,
            "since": None if since is None else since.isoformat(),
            "until": None if until is None else until.isoformat(),
            "models": {f.model: f.to_dict() for f in figures},
        },
    )


def _window(since: datetime | None, until: datetime | None) -> str:
    start = "start" if since is None else since.isoformat()
    end = "now" if until is None else until.isoformat()
    return f"{start} .. {end}"


def _targets(marks: Sequence[ModelMark]) -> dict[tuple[datetime, str], float | None]:
    targets: dict[tuple[datetime, str], float | None] = {}
    for mark in marks:
        targets.setdefault((mark.ts, mark.symbol), mark.target)
    return targets


def _figures(
    ledger: Ledger,
    name: str,
    marks: Sequence[ModelMark],
    trades: Sequence[ClosedTrade],
    live_targets: dict[tuple[datetime, str], float | None],
) -> ModelFigures:
    closes: dict[datetime, ModelMark] = {}
    for mark in marks:
        closes.setdefault(mark.ts, mark)  # one equity per close: the symbols' marks share it
    points = sorted(closes.values(), key=lambda m: m.ts)
    for point in points:
        if point.equity <= 0:
            raise ReportError(
                f"ledger {ledger.url}: model {name} has equity {point.equity} <= 0 at {point.ts.isoformat()}; "
                "its returns are undefined"
            )
    pairs = [(a, b) for a, b in itertools.pairwise(points) if a.session == b.session]
    returns = [float(b.equity / a.equity) - 1.0 for a, b in pairs]
    gaps = [(b.ts - a.ts).total_seconds() for a, b in pairs]
    bar_seconds = statistics.median(gaps) if gaps else None
    total_return = sharpe = max_drawdown = None
    if returns and bar_seconds is not None:
        curve = list(itertools.accumulate(returns, lambda value, r: value * (1.0 + r), initial=1.0))
        metrics = compute_metrics(curve, [0.0] * len(curve), [], SECONDS_PER_YEAR / bar_seconds)
        total_return, sharpe, max_drawdown = (
            _finite(metrics.total_return),
            _finite(metrics.sharpe),
            _finite(metrics.max_drawdown),
        )
    role: Role = points[0].role if points else ("live" if name == LIVE_MODEL else "shadow")
    agreement, compared = None, 0
    if role != "live":
        targets = _targets(marks)
        both = [
            (target, live_targets[key])
            for key, target in targets.items()
            if target is not None and live_targets.get(key) is not None
        ]
        compared = len(both)
        agree = sum(1 for a, b in both if b is not None and targets_agree(a, b))
        agreement = agree / compared if compared else None
    pnl = [t.realized_pnl for t in trades]
    return ModelFigures(
        model=name,
        role=role,
        total_return=total_return,
        sharpe=sharpe,
        max_drawdown=max_drawdown,
        trades=len(trades),
        win_rate=sum(1 for p in pnl if p > 0) / len(pnl) if pnl else None,
        realized_pnl=float(sum(pnl, Decimal(0))),
        agreement=agreement,
        agreement_compared=compared,
        marks=len(points),
        returns=len(returns),
        sessions=len({p.session for p in points}),
        bar_seconds=bar_seconds,
        periods_per_year=None if bar_seconds is None else SECONDS_PER_YEAR / bar_seconds,
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _row(f: ModelFigures) -> list[str]:
    return [
        f.model,
        f.role,
        _percent(f.total_return),
        "n/a" if f.sharpe is None else f"{f.sharpe:.3f}",
        _percent(f.max_drawdown),
        str(f.trades),
        _percent(f.win_rate),
        f"{f.realized_pnl:.2f}",
        "—" if f.role == "live" else _percent(f.agreement),
        str(f.marks),
    ]


def _paragraphs(figures: Sequence[ModelFigures], window: str) -> list[str]:
    spacings = sorted({f.bar_seconds for f in figures if f.bar_seconds is not None})
    measured = (
        ", ".join(f"{s:g} s ({SECONDS_PER_YEAR / s:g} bars a year)" for s in spacings)
        if spacings
        else "none (no two marks of a model in one session)"
    )
    return [
        f"Every model's book over the closes marked in {window} (UTC). Returns run between consecutive marks "
        "of a model within one daemon session (virtual books restart with the daemon, so no return spans a "
        "restart); total return compounds them and max drawdown is over the curve they compound to.",
        "Sharpe is mean / standard deviation (ddof 1) of the per-mark returns times the square root of the bars "
        "a year, with a bar the median spacing of the model's consecutive marks in a session and a 365-day year "
        f"(crypto trades 24/7); spacing measured: {measured}. Risk-free rate 0.",
        "Closed trades, win rate (share with P&L > 0) and realised P&L (after fees) count round trips closed in "
        "the window: the live bot's real ones, the shadows' virtual ones. Agreement with live is the share of "
        f"(close, symbol) where both the model and live asked for a target and the two are within "
        f"{AGREEMENT_TOLERANCE:g}. Marks counts closes.",
    ]
