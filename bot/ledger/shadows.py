"""The ledger's record of shadow models (`bot.shadow`): would-be orders, round trips, and every model's marks.

Shadow rows live in tables of their own (`shadow_orders`, `shadow_trades`), never beside the bot's orders, so
reconciliation, the bot's book and its reports cannot mistake a virtual order for a real one. `model_marks` holds,
at each close, every model's target and book equity (the live policy's as ``role="live"``): the live-vs-shadow
report (`monitoring.reports.shadows`) compares models on those rows. ``session`` is when the daemon (and so the
shadows' virtual books) started: returns are compared within a session, never across a restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal

import sqlalchemy as sa

from adapters.types import Order, OrderStatus, ms_from_utc, utc_from_ms
from bot.ledger.schema import model_marks, shadow_orders, shadow_trades, within
from bot.ledger.store import Ledger
from bot.ledger.types import CLOSED_TRADE_ROWS, ClosedTrade

Role = Literal["live", "shadow"]

LIVE_MODEL = "live"
"""The live policy's model name in the marks (no shadow may take it)."""

AGREEMENT_TOLERANCE = 1e-9
"""Two models' targets closer than this are the same decision (the shadows' agreement and the report's)."""


def targets_agree(a: float, b: float) -> bool:
    """Whether two targets are the same decision."""
    return abs(a - b) <= AGREEMENT_TOLERANCE


@dataclass(frozen=True, slots=True)
class ModelMark:
    """One model's decision and book at one close."""

    ts: datetime
    """The close."""
    session: datetime
    """When the daemon started (the virtual books began)."""
    model: str
    """The model's name: ``live`` for the live policy, else the shadow's name."""
    role: Role
    """live or shadow."""
    symbol: str
    """The symbol decided."""
    sha256: str
    """The model's sha256."""
    target: float | None
    """The target position the model asked for (None while its features warm up)."""
    equity: Decimal
    """Its book's equity at the close (account currency)."""


@dataclass(frozen=True, slots=True)
class ShadowOrder:
    """A would-be order of a shadow model as its virtual book holds it."""

    model: str
    order: Order
    model_sha: str | None = None


@dataclass(frozen=True, slots=True)
class ShadowTrade:
    """A closed round trip of a shadow model's virtual book."""

    model: str
    trade: ClosedTrade


@dataclass
class ShadowRecords:
    """What the shadows did at one close (or a few), written in one transaction."""

    orders: list[ShadowOrder] = field(default_factory=list)
    trades: list[ShadowTrade] = field(default_factory=list)
    marks: list[ModelMark] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.orders or self.trades or self.marks)

    def extend(self, other: ShadowRecords) -> None:
        """Append `other`'s rows."""
        self.orders += other.orders
        self.trades += other.trades
        self.marks += other.marks


def record_shadow(ledger: Ledger, records: ShadowRecords) -> None:
    """Write `records` in one transaction: orders upserted by (model, id), trades and marks appended."""
    with ledger.transaction() as conn:
        for item in records.orders:
            order = item.order
            changed = order.updated_at or order.created_at
            stamp = ms_from_utc(changed) if changed is not None else 0
            values = {
                "symbol": order.symbol,
                "side": order.side.value,
                "amount": order.amount,
                "status": order.status.value,
                "filled": order.filled,
                "average_price": order.average_price,
                "fee": order.fee or Decimal(0),
                "updated_at_ms": stamp,
                "model_sha": item.model_sha,
            }
            updated = conn.execute(
                sa.update(shadow_orders)
                .where(shadow_orders.c.model == item.model, shadow_orders.c.client_order_id == order.client_order_id)
                .values(**values)
            ).rowcount
            if not updated:
                created = ms_from_utc(order.created_at) if order.created_at else stamp
                conn.execute(
                    sa.insert(shadow_orders).values(
                        model=item.model, client_order_id=order.client_order_id, created_at_ms=created, **values
                    )
                )
        if records.trades:
            conn.execute(
                sa.insert(shadow_trades),
                [{"model": t.model, **CLOSED_TRADE_ROWS.row(t.trade)} for t in records.trades],
            )
        if records.marks:
            conn.execute(
                sa.insert(model_marks),
                [
                    {
                        "ts_ms": ms_from_utc(m.ts),
                        "session_ms": ms_from_utc(m.session),
                        "model": m.model,
                        "role": m.role,
                        "symbol": m.symbol,
                        "sha256": m.sha256,
                        "target": m.target,
                        "equity": m.equity,
                    }
                    for m in records.marks
                ],
            )


def shadow_order_rows(ledger: Ledger, model: str | None = None) -> list[tuple[str, str, str, OrderStatus, Decimal]]:
    """Return (model, client order id, side, status, filled) of the shadows' would-be orders, oldest first."""
    query = sa.select(shadow_orders).order_by(shadow_orders.c.created_at_ms, shadow_orders.c.client_order_id)
    if model is not None:
        query = query.where(shadow_orders.c.model == model)
    with ledger.reader() as conn:
        return [
            (row.model, row.client_order_id, row.side, OrderStatus(row.status), row.filled)
            for row in conn.execute(query)
        ]


def shadow_trade_rows(
    ledger: Ledger, model: str | None = None, *, since: datetime | None = None, until: datetime | None = None
) -> list[ShadowTrade]:
    """Return the shadows' closed round trips (closed in [`since`, `until`) when given), oldest first."""
    query = sa.select(shadow_trades).order_by(shadow_trades.c.id)
    if model is not None:
        query = query.where(shadow_trades.c.model == model)
    query = within(query, shadow_trades.c.closed_at_ms, since, until)
    with ledger.reader() as conn:
        return [ShadowTrade(row.model, CLOSED_TRADE_ROWS.from_row(row)) for row in conn.execute(query)]


def mark_rows(ledger: Ledger, *, since: datetime | None = None, until: datetime | None = None) -> list[ModelMark]:
    """Return every model's marks (at closes in [`since`, `until`) when given), in time order."""
    query = sa.select(model_marks).order_by(model_marks.c.ts_ms, model_marks.c.id)
    query = within(query, model_marks.c.ts_ms, since, until)
    with ledger.reader() as conn:
        return [
            ModelMark(
                ts=utc_from_ms(row.ts_ms),
                session=utc_from_ms(row.session_ms),
                model=row.model,
                role="live" if row.role == "live" else "shadow",
                symbol=row.symbol,
                sha256=row.sha256,
                target=row.target,
                equity=row.equity,
            )
            for row in conn.execute(query)
        ]


def models_in(marks: Sequence[ModelMark]) -> list[str]:
    """Return the model names of `marks`, live first, then shadows in order of first appearance."""
    names: list[str] = []
    for mark in sorted(marks, key=lambda m: m.role != "live"):
        if mark.model not in names:
            names.append(mark.model)
    return names
