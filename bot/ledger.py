"""The ledger: orders, fills, positions, closed trades, equity, events and bot state, through SQLAlchemy Core.

SQLite in WAL mode by default (one database file per mode: ``paper.db``, ``live.db``); a PostgreSQL URL
works the same (only portable column types and DDL are used). Amounts and prices are stored as TEXT holding
the exact ``Decimal`` (never a float); timestamps as integer epoch milliseconds (UTC).

Durability. Every write method commits before it returns. SQLite runs in WAL mode with ``synchronous=NORMAL``
by default: a committed transaction is in the WAL file before the call returns, so it survives a ``kill -9`` or
any crash of the process (the done-when criterion), but the last commits may be lost if the *machine* loses
power. ``synchronous="FULL"`` also survives power loss, at one fsync per commit: measured on the shared build
machine (tests/benchmarks/bench_ledger_write.py) that costs ~4 ms at the median and ~8 ms at p99, which breaks
the 5 ms decision budget, whereas NORMAL costs ~0.1 ms at the median and ~4.5 ms at p99. A pre-send record
lost to a power cut is not silent either: reconciliation then finds the venue order the ledger lacks (open: it
refuses to trade; filled: its fills are recorded and reported as foreign fills with a warning). Choose FULL
with ``Ledger(url, synchronous="FULL")`` where fsync is fast.

Threads. The methods are synchronous and blocking. The async engine must call them off the event loop, from
one dedicated writer thread or with ``await asyncio.to_thread(ledger.method, ...)``; an in-process lock
serialises writers, so concurrent ``to_thread`` calls are safe. One process writes a ledger at a time; other
processes (dashboard, reports) may read it concurrently (WAL).

Schema. Tables and migrations live in :mod:`bot.ledger_schema`: ``schema_version`` records the migrations
applied; ``MIGRATIONS`` is the ordered list of migration functions and :class:`Ledger` applies the missing ones
when it opens a database, each in its own transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine

from adapters.types import (
    ClientOrderId,
    Fill,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    VenueOrderId,
    ms_from_utc,
    utc_from_ms,
)
from bot.events import EquityEvent, Event, TradeClosedEvent
from bot.ledger_schema import (
    SCHEMA_VERSION,
    LedgerError,
    Mode,
    Synchronous,
    bot_state,
    closed_trades,
    create_ledger_engine,
    default_ledger_url,
    equity_snapshots,
    events,
    fills,
    migrate,
    order_events,
    orders,
    positions,
)

__all__ = [
    "SCHEMA_VERSION",
    "ClosedTrade",
    "DuplicateOrderError",
    "FillResult",
    "Ledger",
    "LedgerError",
    "Mode",
    "Position",
    "StaleOrderState",
    "Synchronous",
    "Transition",
    "default_ledger_url",
    "split_symbol",
]

log = structlog.get_logger()

ZERO = Decimal(0)


class DuplicateOrderError(LedgerError):
    """An order with this client order id is already in the ledger: never reuse an id for a new order."""


class StaleOrderState(LedgerError):
    """An order was not in the state the caller expected (someone else changed it first)."""


@dataclass(frozen=True, slots=True)
class Position:
    """Net holding of one symbol as the ledger sees it, with its average entry price and realized result."""

    symbol: str
    amount: Decimal = ZERO
    """Signed base amount: > 0 long, < 0 short (net of fees charged in the base currency)."""
    average_entry_price: Decimal = ZERO
    """Average price of the open amount (0 when flat)."""
    realized_pnl: Decimal = ZERO
    """Realized profit of this symbol so far, after every fee, in the quote currency."""
    fees: Decimal = ZERO
    """Fees paid on this symbol so far, in the quote currency."""
    opened_at: datetime | None = None
    """First fill of the open round trip (None when flat)."""

    @property
    def is_flat(self) -> bool:
        """Whether nothing is held."""
        return self.amount == 0


@dataclass(frozen=True, slots=True)
class ClosedTrade:
    """One round trip from flat to flat (or to a flip), with its result after fees."""

    symbol: str
    side: Side
    qty: Decimal
    entry_price: Decimal
    exit_price: Decimal
    realized_pnl: Decimal
    fees: Decimal
    opened_at: datetime
    closed_at: datetime
    model_sha: str | None = None
    run_id: str | None = None

    @property
    def duration_seconds(self) -> float:
        """Seconds from the first entry fill to the closing fill."""
        return (self.closed_at - self.opened_at).total_seconds()

    def to_event(self, bot_id: str) -> TradeClosedEvent:
        """Return the `trade_closed` event for this trade."""
        return TradeClosedEvent(
            ts=self.closed_at,
            bot_id=bot_id,
            symbol=self.symbol,
            side=self.side,
            qty=self.qty,
            entry_price=self.entry_price,
            exit_price=self.exit_price,
            realized_pnl=self.realized_pnl,
            fees=self.fees,
            duration_seconds=self.duration_seconds,
            model_sha=self.model_sha,
            run_id=self.run_id,
        )


@dataclass(frozen=True, slots=True)
class FillResult:
    """What recording one fill did."""

    inserted: bool
    """False when the fill was already in the ledger (idempotent re-delivery)."""
    position: Position
    """The symbol's position after the fill."""
    closed_trade: ClosedTrade | None = None
    """The round trip this fill closed, if any."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One recorded change of an order's state."""

    client_order_id: ClientOrderId
    from_status: OrderStatus | None
    to_status: OrderStatus
    ts: datetime
    reason: str | None


