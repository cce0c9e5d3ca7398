"""A daemon's ledger read as a run: its closed trades and equity snapshots over a time window, as frames and metrics.

The frames have the run directories' shape (`monitoring.runs`), so the same trade analytics and report sections
apply: one row per closed round trip (``pnl`` after fees, ``costs`` = fees), and an equity series indexed by UTC
time. The metrics are `bot.evaluation.compute_metrics` over the equity snapshots:

- The curve is the last snapshot before the window (its opening equity), then every snapshot in it.
- A "bar" is one snapshot interval (the median spacing of the curve): it annualises Sharpe/Sortino and counts
  each trade's ``bars``. Exposure and turnover come from ``positions_value / equity`` at each snapshot.
- Win rate, profit factor and trade count are over the trades closed in the window (a trade still open at the
  end is not in the ledger's closed trades, so it is not counted).

With no snapshot the metrics are None (the trade statistics still stand). Torch-free: the daemon's daily report
uses this (DESIGN.md).
"""

from __future__ import annotations

import itertools
import math
import sqlite3
import statistics
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from adapters.types import Side
from bot.evaluation import SECONDS_PER_YEAR, EvaluationReport, Trade, compute_metrics
from bot.events import EquityEvent
from bot.ledger.schema import LedgerError
from bot.ledger.store import Ledger
from bot.ledger.types import ClosedTrade

DEFAULT_PERIOD_S = 3600.0
"""The bar length assumed when the window has fewer than two equity snapshots."""
TRADE_COLUMNS = (
    "direction",
    "entry_time",
    "exit_time",
    "entry_price",
    "exit_price",
    "bars",
    "pnl",
    "return_fraction",
    "costs",
    "is_open",
    "symbol",
    "side",
    "qty",
    "duration_seconds",
    "model_sha",
)
"""Columns of a ledger's trade frame: the run directories' trade columns, then the ledger's own."""


class LedgerReadError(RuntimeError):
    """The ledger cannot be read (missing file, not a SQLite database, not a ledger); the message says which."""


@dataclass(frozen=True)
class LedgerRun:
    """A ledger's trades and equity over [`since`, `until`), with the metrics the run directories hold."""

    location: str
    """The ledger URL."""
    since: datetime | None
    until: datetime | None
    trades: pd.DataFrame
    """One row per closed round trip (`TRADE_COLUMNS`), by close time."""
    equity: pd.Series
    """Equity (quote currency) indexed by UTC snapshot time; starts with the opening snapshot when there is one."""
    metrics: EvaluationReport | None
    """`bot.evaluation` figures over the equity curve and trades; None without an equity snapshot."""
    bot_ids: tuple[str, ...]
    """Bots whose snapshots the window holds."""

    def summary(self) -> dict[str, Any]:
        """Return the run-directory summary shape: ``{"test": {"policy": metrics}}`` (empty without metrics)."""
        return {} if self.metrics is None else {"test": {"policy": self.metrics.to_dict()}}

    def window(self) -> str:
        """Return the window as text: ``2024-05-01T00:00:00+00:00 .. 2024-05-02T00:00:00+00:00``."""
        start = "start" if self.since is None else self.since.isoformat()
        end = "now" if self.until is None else self.until.isoformat()
        return f"{start} .. {end}"


def ledger_url(path_or_url: str | Path) -> str:
    """Return the database URL of a ledger path (a SQLite file that must exist) or URL (``sqlite:///...``, ...)."""
    text = str(path_or_url)
    if "://" in text:
        return text
    path = Path(text).expanduser()
    if not path.is_file():
        raise LedgerReadError(
            f"ledger {text}: no such file (a daemon writes <ledger_dir>/<mode>.db, e.g. state/paper.db)"
        )
    return f"sqlite:///{path.resolve()}"


def open_ledger(path_or_url: str | Path) -> Ledger:
    """Open an existing ledger for reading; LedgerReadError when it is missing, corrupt or not a ledger."""
    url = ledger_url(path_or_url)
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        _check_sqlite_ledger(Path(str(parsed.database)))
    try:
        return Ledger(url)
    except (sa.exc.SQLAlchemyError, LedgerError, sqlite3.Error) as e:
        raise LedgerReadError(f"ledger {path_or_url}: cannot be opened: {e}") from e


