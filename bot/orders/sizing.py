"""Order ids and sizing: fresh client order ids, and the order that moves a position to its target."""

from __future__ import annotations

import itertools
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from adapters.errors import InvalidOrder
from adapters.types import ClientOrderId, Market, OrderRequest, OrderType, Side, ms_from_utc

ZERO = Decimal(0)

_ID_COUNTER = itertools.count(1)
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9]")
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _BASE36[r] + out
        if not n:
            return out


def new_client_order_id(bot_id: str, symbol: str, *, now: datetime | None = None) -> ClientOrderId:
    """Return a fresh client order id: bot, symbol, time, a process counter and random bits (≤ 36 chars).

    Unique across restarts (time + random) and within a process (the counter), and made of letters, digits
    and dashes only, which every exchange accepts (Binance: ``^[.A-Z:/a-z0-9_-]{1,36}$``).
    """
    bot = _ID_UNSAFE.sub("", bot_id)[:6] or "bot"
    sym = _ID_UNSAFE.sub("", symbol)[:8].lower() or "sym"
    ts_ms = ms_from_utc(now) if now is not None else time.time_ns() // 1_000_000
    counter = _base36(next(_ID_COUNTER) % 36**4)
    return ClientOrderId(f"{bot}-{sym}-{_base36(ts_ms)}{counter}-{os.urandom(3).hex()}")


@dataclass(frozen=True, slots=True)
class OrderPlan:
    """The order that moves a position to its target, or why there is none."""

    request: OrderRequest | None
    """The order to send (amount and price rounded by the market's rules), or None."""
    reason: str | None
    """Why no order is needed or possible (None when there is an order)."""
    target_amount: Decimal
    """Target position in the base currency."""
    delta: Decimal
    """Target minus current position, before rounding."""


def plan_order(
    target_fraction: float | Decimal,
    current_position: Decimal,
    price: Decimal,
    market: Market,
    equity: Decimal,
    *,
    client_order_id: ClientOrderId,
    order_type: OrderType = OrderType.MARKET,
    allow_short: bool = False,
) -> OrderPlan:
    """Size the order that brings `current_position` to `target_fraction` of `equity` at `price`.

    The target is a signed fraction of equity (1 = all equity long, -1 = all short, clipped to [-1, 1], and to
    [0, 1] without `allow_short`). The amount is rounded down to the lot step and a limit price to the tick;
    an order below the market's minimum amount or notional gives no request and a reason.
    """
    fraction = Decimal(str(target_fraction)) if isinstance(target_fraction, float) else target_fraction
    if not fraction.is_finite():
        raise ValueError(f"plan_order {market.symbol}: target fraction must be finite, was {target_fraction}")
    if price <= 0 or not price.is_finite():
        raise ValueError(f"plan_order {market.symbol}: price must be a finite number > 0, was {price}")
    low = Decimal(-1) if allow_short else ZERO
    fraction = min(max(fraction, low), Decimal(1))
    target = fraction * max(equity, ZERO) / price
    delta = target - current_position
    amount = market.round_amount(abs(delta))
    if amount <= 0:
        return OrderPlan(None, "at_target", target, delta)
    limit_price = market.round_price(price) if order_type is OrderType.LIMIT else None
    try:
        market.check_order(amount, price)
    except InvalidOrder as e:
        return OrderPlan(None, f"below_minimum: {e}", target, delta)
    request = OrderRequest(
        client_order_id=client_order_id,
        symbol=market.symbol,
        side=Side.BUY if delta > 0 else Side.SELL,
        type=order_type,
        amount=amount,
        price=limit_price,
    )
    return OrderPlan(request, None, target, delta)