def split_symbol(symbol: str) -> tuple[str, str]:
    """Return (base, quote) of a ccxt symbol such as BTC/USDT or BTC/USDT:USDT."""
    pair = symbol.split(":", 1)[0]
    base, sep, quote = pair.partition("/")
    if not sep or not base or not quote:
        raise ValueError(f"symbol must look like BASE/QUOTE, was {symbol!r}")
    return base, quote


def _ms(ts: datetime) -> int:
    return ms_from_utc(ts)


def _sign(value: Decimal) -> int:
    return (value > 0) - (value < 0)


# Built once: constructing `.values(...)` statements per call costs more CPU than the SQLite insert itself.
_INSERT_ORDER = sa.insert(orders)
_INSERT_ORDER_EVENT = sa.insert(order_events)


class Ledger:
    """The bot's durable record; every method is synchronous and commits before returning (see module doc)."""

    def __init__(self, url: str, *, synchronous: Synchronous = "NORMAL", run_id: str | None = None) -> None:
        """Open (creating and migrating as needed) the ledger at `url`."""
        self.url = url
        self.run_id = run_id
        self._engine = create_ledger_engine(url, synchronous=synchronous)
        self._lock = threading.RLock()
        with self._lock:
            self.version = migrate(self._engine)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for read-only queries by reports and dashboards)."""
        return self._engine

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------- orders

    def record_new_order(
        self,
        request: OrderRequest,
        *,
        ts: datetime,
        model_sha: str | None = None,
        sent: bool = False,
    ) -> None:
        """Write a new order durably, before it is sent; with `sent`, also mark it SENT in the same commit.

        Raises:
            DuplicateOrderError: the client order id is already in the ledger.
        """
        ts_ms = _ms(ts)
        status = OrderStatus.SENT if sent else OrderStatus.NEW
        try:
            with self._lock, self._engine.begin() as conn:
                conn.execute(
                    _INSERT_ORDER,
                    {
                        "client_order_id": request.client_order_id,
                        "symbol": request.symbol,
                        "side": request.side.value,
                        "type": request.type.value,
                        "amount": request.amount,
                        "price": request.price,
                        "status": status.value,
                        "filled": ZERO,
                        "fee": ZERO,
                        "created_at_ms": ts_ms,
                        "updated_at_ms": ts_ms,
                        "model_sha": model_sha,
                    },
                )
                transitions = [{"from_status": None, "to_status": OrderStatus.NEW.value}]
                if sent:
                    transitions.append({"from_status": OrderStatus.NEW.value, "to_status": OrderStatus.SENT.value})
                conn.execute(
                    _INSERT_ORDER_EVENT,
                    [dict(t, client_order_id=request.client_order_id, ts_ms=ts_ms, reason=None) for t in transitions],
                )
        except sa.exc.IntegrityError as e:
            raise DuplicateOrderError(
                f"record_new_order {request.symbol}: client_order_id={request.client_order_id} is already in the "
                "ledger; a new order needs a new id"
            ) from e

    def update_order(
        self,
        client_order_id: ClientOrderId,
        status: OrderStatus,
        *,
        ts: datetime,
        expected_from: OrderStatus | None = None,
        reason: str | None = None,
        venue_order_id: VenueOrderId | None = None,
        filled: Decimal | None = None,
        average_price: Decimal | None = None,
        fee: Decimal | None = None,
        fee_currency: str | None = None,
    ) -> OrderStatus:
        """Set an order's state (and fill figures) and record the transition; return the previous state.

        The state machine (which transitions are legal) lives in `bot.orders`; the ledger only refuses an update
        whose `expected_from` no longer holds (StaleOrderState) or whose order is unknown (LedgerError).
        """
        with self._lock, self._engine.begin() as conn:
            row = conn.execute(sa.select(orders.c.status).where(orders.c.client_order_id == client_order_id)).first()
            if row is None:
                raise LedgerError(f"update_order: client_order_id={client_order_id} is not in the ledger")
            previous = OrderStatus(row.status)
            if expected_from is not None and previous is not expected_from:
                raise StaleOrderState(
                    f"update_order {client_order_id}: expected state {expected_from.value}, ledger has {previous.value}"
                )
            values: dict[str, Any] = {"status": status.value, "updated_at_ms": _ms(ts)}
            if reason is not None:
                values["reason"] = reason
            if venue_order_id is not None:
                values["venue_order_id"] = venue_order_id
            if filled is not None:
                values["filled"] = filled
            if average_price is not None:
                values["average_price"] = average_price
            if fee is not None:
                values["fee"] = fee
            if fee_currency is not None:
                values["fee_currency"] = fee_currency
            conn.execute(sa.update(orders).where(orders.c.client_order_id == client_order_id).values(**values))
            conn.execute(
                sa.insert(order_events).values(
                    client_order_id=client_order_id,
                    ts_ms=_ms(ts),
                    from_status=previous.value,
                    to_status=status.value,
                    reason=reason,
                )
            )
        return previous

    def get_order(self, client_order_id: ClientOrderId) -> Order | None:
        """Return the ledger's view of one order, or None."""
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(orders).where(orders.c.client_order_id == client_order_id)).first()
        return None if row is None else _order_from_row(row)

    def order_model_sha(self, client_order_id: ClientOrderId) -> str | None:
        """Return the model sha recorded with an order."""
        with self._engine.connect() as conn:
            value = conn.execute(
                sa.select(orders.c.model_sha).where(orders.c.client_order_id == client_order_id)
            ).scalar()
        return None if value is None else str(value)

    def order_reason(self, client_order_id: ClientOrderId) -> str | None:
        """Return the last reason recorded for an order's state."""
        with self._engine.connect() as conn:
            value = conn.execute(sa.select(orders.c.reason).where(orders.c.client_order_id == client_order_id)).scalar()
        return None if value is None else str(value)

    def orders(self, statuses: Collection[OrderStatus] | None = None, symbol: str | None = None) -> list[Order]:
        """Return orders (optionally only in `statuses` / of `symbol`), oldest first."""
        query = sa.select(orders).order_by(orders.c.created_at_ms, orders.c.client_order_id)
        if statuses is not None:
            query = query.where(orders.c.status.in_([s.value for s in statuses]))
        if symbol is not None:
            query = query.where(orders.c.symbol == symbol)
        with self._engine.connect() as conn:
            return [_order_from_row(row) for row in conn.execute(query)]

    def transitions(self, client_order_id: ClientOrderId) -> list[Transition]:
        """Return an order's recorded state changes in order."""
        query = (
            sa.select(order_events).where(order_events.c.client_order_id == client_order_id).order_by(order_events.c.id)
        )
        with self._engine.connect() as conn:
            return [
                Transition(
                    client_order_id=ClientOrderId(row.client_order_id),
                    from_status=None if row.from_status is None else OrderStatus(row.from_status),
                    to_status=OrderStatus(row.to_status),
                    ts=utc_from_ms(row.ts_ms),
                    reason=row.reason,
                )
                for row in conn.execute(query)
            ]

    # ------------------------------------------------------------------------------------- fills and positions

    def record_fill(self, fill: Fill) -> FillResult:
        """Record a fill once (a re-delivered trade id changes nothing) and update the symbol's position."""
        base, quote = split_symbol(fill.symbol)
        with self._lock, self._engine.begin() as conn:
            seen = conn.execute(
                sa.select(fills.c.id).where(fills.c.symbol == fill.symbol, fills.c.trade_id == fill.trade_id)
            ).first()
            if seen is not None:
                return FillResult(inserted=False, position=self._position(conn, fill.symbol))
            conn.execute(
                sa.insert(fills).values(
                    trade_id=fill.trade_id,
                    client_order_id=fill.client_order_id,
                    venue_order_id=fill.venue_order_id,
                    symbol=fill.symbol,
                    side=fill.side.value,
                    amount=fill.amount,
                    price=fill.price,
                    fee=fill.fee,
                    fee_currency=fill.fee_currency,
                    ts_ms=_ms(fill.timestamp),
                    requested_price=fill.requested_price,
                    is_maker=fill.is_maker,
                )
            )
            model_sha = conn.execute(
                sa.select(orders.c.model_sha).where(orders.c.client_order_id == fill.client_order_id)
            ).scalar()
            position, closed = self._apply_fill(conn, fill, base, quote, model_sha)
        return FillResult(inserted=True, position=position, closed_trade=closed)

    def _apply_fill(
        self, conn: Connection, fill: Fill, base: str, quote: str, model_sha: str | None
    ) -> tuple[Position, ClosedTrade | None]:
        # A fee in the base currency changes the holding (Binance charges buys in the bought coin): the
        # position tracks net base held, and the fee is valued at the fill price for PnL.
        fee_base = fill.fee if fill.fee_currency == base else ZERO
        if fill.fee_currency == quote:
            fee_quote = fill.fee
        elif fill.fee_currency == base:
            fee_quote = fill.fee * fill.price
        else:
            # A fee in a third currency (e.g. BNB) cannot be valued here without its price; it is recorded with
            # the fill but not deducted from PnL.
            log.warning("fill_fee_not_valued", symbol=fill.symbol, trade_id=fill.trade_id, currency=fill.fee_currency)
            fee_quote = ZERO
        qty = fill.side.sign * fill.amount - fee_base
        price = fill.price
        ts_ms = _ms(fill.timestamp)

        row = conn.execute(sa.select(positions).where(positions.c.symbol == fill.symbol)).first()
        if row is None:
            state: dict[str, Any] = {
                "amount": ZERO,
                "average_entry_price": ZERO,
                "realized_pnl": ZERO,
                "fees": ZERO,
                "opened_at_ms": None,
                "trip_fees": ZERO,
                "trip_closed_qty": ZERO,
                "trip_exit_notional": ZERO,
                "trip_gross_pnl": ZERO,
            }
        else:
            state = {
                k: getattr(row, k)
                for k in (
                    "amount",
                    "average_entry_price",
                    "realized_pnl",
                    "fees",
                    "opened_at_ms",
                    "trip_fees",
                    "trip_closed_qty",
                    "trip_exit_notional",
                    "trip_gross_pnl",
                )
            }
        held: Decimal = state["amount"]
        state["fees"] += fee_quote
        state["realized_pnl"] -= fee_quote
        closed: ClosedTrade | None = None
        if qty == 0:
            state["trip_fees"] += fee_quote
        elif held == 0 or _sign(held) == _sign(qty):
            new = held + qty
            if held == 0:
                state.update(
                    opened_at_ms=ts_ms,
                    trip_fees=ZERO,
                    trip_closed_qty=ZERO,
                    trip_exit_notional=ZERO,
                    trip_gross_pnl=ZERO,
                    average_entry_price=ZERO,
                )
            state["average_entry_price"] = (abs(held) * state["average_entry_price"] + abs(qty) * price) / abs(new)
            state["trip_fees"] += fee_quote
            state["amount"] = new
        else:
            closing = min(abs(qty), abs(held))
            closing_fee = fee_quote * closing / abs(qty)
            gross = closing * (price - state["average_entry_price"]) * _sign(held)
            state["realized_pnl"] += gross
            state["trip_gross_pnl"] += gross
            state["trip_fees"] += closing_fee
            state["trip_closed_qty"] += closing
            state["trip_exit_notional"] += closing * price
            new = held + qty
            if new == 0 or _sign(new) != _sign(held):
                closed = ClosedTrade(
                    symbol=fill.symbol,
                    side=Side.BUY if held > 0 else Side.SELL,
                    qty=state["trip_closed_qty"],
                    entry_price=state["average_entry_price"],
                    exit_price=state["trip_exit_notional"] / state["trip_closed_qty"],
                    realized_pnl=state["trip_gross_pnl"] - state["trip_fees"],
                    fees=state["trip_fees"],
                    opened_at=utc_from_ms(state["opened_at_ms"] if state["opened_at_ms"] is not None else ts_ms),
                    closed_at=fill.timestamp,
                    model_sha=model_sha,
                    run_id=self.run_id,
                )
                state.update(trip_fees=ZERO, trip_closed_qty=ZERO, trip_exit_notional=ZERO, trip_gross_pnl=ZERO)
                if new == 0:
                    state.update(average_entry_price=ZERO, opened_at_ms=None)
                else:  # flipped: the rest opens a new round trip at this fill's price
                    state.update(average_entry_price=price, opened_at_ms=ts_ms, trip_fees=fee_quote - closing_fee)
            state["amount"] = new
        state["updated_at_ms"] = ts_ms
        if row is None:
            conn.execute(sa.insert(positions).values(symbol=fill.symbol, **state))
        else:
            conn.execute(sa.update(positions).where(positions.c.symbol == fill.symbol).values(**state))
        if closed is not None:
            conn.execute(
                sa.insert(closed_trades).values(
                    symbol=closed.symbol,
                    side=closed.side.value,
                    qty=closed.qty,
                    entry_price=closed.entry_price,
                    exit_price=closed.exit_price,
                    realized_pnl=closed.realized_pnl,
                    fees=closed.fees,
                    opened_at_ms=_ms(closed.opened_at),
                    closed_at_ms=_ms(closed.closed_at),
                    model_sha=closed.model_sha,
                    run_id=closed.run_id,
                )
            )
        return _position_from_state(fill.symbol, state), closed

    def fills(self, symbol: str | None = None, client_order_id: ClientOrderId | None = None) -> list[Fill]:
        """Return recorded fills in the order they were recorded."""
        query = sa.select(fills).order_by(fills.c.id)
        if symbol is not None:
            query = query.where(fills.c.symbol == symbol)
        if client_order_id is not None:
            query = query.where(fills.c.client_order_id == client_order_id)
        with self._engine.connect() as conn:
            return [_fill_from_row(row) for row in conn.execute(query)]

    def filled_by_fills(self, client_order_id: ClientOrderId) -> Decimal:
        """Return the amount of an order covered by recorded fills."""
        return sum((f.amount for f in self.fills(client_order_id=client_order_id)), ZERO)

    def last_fill_time(self, symbol: str) -> datetime | None:
        """Return the timestamp of the latest recorded fill of `symbol`."""
        with self._engine.connect() as conn:
            value = conn.execute(sa.select(sa.func.max(fills.c.ts_ms)).where(fills.c.symbol == symbol)).scalar()
        return None if value is None else utc_from_ms(int(value))

    def position(self, symbol: str) -> Position:
        """Return the ledger's position in `symbol` (flat if never traded)."""
        with self._engine.connect() as conn:
            return self._position(conn, symbol)

    def _position(self, conn: Connection, symbol: str) -> Position:
        row = conn.execute(sa.select(positions).where(positions.c.symbol == symbol)).first()
        if row is None:
            return Position(symbol)
        return _position_from_state(symbol, dict(row._mapping))

    def positions(self) -> dict[str, Position]:
        """Return every position the ledger has seen, by symbol."""
        with self._engine.connect() as conn:
            rows = list(conn.execute(sa.select(positions).order_by(positions.c.symbol)))
        return {row.symbol: _position_from_state(row.symbol, dict(row._mapping)) for row in rows}

    def currency_flows(self, symbols: Collection[str] | None = None) -> dict[str, Decimal]:
        """Return, per currency, what all recorded fills added to (or took from) the account's balances."""
        flows: dict[str, Decimal] = {}
        for fill in self.fills():
            if symbols is not None and fill.symbol not in symbols:
                continue
            base, quote = split_symbol(fill.symbol)
            flows[base] = flows.get(base, ZERO) + fill.side.sign * fill.amount
            flows[quote] = flows.get(quote, ZERO) - fill.side.sign * fill.amount * fill.price
            flows[fill.fee_currency] = flows.get(fill.fee_currency, ZERO) - fill.fee
        return flows

    def closed_trades(self, symbol: str | None = None) -> list[ClosedTrade]:
        """Return closed round trips, oldest first."""
        query = sa.select(closed_trades).order_by(closed_trades.c.id)
        if symbol is not None:
            query = query.where(closed_trades.c.symbol == symbol)
        with self._engine.connect() as conn:
            return [
                ClosedTrade(
                    symbol=row.symbol,
                    side=Side(row.side),
                    qty=row.qty,
                    entry_price=row.entry_price,
                    exit_price=row.exit_price,
                    realized_pnl=row.realized_pnl,
                    fees=row.fees,
                    opened_at=utc_from_ms(row.opened_at_ms),
                    closed_at=utc_from_ms(row.closed_at_ms),
                    model_sha=row.model_sha,
                    run_id=row.run_id,
                )
                for row in conn.execute(query)
            ]

    # ------------------------------------------------------------------------------------- equity, events, state

    def record_equity(self, snapshot: EquityEvent) -> None:
        """Store one equity snapshot."""
        with self._lock, self._engine.begin() as conn:
            conn.execute(
                sa.insert(equity_snapshots).values(
                    ts_ms=_ms(snapshot.ts),
                    bot_id=snapshot.bot_id,
                    equity=snapshot.equity,
                    cash=snapshot.cash,
                    positions_value=snapshot.positions_value,
                    realized_pnl=snapshot.realized_pnl,
                    unrealized_pnl=snapshot.unrealized_pnl,
                    drawdown=snapshot.drawdown,
                )
            )

    def equity_snapshots(self, since: datetime | None = None) -> list[EquityEvent]:
        """Return equity snapshots (from `since`), oldest first."""
        query = sa.select(equity_snapshots).order_by(equity_snapshots.c.ts_ms, equity_snapshots.c.id)
        if since is not None:
            query = query.where(equity_snapshots.c.ts_ms >= _ms(since))
        with self._engine.connect() as conn:
            return [
                EquityEvent(
                    ts=utc_from_ms(row.ts_ms),
                    bot_id=row.bot_id,
                    equity=row.equity,
                    cash=row.cash,
                    positions_value=row.positions_value,
                    realized_pnl=row.realized_pnl,
                    unrealized_pnl=row.unrealized_pnl,
                    drawdown=float(row.drawdown),
                )
                for row in conn.execute(query)
            ]

    def record_event(self, event: Event) -> None:
        """Append an event (its JSON) to the event journal."""
        with self._lock, self._engine.begin() as conn:
            conn.execute(sa.insert(events).values(ts_ms=_ms(event.ts), type=event.type, payload=event.to_json()))

    def event_payloads(self, type_: str | None = None) -> list[str]:
        """Return the JSON of journalled events (of one type), oldest first."""
        query = sa.select(events.c.payload).order_by(events.c.id)
        if type_ is not None:
            query = query.where(events.c.type == type_)
        with self._engine.connect() as conn:
            return [str(p) for p in conn.execute(query).scalars()]

    def get_state(self, key: str) -> str | None:
        """Return one bot-state value, or None."""
        with self._engine.connect() as conn:
            value = conn.execute(sa.select(bot_state.c.value).where(bot_state.c.key == key)).scalar()
        return None if value is None else str(value)

    def set_state(self, key: str, value: str, *, ts: datetime | None = None) -> None:
        """Set one bot-state value durably."""
        self.set_states({key: value}, ts=ts)

    def set_states(self, values: Mapping[str, str], *, ts: datetime | None = None) -> None:
        """Set several bot-state values in one transaction."""
        stamp = _ms(ts or datetime.now(UTC))
        with self._lock, self._engine.begin() as conn:
            for key, value in values.items():
                updated = conn.execute(
                    sa.update(bot_state).where(bot_state.c.key == key).values(value=value, updated_at_ms=stamp)
                ).rowcount
                if not updated:
                    conn.execute(sa.insert(bot_state).values(key=key, value=value, updated_at_ms=stamp))

    def state(self, prefix: str = "") -> dict[str, str]:
        """Return bot-state values whose key starts with `prefix`."""
        query = sa.select(bot_state.c.key, bot_state.c.value).where(bot_state.c.key.startswith(prefix, autoescape=True))
        with self._engine.connect() as conn:
            return {row.key: row.value for row in conn.execute(query)}


