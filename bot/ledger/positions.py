"""Position accounting of the ledger: how one fill changes a symbol's position, realized PnL and round trip.

A fee in the base currency changes the holding; a fee in the quote is deducted from PnL; a fee in a third
currency is recorded with the fill but not deducted (it cannot be valued without its price). A fill that brings
a position to flat, or flips it, closes the round trip (`ClosedTrade`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Executable

from adapters.types import Fill, Side, ms_from_utc, utc_from_ms
from bot.ledger.schema import closed_trades, positions
from bot.ledger.types import CLOSED_TRADE_ROWS, ClosedTrade, Position, position_from_state

log = structlog.get_logger()

ZERO = Decimal(0)

# Built once, with bound parameters (see bot.ledger.store: building statements per fill cost more than running them).
POSITION_BY_SYMBOL = sa.select(positions).where(positions.c.symbol == sa.bindparam("b_symbol"))
_INSERT_POSITION = sa.insert(positions)
_UPDATE_POSITION = sa.update(positions).where(positions.c.symbol == sa.bindparam("b_symbol"))
_INSERT_CLOSED_TRADE = sa.insert(closed_trades)

StatementRunner = Callable[[Connection, Executable, Mapping[str, Any]], Any]
"""Runs a prebuilt statement with its parameters in the connection's transaction (`Ledger._first`: its first row;
`Ledger._execute`: the rows it changed)."""


def _sign(value: Decimal) -> int:
    return (value > 0) - (value < 0)


def empty_position_state() -> dict[str, Any]:
    """Return the accounting state of a flat position that never traded (the columns of `positions`)."""
    return {
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


_STATE_KEYS = tuple(empty_position_state())


def position_change(fill: Fill, base: str) -> Decimal:
    """Return what `fill` changes a position by, in the base currency: signed by its side, net of a fee charged in
    the base currency (Binance charges buys in the bought coin), so that the position is the net base held."""
    return fill.side.sign * fill.amount - (fill.fee if fill.fee_currency == base else ZERO)


def advance_position(
    state: dict[str, Any], fill: Fill, base: str, quote: str, model_sha: str | None, run_id: str | None
) -> ClosedTrade | None:
    """Apply `fill` to a symbol's accounting `state` in place; return the round trip it closed, if any.

    The one position accounting of the project: the ledger's (`apply_fill`) and the shadow models' virtual books
    (`bot.shadow`) both run it.
    """
    # A fee in the base currency changes the holding (`position_change`) and is valued at the fill price for PnL.
    if fill.fee_currency == quote:
        fee_quote = fill.fee
    elif fill.fee_currency == base:
        fee_quote = fill.fee * fill.price
    else:
        # A fee in a third currency (e.g. BNB) cannot be valued here without its price; it is recorded with
        # the fill but not deducted from PnL.
        log.warning("fill_fee_not_valued", symbol=fill.symbol, trade_id=fill.trade_id, currency=fill.fee_currency)
        fee_quote = ZERO
    qty = position_change(fill, base)
    price = fill.price
    ts_ms = ms_from_utc(fill.timestamp)
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
                run_id=run_id,
            )
            state.update(trip_fees=ZERO, trip_closed_qty=ZERO, trip_exit_notional=ZERO, trip_gross_pnl=ZERO)
            if new == 0:
                state.update(average_entry_price=ZERO, opened_at_ms=None)
            else:  # flipped: the rest opens a new round trip at this fill's price
                state.update(average_entry_price=price, opened_at_ms=ts_ms, trip_fees=fee_quote - closing_fee)
        state["amount"] = new
    state["updated_at_ms"] = ts_ms
    return closed


def apply_fill(
    conn: Connection,
    fill: Fill,
    base: str,
    quote: str,
    model_sha: str | None,
    run_id: str | None,
    *,
    first: StatementRunner,
    execute: StatementRunner,
) -> tuple[Position, ClosedTrade | None]:
    """Update the position of `fill`'s symbol in `conn`'s transaction; return it and the round trip it closed.

    The statements run through the ledger's `first` and `execute` (SQLite's own cursor where the ledger can use it:
    a fill's position update cost ~120 µs through SQLAlchemy's per-call machinery)."""
    row = first(conn, POSITION_BY_SYMBOL, {"b_symbol": fill.symbol})
    state = empty_position_state() if row is None else {k: getattr(row, k) for k in _STATE_KEYS}
    closed = advance_position(state, fill, base, quote, model_sha, run_id)
    if row is None:
        execute(conn, _INSERT_POSITION, {"symbol": fill.symbol, **state})
    else:
        execute(conn, _UPDATE_POSITION, {"b_symbol": fill.symbol, **state})
    if closed is not None:
        execute(conn, _INSERT_CLOSED_TRADE, CLOSED_TRADE_ROWS.row(closed))
    return position_from_state(fill.symbol, state), closed
