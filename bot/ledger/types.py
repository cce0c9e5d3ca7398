"""What the ledger records and returns: positions, closed trades, fill results, transitions, and its errors.

Also the converters from its rows to the domain types (`adapters.types`).
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar

import sqlalchemy as sa

from adapters.types import (
    ClientOrderId,
    Fill,
    Order,
    OrderStatus,
    TradeResult,
    ms_from_utc,
    utc_from_ms,
)
from bot.events import EquityEvent, Event, RoundTrip, ShadowTradeClosedEvent, TradeClosedEvent, optional_inner
from bot.ledger import schema
from bot.ledger.schema import LedgerError

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
class ClosedTrade(TradeResult):
    """One round trip of the ledger: its result after fees (`TradeResult`), when it opened and closed, and the
    model that traded it."""

    opened_at: datetime
    closed_at: datetime
    model_sha: str | None = None
    run_id: str | None = None

    @property
    def duration_seconds(self) -> float:
        """Seconds from the first entry fill to the closing fill."""
        return (self.closed_at - self.opened_at).total_seconds()

    def _event_fields(self) -> dict[str, Any]:
        """The round trip's fields of the `trade_closed` and `shadow_trade_closed` events (`bot.events.RoundTrip`)."""
        fields = {name: getattr(self, name) for name in _ROUND_TRIP_FIELDS if name != "duration_seconds"}
        return {**fields, "duration_seconds": self.duration_seconds}

    def to_event(self, bot_id: str) -> TradeClosedEvent:
        """Return the `trade_closed` event for this trade."""
        return TradeClosedEvent(ts=self.closed_at, bot_id=bot_id, **self._event_fields())

    def to_shadow_event(self, bot_id: str, model: str) -> ShadowTradeClosedEvent:
        """Return the `shadow_trade_closed` event for this round trip of the shadow model `model`."""
        return ShadowTradeClosedEvent(ts=self.closed_at, bot_id=bot_id, model=model, **self._event_fields())


_ROUND_TRIP_FIELDS = tuple(
    f.name for f in dataclasses.fields(RoundTrip) if f.name not in {f.name for f in dataclasses.fields(Event)}
)
"""The fields an event of a round trip carries beyond `ts` and `bot_id`: the trade's own, and its duration."""


@dataclass(frozen=True, slots=True)
class FillResult:
    """What recording one fill did."""

    inserted: bool
    """False when the fill was already in the ledger (idempotent re-delivery)."""
    position: Position
    """The symbol's position after the fill."""
    closed_trade: ClosedTrade | None = None
    """The round trip this fill closed, if any."""
    own: bool = True
    """False for a fill of an order that is not the bot's (not in the ledger): it changes no position."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One recorded change of an order's state."""

    client_order_id: ClientOrderId
    from_status: OrderStatus | None
    to_status: OrderStatus
    ts: datetime
    reason: str | None


R = TypeVar("R")


class RecordRows(Generic[R]):
    """How one domain record and its table's rows map onto each other, derived from the record's declaration.

    A field `x` is the column `x`, except that a datetime is the column `x_ms` (ms since the epoch), an enum is
    stored as its value, and `renamed` names other columns; the table's other columns are not the record's.
    A field of the record that the table does not store must be named in `unstored` (a typo fails at import)."""

    def __init__(
        self,
        record: type[R],
        table: sa.Table,
        *,
        renamed: Mapping[str, str] | None = None,
        unstored: tuple[str, ...] = (),
    ) -> None:
        self.record = record
        hints = typing.get_type_hints(record)
        renamed = renamed or {}
        self._fields: list[tuple[str, str, Callable[[Any], Any] | None, Callable[[Any], Any] | None]] = []
        for f in dataclasses.fields(record):  # type: ignore[arg-type]
            if f.name in unstored:
                continue
            kind, optional = optional_inner(hints[f.name])
            column = renamed.get(f.name) or (f"{f.name}_ms" if kind is datetime else f.name)
            if column not in table.c:
                raise LedgerError(f"{record.__name__}.{f.name}: the table {table.name} has no column {column}")
            load, dump = _converters(kind)
            if optional and load is not None:
                load = _or_none(load)
                dump = _or_none(dump) if dump is not None else None
            self._fields.append((f.name, column, load, dump))

    def from_row(self, row: Any) -> R:
        """Return the record of a result row."""
        values = {}
        for name, column, load, _ in self._fields:
            value = getattr(row, column)
            values[name] = value if load is None else load(value)
        return self.record(**values)

    def row(self, record: R) -> dict[str, Any]:
        """Return the column values of `record`."""
        values = {}
        for name, column, _, dump in self._fields:
            value = getattr(record, name)
            values[column] = value if dump is None else dump(value)
        return values


def _converters(kind: Any) -> tuple[Callable[[Any], Any] | None, Callable[[Any], Any] | None]:
    """Return (row value -> field, field -> row value) of a field type; None where the value passes as it is
    (strings, ids, Decimals: `DecimalText` converts those)."""
    if kind is datetime:
        return (lambda ms: utc_from_ms(int(ms))), ms_from_utc
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind, _enum_value
    if kind is bool:
        return bool, None
    if kind is float:
        return float, None
    return None, None


def _enum_value(member: enum.Enum) -> Any:
    return member.value


def _or_none(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else convert(value)


ORDER_ROWS = RecordRows(Order, schema.orders)
"""`orders` rows as `Order`s (the table's reason and model_sha are the ledger's, not the venue's order's)."""
FILL_ROWS = RecordRows(Fill, schema.fills, renamed={"timestamp": "ts_ms"}, unstored=("fill_model_version",))
"""`fills` rows as `Fill`s."""
CLOSED_TRADE_ROWS = RecordRows(ClosedTrade, schema.closed_trades)
"""`closed_trades` (and, with their `model`, `shadow_trades`) rows as `ClosedTrade`s."""
EQUITY_ROWS = RecordRows(EquityEvent, schema.equity_snapshots, renamed={"ts": "ts_ms"})
"""`equity_snapshots` rows as the `equity` events they were taken from."""


def position_from_state(symbol: str, state: Mapping[str, Any]) -> Position:
    """Return the position of a `positions` row (or the state about to be written to one)."""
    opened = state["opened_at_ms"]
    return Position(
        symbol=symbol,
        amount=state["amount"],
        average_entry_price=state["average_entry_price"],
        realized_pnl=state["realized_pnl"],
        fees=state["fees"],
        opened_at=None if opened is None else utc_from_ms(int(opened)),
    )
