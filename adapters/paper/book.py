"""The paper venue's synchronous core: exact Decimal balances, orders and the candle-driven fill model.

Conventions (every one is a choice a backtest result depends on):

- **When orders fill.** An order submitted after candle *t* closed may fill from candle *t+1+latency_bars*.
  A market order fills at that candle's open moved against us by the cost model's slippage (fixed bps
  plus an impact term that grows with the fill's share of the candle's volume), rounded to the tick
  against us, and pays the taker fee. With ``fill_at="last_close"`` (and no latency) a market order fills
  immediately at the close of the last candle instead (backtesting.py's ``trade_on_close``).
- **Limit orders.** A limit order that is already marketable on the candle it arrives in (a buy whose
  limit is at or above the open) crosses the book: it fills at the open plus slippage, never above its
  limit, as a taker. Otherwise it rests, and fills at its own limit price as a maker once the price
  trades *through* it (a buy: low < limit; ``limit_fill_on_touch`` also accepts low == limit). Sells are
  symmetric. A resting order gets no price improvement on a gap: resting orders trade at their price.
- **Volume cap.** With ``volume_limited``, one candle fills at most ``max_participation × volume``
  (rounded down to the amount step); the rest stays open (``partially_filled``) for the next candles.
- **Fees** come from the `CostModel` (the same one the training env charges), not from `Market`'s
  exchange fee fields, are charged in the quote currency and are exact Decimals (no rounding).
- **Funds.** Sells reserve their base amount and limit buys reserve ``amount × limit × (1 + fee)`` at
  submission; without the funds, the order is refused with `InsufficientFunds` and nothing changes.
  A market buy cannot be priced exactly before it fills, so at submission it is refused only when it would
  be unaffordable even at the last close less ``submit_price_band`` (clearly too large); when it fills,
  it is capped to what the free quote balance can pay at the real fill price, and an unaffordable rest is
  cancelled (status ``cancelled`` with ``filled > 0``). Balances therefore never go negative unless
  ``allow_margin`` (quote) or ``allow_short`` (base) is set, which lifts the checks without any limit.
- **Bad input** (unknown symbol, non-finite amount, amount or notional below the market's minimum after
  rounding down to the amount step) raises `InvalidOrder` before any state changes. The amount is rounded
  down with ``Market.round_amount`` and a limit price with ``Market.round_price``.
- **Idempotency.** Re-sending a request with a client order id already used returns the existing order
  (nothing new is created), so a retry after `OrderStateUnknown` is safe; reusing the id for a *different*
  request raises `InvalidOrder`. Refused requests are not recorded.
- **Cancel** of an order already in a final state returns it unchanged.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import structlog

from adapters.costs import FILL_MODEL_VERSION
from adapters.errors import InsufficientFunds, InvalidOrder, OrderNotFound
from adapters.paper.config import PaperConfig
from adapters.types import (
    Balance,
    Candle,
    ClientOrderId,
    Fill,
    Market,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    VenueOrderId,
    ms_from_utc,
    timeframe_seconds,
)

log = structlog.get_logger()

ZERO = Decimal(0)
ONE = Decimal(1)


def _dec(value: float) -> Decimal:
    # repr() is the shortest string that round-trips, so 4261.48 becomes Decimal("4261.48"), not its binary value.
    return Decimal(repr(value))


def _fill_ms(fill: Fill) -> int:
    return ms_from_utc(fill.timestamp)


@dataclass(slots=True)
class _PaperOrder:
    """Mutable venue-side state of one order; callers only ever see `Order` snapshots."""

    request: OrderRequest
    market: Market
    amount: Decimal
    price: Decimal | None
    venue_order_id: VenueOrderId
    eligible_bar: int
    created_at: datetime | None
    reserve_per_unit: Decimal = ZERO
    """Quote reserved per unit of amount (limit buys), released as the order fills or is cancelled."""
    reserves_base: bool = False
    status: OrderStatus = OrderStatus.OPEN
    filled: Decimal = ZERO
    cost: Decimal = ZERO
    fee: Decimal = ZERO
    updated_at: datetime | None = None

    @property
    def remaining(self) -> Decimal:
        return self.amount - self.filled

    def snapshot(self) -> Order:
        request = self.request
        return Order(
            client_order_id=request.client_order_id,
            symbol=request.symbol,
            side=request.side,
            type=request.type,
            amount=self.amount,
            status=self.status,
            price=self.price,
            venue_order_id=self.venue_order_id,
            filled=self.filled,
            average_price=self.cost / self.filled if self.filled else None,
            fee=self.fee,
            fee_currency=self.market.quote,
            created_at=self.created_at,
            updated_at=self.updated_at or self.created_at,
        )


class PaperBook:
    """A simulated exchange's books: balances, orders and fills, advanced one candle at a time (`on_candle`).

    Every method is synchronous, so a fast backtest may call it directly without awaiting per candle;
    `adapters.paper.venue.PaperVenue` owns one and adds the async `ExchangeAdapter` API and a candle feed.
    """

    def __init__(self, config: PaperConfig | None = None) -> None:
        """Open an account with `config`'s balances."""
        self.config = config or PaperConfig()
        self.name = self.config.name
        self._costs = self.config.costs
        self._markets: dict[str, Market] = {m.symbol: m for m in self.config.markets}
        self._free: dict[str, Decimal] = {c: a + ZERO for c, a in self.config.initial_balances.items()}
        self._used: dict[str, Decimal] = {}
        for market in self._markets.values():
            for currency in (market.base, market.quote):
                self._free.setdefault(currency, ZERO)
                self._used.setdefault(currency, ZERO)
        self._orders: dict[ClientOrderId, _PaperOrder] = {}
        self._open: dict[str, list[_PaperOrder]] = {}
        self._fills: list[Fill] = []
        self._bars: dict[str, int] = {}
        self._last: dict[str, Candle] = {}
        self._clock: Candle | None = None
        self._order_ids = itertools.count(self.config.first_order_id)
        self._trade_ids = itertools.count(self.config.first_trade_id)
        self._bar_length: dict[str, timedelta] = {}
        self._taker_fee = _dec(self._costs.fee_fraction(is_maker=False))
        self._maker_fee = _dec(self._costs.fee_fraction(is_maker=True))
        self._fixed_slippage = _dec(self._costs.slippage_fraction(0.0))

    def market(self, symbol: str) -> Market:
        """Return one market; raise InvalidOrder for an unknown symbol."""
        try:
            return self._markets[symbol]
        except KeyError:
            raise InvalidOrder(
                f"{self.name}: unknown symbol {symbol!r}; markets: {', '.join(sorted(self._markets))}"
            ) from None

    @property
    def now(self) -> datetime | None:
        """Return the venue clock: the close time of the latest candle seen (None before any candle)."""
        clock = self._clock
        if clock is None:
            return None
        return clock.open_time + self._bar(clock.timeframe)

    def _bar(self, timeframe: str) -> timedelta:
        length = self._bar_length.get(timeframe)
        if length is None:
            length = self._bar_length[timeframe] = timedelta(seconds=timeframe_seconds(timeframe))
        return length

    def balances(self) -> dict[str, Balance]:
        """Return balances by currency (free and reserved by open orders)."""
        return {c: Balance(c, free, self._used.get(c, ZERO)) for c, free in self._free.items()}

    def position(self, symbol: str) -> Decimal:
        """Return the spot position of `symbol`: the total balance of its base currency."""
        base = self.market(symbol).base
        return self._free.get(base, ZERO) + self._used.get(base, ZERO)

    def last_price(self, symbol: str) -> Decimal | None:
        """Return the close of the latest candle seen for `symbol`."""
        candle = self._last.get(symbol)
        return None if candle is None else _dec(candle.close)

    def equity(self, prices: Mapping[str, Decimal] | None = None, currency: str | None = None) -> Decimal:
        """Return the account value in `currency` (default: the first market's quote), marked at `prices`.

        Each held currency is valued through the market that quotes it in `currency`, at `prices[symbol]`
        or else at that market's last close.
        """
        target = currency or self.config.markets[0].quote
        total = ZERO
        for held, free in self._free.items():
            amount = free + self._used.get(held, ZERO)
            if held == target:
                total += amount
                continue
            if not amount:
                continue
            market = next((m for m in self._markets.values() if m.base == held and m.quote == target), None)
            if market is None:
                raise ValueError(f"{self.name}: cannot value {amount} {held} in {target}: no {held}/{target} market")
            price = (prices or {}).get(market.symbol) or self.last_price(market.symbol)
            if price is None:
                raise ValueError(f"{self.name}: no price for {market.symbol} to value {amount} {held}")
            total += amount * price
        return total

    def get_order(self, symbol: str, client_order_id: ClientOrderId) -> Order:
        """Return the order with this client order id; raise OrderNotFound if there is none for `symbol`."""
        order = self._orders.get(client_order_id)
        if order is None or order.request.symbol != symbol:
            raise OrderNotFound(f"fetch_order {symbol} client_order_id={client_order_id}: no such order on {self.name}")
        return order.snapshot()

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        """Return open orders (of `symbol`, or all), oldest first."""
        if symbol is not None:
            return [o.snapshot() for o in self._open.get(symbol, ())]
        pending = sorted((o for orders in self._open.values() for o in orders), key=lambda o: int(o.venue_order_id))
        return [o.snapshot() for o in pending]

    def trades(self, symbol: str, since_ms: int | None = None) -> list[Fill]:
        """Return fills of `symbol` at or after `since_ms`, in fill order."""
        # Fills are kept in time order: bisect to the first one at or after `since_ms` instead of scanning all.
        first = 0 if since_ms is None else bisect.bisect_left(self._fills, since_ms, key=_fill_ms)
        return [f for f in self._fills[first:] if f.symbol == symbol]

    @property
    def fills(self) -> list[Fill]:
        """Return every fill so far, in fill order."""
        return list(self._fills)

    def submit_order(self, request: OrderRequest) -> Order:
        """Validate, round, reserve funds and accept an order; raise before changing anything if it is bad."""
        existing = self._orders.get(request.client_order_id)
        if existing is not None:
            if existing.request != request:
                raise InvalidOrder(
                    f"create_order {request.symbol}: client_order_id={request.client_order_id} is already used by "
                    f"a different order ({existing.request.side} {existing.request.amount} {existing.request.symbol})"
                )
            return existing.snapshot()
        market = self.market(request.symbol)
        if not request.amount.is_finite() or request.amount <= 0:
            raise InvalidOrder(
                f"create_order {request.symbol} {request.client_order_id}: "
                f"amount must be a finite number > 0, was {request.amount}"
            )
        amount = market.round_amount(request.amount)
        last = self._last.get(request.symbol)
        price: Decimal | None = None
        if request.type is OrderType.LIMIT:
            assert request.price is not None  # OrderRequest guarantees a price for limits
            if not request.price.is_finite():
                raise InvalidOrder(
                    f"create_order {request.symbol} {request.client_order_id}: "
                    f"limit price must be finite, was {request.price}"
                )
            price = market.round_price(request.price)
            if price <= 0:
                raise InvalidOrder(
                    f"create_order {request.symbol} {request.client_order_id}: "
                    f"limit price {request.price} rounds to {price} at tick {market.price_step}"
                )
            estimate = price
        elif last is None:
            raise InvalidOrder(
                f"create_order {request.symbol} {request.client_order_id}: no candle seen yet, "
                "so a market order cannot be checked against the minimum notional"
            )
        else:
            estimate = _dec(last.close)
        market.check_order(amount, estimate)

        reserve_per_unit = ZERO
        reserves_base = False
        if request.side is Side.BUY and not self.config.allow_margin:
            free_quote = self._free[market.quote]
            if request.type is OrderType.LIMIT:
                reserve_per_unit = estimate * (ONE + max(self._taker_fee, self._maker_fee))
                needed = amount * reserve_per_unit
            else:
                band = ONE - _dec(self.config.submit_price_band)
                needed = amount * estimate * band * (ONE + self._taker_fee + self._fixed_slippage)
            if needed > free_quote:
                raise InsufficientFunds(
                    f"create_order {request.symbol} {request.client_order_id}: buying {amount} "
                    f"needs about {needed} {market.quote}, free is {free_quote}"
                )
        elif request.side is Side.SELL and not self.config.allow_short:
            free_base = self._free[market.base]
            if amount > free_base:
                raise InsufficientFunds(
                    f"create_order {request.symbol} {request.client_order_id}: selling {amount} {market.base}, "
                    f"free is {free_base}"
                )
            reserves_base = True

        order = _PaperOrder(
            request=request,
            market=market,
            amount=amount,
            price=price,
            venue_order_id=VenueOrderId(str(next(self._order_ids))),
            eligible_bar=self._bars.get(request.symbol, 0) + 1 + self.config.latency_bars,
            created_at=self.now,
            reserve_per_unit=reserve_per_unit,
            reserves_base=reserves_base,
        )
        if reserve_per_unit:
            self._move(market.quote, amount * reserve_per_unit)
        if reserves_base:
            self._move(market.base, amount)
        self._orders[request.client_order_id] = order
        self._open.setdefault(request.symbol, []).append(order)
        self._trim_orders()
        if request.type is OrderType.MARKET and self.config.fill_at == "last_close" and last is not None:
            self._match(order, last, _dec(last.close), self.now or last.open_time, arrival=True)
            self._prune(request.symbol)
        return order.snapshot()

    def _trim_orders(self) -> None:
        # Amortised: trimmed back to `history_limit` finished orders each time twice that many are held.
        limit = self.config.history_limit
        if limit is None or len(self._orders) < 2 * limit:
            return
        finished = [cid for cid, order in self._orders.items() if order.status.is_final]
        for cid in finished[: max(0, len(finished) - limit)]:
            del self._orders[cid]

    def _move(self, currency: str, amount: Decimal) -> None:
        """Reserve `amount` (free -> used); a negative amount releases it."""
        self._free[currency] -= amount
        self._used[currency] += amount

    def cancel(self, symbol: str, client_order_id: ClientOrderId) -> Order:
        """Cancel an open order and release its reservation; a final order is returned unchanged."""
        order = self._orders.get(client_order_id)
        if order is None or order.request.symbol != symbol:
            raise OrderNotFound(
                f"cancel_order {symbol} client_order_id={client_order_id}: no such order on {self.name}"
            )
        if not order.status.is_final:
            self._close(order, OrderStatus.CANCELLED)
            self._prune(symbol)
        return order.snapshot()

    def _close(self, order: _PaperOrder, status: OrderStatus) -> None:
        remaining = order.remaining
        if order.reserve_per_unit and remaining:
            self._move(order.market.quote, -remaining * order.reserve_per_unit)
        if order.reserves_base and remaining:
            self._move(order.market.base, -remaining)
        order.status = status
        order.updated_at = self.now

    def _prune(self, symbol: str) -> None:
        pending = self._open.get(symbol)
        if pending is not None:
            pending[:] = [o for o in pending if not o.status.is_final]

    def on_candle(self, candle: Candle) -> list[Fill]:
        """Advance the clock to the close of `candle` and fill pending orders of its symbol against it."""
        symbol = candle.symbol
        self._bars[symbol] = bar = self._bars.get(symbol, 0) + 1
        self._last[symbol] = candle
        self._clock = candle
        pending = self._open.get(symbol)
        if not pending:
            return []
        fills = []
        reference = _dec(candle.open)
        for order in pending:
            if order.eligible_bar > bar:
                continue
            fill = self._match(order, candle, reference, candle.open_time, arrival=order.eligible_bar == bar)
            if fill is not None:
                fills.append(fill)
        self._prune(symbol)
        return fills

    def _match(
        self, order: _PaperOrder, candle: Candle, open_price: Decimal, timestamp: datetime, *, arrival: bool
    ) -> Fill | None:
        """Fill what the candle allows of `order`; `arrival` is whether the order reaches the book now."""
        market = order.market
        side = order.request.side
        is_buy = side is Side.BUY
        limit = order.price
        is_maker = False
        if limit is None:
            reference = open_price
        elif arrival and (open_price <= limit if is_buy else open_price >= limit):
            reference = open_price  # marketable on arrival: it crosses the book as a taker
        else:
            limit_f = float(limit)
            touched = (
                (candle.low < limit_f or (self.config.limit_fill_on_touch and candle.low == limit_f))
                if is_buy
                else (candle.high > limit_f or (self.config.limit_fill_on_touch and candle.high == limit_f))
            )
            if not touched:
                return None
            reference, is_maker = limit, True

        quantity = order.remaining
        volume = _dec(candle.volume)
        if self.config.volume_limited:
            quantity = market.round_amount(self._costs.fillable_quantity(quantity, volume))
            if quantity <= 0:
                return None
        if is_maker:
            price = reference
        else:
            slipped = self._costs.fill_price(reference, side.sign, quantity, volume)
            price = self._to_tick(market, slipped, ROUND_CEILING if is_buy else ROUND_FLOOR)
            if limit is not None:
                price = min(price, limit) if is_buy else max(price, limit)
        fee_rate = self._maker_fee if is_maker else self._taker_fee

        capped_by_funds = False
        if is_buy and not order.reserve_per_unit and not self.config.allow_margin:
            affordable = self._affordable(market, quantity, price * (ONE + fee_rate))
            if affordable <= 0:
                self._cancel_unaffordable(order, price)
                return None
            capped_by_funds = affordable < quantity
            quantity = affordable

        notional = quantity * price
        fee = self._costs.fee(notional, is_maker=is_maker)
        if is_buy:
            if order.reserve_per_unit:
                self._move(market.quote, -quantity * order.reserve_per_unit)
            self._free[market.quote] -= notional + fee
            self._free[market.base] += quantity
        else:
            if order.reserves_base:
                self._used[market.base] -= quantity
            else:
                self._free[market.base] -= quantity
            self._free[market.quote] += notional - fee

        order.filled += quantity
        order.cost += notional
        order.fee += fee
        order.updated_at = timestamp
        fill = Fill(
            trade_id=str(next(self._trade_ids)),
            client_order_id=order.request.client_order_id,
            symbol=market.symbol,
            side=side,
            amount=quantity,
            price=price,
            fee=fee,
            fee_currency=market.quote,
            timestamp=timestamp,
            venue_order_id=order.venue_order_id,
            requested_price=reference,
            is_maker=is_maker,
            fill_model_version=FILL_MODEL_VERSION,
        )
        self._fills.append(fill)
        kept = self.config.history_limit
        if kept is not None and len(self._fills) >= 2 * kept:
            del self._fills[:-kept]
        if order.remaining <= 0:
            order.status = OrderStatus.FILLED
        elif capped_by_funds:
            self._cancel_unaffordable(order, price)
        else:
            order.status = OrderStatus.PARTIALLY_FILLED
        return fill

    @staticmethod
    def _to_tick(market: Market, price: Decimal, rounding: str) -> Decimal:
        step = market.price_step
        if step <= 0:
            return price
        return (price / step).to_integral_value(rounding=rounding) * step

    def _affordable(self, market: Market, quantity: Decimal, cost_per_unit: Decimal) -> Decimal:
        free = self._free[market.quote]
        if quantity * cost_per_unit <= free:
            return quantity
        affordable = market.round_amount(free / cost_per_unit) if free > 0 else ZERO
        # Decimal division rounds at 28 digits; step down if that rounding made it a hair too large.
        while affordable > 0 and affordable * cost_per_unit > free:
            affordable -= market.amount_step
        return min(affordable, quantity)

    def _cancel_unaffordable(self, order: _PaperOrder, price: Decimal) -> None:
        log.warning(
            "order_cancelled_insufficient_funds",
            venue=self.name,
            symbol=order.market.symbol,
            client_order_id=order.request.client_order_id,
            filled=str(order.filled),
            remaining=str(order.remaining),
            price=str(price),
            free_quote=str(self._free[order.market.quote]),
        )
        self._close(order, OrderStatus.CANCELLED)
