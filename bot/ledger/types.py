"""What the ledger records and returns: positions, closed trades, fill results, transitions, and its errors.

Also the converters from its rows to the domain types (`adapters.types`), and `split_symbol`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from adapters.types import (
    ClientOrderId,
    Fill,
    Order,
    OrderStatus,
    OrderType,
    Side,
    VenueOrderId,
    ms_from_utc,
    utc_from_ms,
)
from bot.events import Event, RoundTrip, ShadowTradeClosedEvent, TradeClosedEvent
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


@functools.lru_cache(maxsize=1024)
def split_symbol(symbol: str) -> tuple[str, str]:
    """Return (base, quote) of a ccxt symbol such as BTC/USDT or BTC/USDT:USDT (cached: called per candle)."""
    pair = symbol.split(":", 1)[0]
    base, sep, quote = pair.partition("/")
    if not sep or not base or not quote:
        raise ValueError(f"symbol must look like BASE/QUOTE, was {symbol!r}")
    return base, quote


def order_from_row(row: Any) -> Order:
    """Return the order of an `orders` row."""
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


def closed_trade_row(trade: ClosedTrade) -> dict[str, Any]:
    """Return the column values of a `closed_trades` (or, with its `model`, `shadow_trades`) row for `trade`."""
    return {
        "symbol": trade.symbol,
        "side": trade.side.value,
        "qty": trade.qty,
        "entry_price": trade.entry_price,
        "exit_price": trade.exit_price,
        "realized_pnl": trade.realized_pnl,
        "fees": trade.fees,
        "opened_at_ms": ms_from_utc(trade.opened_at),
        "closed_at_ms": ms_from_utc(trade.closed_at),
        "model_sha": trade.model_sha,
        "run_id": trade.run_id,
    }


def closed_trade_from_row(row: Any) -> ClosedTrade:
    """Return the round trip of a `closed_trades` (or `shadow_trades`) row."""
    return ClosedTrade(
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


def fill_from_row(row: Any) -> Fill:
    """Return the fill of a `fills` row."""
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
