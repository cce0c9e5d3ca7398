"""The dashboard's live view of a running daemon, read from its ledger while the daemon writes it.

``/live`` shows the latest equity snapshot, open positions, open orders, recent closed trades and the risk
manager's state (the ledger's ``bot_state`` rows ``risk.*``), and refreshes itself: its script fetches
``/api/live`` every ``interval_ms`` and updates the numbers, the tables and the equity chart's data source in
place. The ledger is read through `bot.ledger.store.Ledger` (SQLite in WAL mode lets this reader run beside the
daemon's writer); a ledger file that does not exist yet is waited for, not created.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
import structlog
from bokeh.models import ColumnDataSource
from flask import Flask, jsonify, request

from adapters.types import OrderStatus
from bot.ledger.schema import SCHEMA_VERSION, current_version
from bot.ledger.store import Ledger
from monitoring.dashboard.charts import embed_charts, figure_for
from monitoring.reports.ledger_run import LedgerReadError, ledger_url, open_ledger

log = structlog.get_logger()

EQUITY_POINTS = 500
"""Equity snapshots the chart shows (the latest ones)."""
RECENT_TRADES = 20
OPEN_STATUSES = tuple(s for s in OrderStatus if not s.is_final)
RISK_PREFIX = "risk."
DEFAULT_INTERVAL_MS = 2000


def _text(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _wait_for_schema(location: str) -> None:
    # The daemon creates and migrates its ledger when it starts; a reader that opened it meanwhile would run
    # the same migrations concurrently. Read the version without writing, and wait until it is complete.
    url = ledger_url(location)
    engine = sa.create_engine(url)
    try:
        version = current_version(engine)
    except sa.exc.SQLAlchemyError as e:
        raise LedgerReadError(f"ledger {location}: cannot be read: {e}") from e
    finally:
        engine.dispose()
    if version < SCHEMA_VERSION:
        raise LedgerReadError(
            f"ledger {location}: its daemon is still creating it (schema version {version} of {SCHEMA_VERSION})"
        )


class LiveLedger:
    """The ledger the live view reads, opened on first use (and retried until the daemon has created it)."""

    def __init__(self, path_or_url: str | None) -> None:
        self.location = path_or_url
        self._ledger: Ledger | None = None
        self._lock = threading.Lock()

    def _open(self) -> Ledger:
        with self._lock:
            if self._ledger is None:
                if self.location is None:
                    raise LedgerReadError(
                        "no ledger given: start the dashboard with --ledger state/paper.db "
                        "(the ledger a paper daemon writes)"
                    )
                _wait_for_schema(self.location)
                self._ledger = open_ledger(self.location)
            return self._ledger

    def close(self) -> None:
        """Release the ledger's connections."""
        with self._lock:
            if self._ledger is not None:
                self._ledger.close()
                self._ledger = None

    def snapshot(self) -> dict[str, Any]:
        """Return what the live page shows, as JSON-ready data; ``error`` says why when the ledger is unreadable."""
        try:
            ledger = self._open()
        except LedgerReadError as e:
            return {"ledger": self.location, "error": str(e)}
        curve = ledger.equity_snapshots()[-EQUITY_POINTS:]
        last = curve[-1] if curve else None
        risk = ledger.state(RISK_PREFIX)
        trades = ledger.closed_trades()
        return {
            "ledger": self.location,
            "error": None,
            "bot_id": None if last is None else last.bot_id,
            "updated": None if last is None else _time(last.ts),
            "equity": None
            if last is None
            else {
                "equity": _text(last.equity),
                "cash": _text(last.cash),
                "positions_value": _text(last.positions_value),
                "realized_pnl": _text(last.realized_pnl),
                "unrealized_pnl": _text(last.unrealized_pnl),
                "drawdown": last.drawdown,
            },
            "equity_curve": {
                "time": [s.ts.timestamp() * 1000 for s in curve],
                "equity": [float(s.equity) for s in curve],
            },
            "positions": [
                {
                    "symbol": p.symbol,
                    "amount": _text(p.amount),
                    "average_entry_price": _text(p.average_entry_price),
                    "realized_pnl": _text(p.realized_pnl),
                    "opened_at": _time(p.opened_at),
                }
                for p in ledger.positions().values()
                if not p.is_flat
            ],
            "open_orders": [
                {
                    "client_order_id": str(o.client_order_id),
                    "symbol": o.symbol,
                    "side": str(o.side),
                    "type": str(o.type),
                    "amount": _text(o.amount),
                    "filled": _text(o.filled),
                    "price": _text(o.price),
                    "status": str(o.status),
                }
                for o in ledger.orders(statuses=OPEN_STATUSES)
            ],
            "trade_count": len(trades),
            "recent_trades": [
                {
                    "symbol": t.symbol,
                    "side": str(t.side),
                    "qty": _text(t.qty),
                    "entry_price": _text(t.entry_price),
                    "exit_price": _text(t.exit_price),
                    "realized_pnl": _text(t.realized_pnl),
                    "closed_at": _time(t.closed_at),
                }
                for t in reversed(trades[-RECENT_TRADES:])
            ],
            "risk": {
                "state": risk.get(RISK_PREFIX + "state", "active (no risk event recorded)"),
                "reason": risk.get(RISK_PREFIX + "reason", ""),
                "peak_equity": risk.get(RISK_PREFIX + "peak_equity"),
                "day": risk.get(RISK_PREFIX + "day"),
                "day_start_equity": risk.get(RISK_PREFIX + "day_start_equity"),
            },
        }


def equity_source_chart(snapshot: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """Return the embed script and div of the live equity chart, its data source named ``live-equity``."""
    source = ColumnDataSource(data=snapshot.get("equity_curve") or {"time": [], "equity": []}, name="live-equity")
    chart = figure_for("Equity (latest snapshots)", x_axis_type="datetime", y_axis_label="equity")
    chart.line("time", "equity", source=source, line_width=2)
    chart.scatter("time", "equity", source=source, size=4)
    return embed_charts({"live-equity": chart})


def register_live(app: Flask, live: LiveLedger, page: Callable[..., Any]) -> None:
    """Add ``/live`` and ``/api/live`` to the dashboard app."""

    @app.get("/api/live")
    def api_live() -> Any:
        return jsonify(live.snapshot())

    @app.get("/live")
    def live_page() -> Any:
        snapshot = live.snapshot()
        interval_ms = max(100, request.args.get("interval_ms", DEFAULT_INTERVAL_MS, type=int))
        script, divs = equity_source_chart(snapshot)
        return page("live.html", "Live daemon", snapshot=snapshot, interval_ms=interval_ms, script=script, divs=divs)