def _order_from_row(row: Any) -> Order:
    return Order(
        client_order_id=ClientOrderId(row.client_order_id),
        symbol=row.symbol,
        side=Side(row.side),
        type=OrderType(row.type),
        amount=row.amount,
        status=OrderStatus(row.status),
        price=row.price,
        venue_order_id=None if row.venue_order_id is None else VenueOrderId(row.venue_order_id),
        filled=row.filled,
        average_price=row.average_price,
        fee=row.fee,
        fee_currency=row.fee_currency,
        created_at=utc_from_ms(row.created_at_ms),
        updated_at=utc_from_ms(row.updated_at_ms),
    )


def _fill_from_row(row: Any) -> Fill:
    return Fill(
        trade_id=row.trade_id,
        client_order_id=ClientOrderId(row.client_order_id),
        symbol=row.symbol,
        side=Side(row.side),
        amount=row.amount,
        price=row.price,
        fee=row.fee,
        fee_currency=row.fee_currency,
        timestamp=utc_from_ms(row.ts_ms),
        venue_order_id=None if row.venue_order_id is None else VenueOrderId(row.venue_order_id),
        requested_price=row.requested_price,
        is_maker=bool(row.is_maker),
    )


def _position_from_state(symbol: str, state: Mapping[str, Any]) -> Position:
    opened = state["opened_at_ms"]
    return Position(
        symbol=symbol,
        amount=state["amount"],
        average_entry_price=state["average_entry_price"],
        realized_pnl=state["realized_pnl"],
        fees=state["fees"],
        opened_at=None if opened is None else utc_from_ms(int(opened)),
    )
