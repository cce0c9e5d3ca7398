"""ccxt payloads to domain types: orders, fills, markets, candles and timeframes, checked at the boundary.

Everything here takes ccxt's dicts and lists (`Any` stops here) and returns a type from adapters.types, or raises
DataError naming what was wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from adapters.errors import DataError
from adapters.types import (
    Candle,
    ClientOrderId,
    Fill,
    Market,
    Order,
    OrderStatus,
    OrderType,
    Side,
    VenueOrderId,
    timeframe_seconds,
    utc_from_ms,
)


def decimal_from_ccxt(value: Any, what: str) -> Decimal:
    """Return a ccxt number as a Decimal: floats via their shortest repr, so 0.1 stays 0.1."""
    if isinstance(value, bool) or value is None:
        raise DataError(f"{what}: expected a number, got {value!r}")
    try:
        result = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
    except InvalidOperation:
        raise DataError(f"{what}: not a number: {value!r}") from None
    if not result.is_finite():
        raise DataError(f"{what}: not a finite number: {value!r}")
    return result


def _decimal_or_none(value: Any, what: str) -> Decimal | None:
    return None if value is None else decimal_from_ccxt(value, what)


def timeframe_ms(timeframe: str) -> int:
    """Length of a ccxt timeframe (`1m`, `1h`, `1d`, ...) in milliseconds."""
    return timeframe_seconds(timeframe) * 1000


_CCXT_STATUS = {
    "closed": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELLED,
    "cancelled": OrderStatus.CANCELLED,
    "expired": OrderStatus.CANCELLED,
    "rejected": OrderStatus.REJECTED,
}
_CCXT_ORDER_TYPE = {"market": OrderType.MARKET, "limit": OrderType.LIMIT, "limit_maker": OrderType.LIMIT}


def order_from_ccxt(raw: Mapping[str, Any], *, client_order_id: ClientOrderId | None = None) -> Order:
    """Convert a ccxt order structure to an Order."""
    ident = raw.get("clientOrderId") or client_order_id
    what = f"order {ident or raw.get('id')}"
    if not ident:
        raise DataError(f"{what}: the venue reported no client order id")
    try:
        side = Side(str(raw.get("side")).lower())
        order_type = _CCXT_ORDER_TYPE[str(raw.get("type")).lower()]
    except (ValueError, KeyError):
        raise DataError(f"{what}: unsupported side/type {raw.get('side')!r}/{raw.get('type')!r}") from None
    filled = decimal_from_ccxt(raw.get("filled") or 0, f"{what} filled")
    ccxt_status = raw.get("status")
    if ccxt_status == "open":
        status = OrderStatus.PARTIALLY_FILLED if filled > 0 else OrderStatus.OPEN
    else:
        status = _CCXT_STATUS.get(str(ccxt_status), OrderStatus.UNKNOWN)
    fee = Decimal(0)
    fee_currency: str | None = None
    fees = raw.get("fees") or ([raw["fee"]] if raw.get("fee") else [])
    for item in fees:
        if item and item.get("cost") is not None:
            fee += decimal_from_ccxt(item["cost"], f"{what} fee")
            fee_currency = item.get("currency") or fee_currency
    timestamp = raw.get("timestamp")
    updated = raw.get("lastUpdateTimestamp") or raw.get("lastTradeTimestamp") or timestamp
    average = raw.get("average")
    return Order(
        client_order_id=ClientOrderId(str(ident)),
        symbol=str(raw.get("symbol")),
        side=side,
        type=order_type,
        amount=decimal_from_ccxt(raw.get("amount"), f"{what} amount"),
        status=status,
        price=_decimal_or_none(raw.get("price"), f"{what} price") if order_type is OrderType.LIMIT else None,
        venue_order_id=VenueOrderId(str(raw["id"])) if raw.get("id") is not None else None,
        filled=filled,
        average_price=decimal_from_ccxt(average, f"{what} average") if average else None,
        fee=fee,
        fee_currency=fee_currency,
        created_at=utc_from_ms(int(timestamp)) if timestamp else None,
        updated_at=utc_from_ms(int(updated)) if updated else None,
    )


def fill_from_ccxt(raw: Mapping[str, Any], client_order_id: ClientOrderId) -> Fill:
    """Convert a ccxt trade structure to a Fill."""
    what = f"trade {raw.get('id')}"
    fee = raw.get("fee") or {}
    timestamp = raw.get("timestamp")
    if timestamp is None:
        raise DataError(f"{what}: the venue reported no timestamp")
    try:
        side = Side(str(raw.get("side")).lower())
    except ValueError:
        raise DataError(f"{what}: unsupported side {raw.get('side')!r}") from None
    try:
        return Fill(
            trade_id=str(raw["id"]),
            client_order_id=client_order_id,
            symbol=str(raw.get("symbol")),
            side=side,
            amount=decimal_from_ccxt(raw.get("amount"), f"{what} amount"),
            price=decimal_from_ccxt(raw.get("price"), f"{what} price"),
            fee=decimal_from_ccxt(fee.get("cost") or 0, f"{what} fee"),
            fee_currency=str(fee.get("currency") or ""),
            timestamp=utc_from_ms(int(timestamp)),
            venue_order_id=VenueOrderId(str(raw["order"])) if raw.get("order") is not None else None,
            is_maker=raw.get("takerOrMaker") == "maker",
        )
    except ValueError as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{what}: {e}") from e


def market_from_ccxt(m: Mapping[str, Any], *, tick_size: bool) -> Market:
    """Convert a ccxt market structure to a Market; `tick_size` is whether its precision is a step, not digits."""
    symbol = str(m["symbol"])
    precision = m.get("precision") or {}
    limits = m.get("limits") or {}

    def step(value: Any, what: str) -> Decimal:
        if value is None:
            return Decimal(0)
        number = decimal_from_ccxt(value, f"market {symbol} {what}")
        # Exchanges in DECIMAL_PLACES mode give a digit count, not a step.
        return number if tick_size else Decimal(1).scaleb(-int(number))

    def limit(kind: str) -> Decimal:
        value = (limits.get(kind) or {}).get("min")
        return decimal_from_ccxt(value, f"market {symbol} min {kind}") if value is not None else Decimal(0)

    return Market(
        symbol=symbol,
        base=str(m["base"]),
        quote=str(m["quote"]),
        amount_step=step(precision.get("amount"), "amount precision"),
        price_step=step(precision.get("price"), "price precision"),
        min_amount=limit("amount"),
        min_notional=limit("cost"),
        maker_fee=decimal_from_ccxt(m["maker"], f"market {symbol} maker fee")
        if m.get("maker") is not None
        else Decimal("0.001"),
        taker_fee=decimal_from_ccxt(m["taker"], f"market {symbol} taker fee")
        if m.get("taker") is not None
        else Decimal("0.001"),
    )


def candle_from_row(row: list[Any], symbol: str, timeframe: str) -> Candle:
    """Convert a ccxt OHLCV row `[open_ms, open, high, low, close, volume]` to a Candle."""
    try:
        open_ms, o, h, low, c, v = (row[0], *(float(x) for x in row[1:6]))
        return Candle(
            symbol=symbol,
            timeframe=timeframe,
            open_time=utc_from_ms(int(open_ms)),
            open=o,
            high=h,
            low=low,
            close=c,
            volume=v,
        )
    except (TypeError, ValueError, IndexError) as e:
        raise DataError(f"candle {symbol} {timeframe} row {row!r}: {e}") from e