def _check_sqlite_ledger(path: Path) -> None:
    # Read-only probe first: opening with `Ledger` would create and migrate a stranger's file.
    if not path.is_file():
        raise LedgerReadError(f"ledger {path}: no such file")
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as e:
        raise LedgerReadError(f"ledger {path}: not a readable SQLite database ({e}); is the file corrupt?") from e
    if "schema_version" not in tables:
        raise LedgerReadError(f"ledger {path}: a SQLite database but not a ledger (no schema_version table)")


def read_ledger_run(ledger: Ledger, since: datetime | None = None, until: datetime | None = None) -> LedgerRun:
    """Read the trades closed and the equity snapshots taken in [`since`, `until`) (UTC) as a run."""
    if since is not None and until is not None and until <= since:
        raise ValueError(f"the window's end must follow its start, was {since.isoformat()} .. {until.isoformat()}")
    try:
        closed = ledger.closed_trades(since=since, until=until)
        snapshots = ledger.equity_snapshots(since, until)
        opening = None if since is None else ledger.last_equity_before(since)
    except sa.exc.SQLAlchemyError as e:
        raise LedgerReadError(f"ledger {ledger.url}: cannot be read: {e}") from e
    curve = ([opening] if opening is not None else []) + snapshots
    period_s = _period_s(curve)
    trades = [_trade(t, period_s) for t in closed]
    frame = pd.DataFrame([_row(t, c) for t, c in zip(trades, closed, strict=True)], columns=list(TRADE_COLUMNS))
    equity = pd.Series(
        [float(s.equity) for s in curve],
        index=pd.DatetimeIndex([s.ts for s in curve], name="date"),
        dtype="float64",
        name="equity",
    )
    return LedgerRun(
        location=ledger.url,
        since=since,
        until=until,
        trades=frame,
        equity=equity,
        metrics=_metrics(curve, trades, period_s),
        bot_ids=tuple(sorted({s.bot_id for s in curve})),
    )


def _period_s(curve: list[EquityEvent]) -> float:
    gaps = [(b.ts - a.ts).total_seconds() for a, b in itertools.pairwise(curve)]
    gaps = [g for g in gaps if g > 0]
    return statistics.median(gaps) if gaps else DEFAULT_PERIOD_S


def _trade(trade: ClosedTrade, period_s: float) -> Trade:
    notional = float(trade.qty * trade.entry_price)
    pnl = float(trade.realized_pnl)
    return Trade(
        direction=1 if trade.side is Side.BUY else -1,
        entry_time=pd.Timestamp(trade.opened_at),
        exit_time=pd.Timestamp(trade.closed_at),
        entry_price=float(trade.entry_price),
        exit_price=float(trade.exit_price),
        bars=max(1, round(trade.duration_seconds / period_s)),
        pnl=pnl,
        return_fraction=pnl / notional if notional else math.nan,
        costs=float(trade.fees),
    )


def _row(trade: Trade, closed: ClosedTrade) -> dict[str, Any]:
    return {
        "direction": trade.direction,
        "entry_time": trade.entry_time,
        "exit_time": trade.exit_time,
        "entry_price": trade.entry_price,
        "exit_price": trade.exit_price,
        "bars": trade.bars,
        "pnl": trade.pnl,
        "return_fraction": trade.return_fraction,
        "costs": trade.costs,
        "is_open": False,
        "symbol": closed.symbol,
        "side": "long" if trade.direction > 0 else "short",
        "qty": float(closed.qty),
        "duration_seconds": closed.duration_seconds,
        "model_sha": closed.model_sha,
    }


def _metrics(curve: list[EquityEvent], trades: list[Trade], period_s: float) -> EvaluationReport | None:
    if not curve or any(s.equity <= 0 for s in curve):
        return None
    positions = [float(s.positions_value / s.equity) for s in curve]
    return compute_metrics(
        [float(s.equity) for s in curve],
        positions,
        trades,
        SECONDS_PER_YEAR / period_s,
        total_costs=sum((t.costs for t in trades), 0.0),
    )
