"""The bot's own book: the allocation it trades and the position it holds, from its own fills only.

The bot trades an allocation of the account (``bot.capital``): a quote budget in the account currency and,
optionally, base amounts per symbol already assigned to it. Its position in a symbol is that assigned base plus
the fills of its own orders (orders whose client order id the ledger holds), net of fees charged in the base;
its cash per currency is the budget plus what its fills paid and received, less fees. Everything else the
account holds is the user's ("outside"): the bot never sizes from it and never sells it. Reconciliation
(`bot.orders.reconciliation`) checks that the venue holds exactly the outside baseline recorded at the first start
plus this book.

A :class:`Book` lives in memory (``apply_fill`` is O(1)) and is rebuilt from the ledger at start
(:meth:`Book.from_ledger`). Open orders reserve what they may spend (``reserve``): ``free_quote`` is what a new
order may still use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from adapters.errors import InvalidOrder
from adapters.types import Balance, ClientOrderId, Fill, Market, OrderRequest, OrderType, Side, split_symbol
from bot.ledger.store import Ledger
from bot.orders.state import PENDING_STATES

ZERO = Decimal(0)


def _sign(value: Decimal) -> int:
    return (value > 0) - (value < 0)


@dataclass(frozen=True)
class CapitalConfig:
    """The allocation the bot trades (config/bot/default.yaml `bot.capital`)."""

    quote: Decimal = Decimal("1000")
    """Quote budget the bot may spend, in the account currency (the first symbol's quote)."""
    base: dict[str, Decimal] = field(default_factory=dict)
    """Base amounts per symbol (e.g. ``BTC/USDT: 0.01``) the account already holds that belong to the bot."""

    def __post_init__(self) -> None:
        if not isinstance(self.quote, Decimal) or not self.quote.is_finite() or self.quote < 0:
            raise ValueError(f"capital.quote must be a finite Decimal >= 0, was {self.quote!r}")
        for symbol, amount in self.base.items():
            split_symbol(symbol)
            if not isinstance(amount, Decimal) or not amount.is_finite() or amount < 0:
                raise ValueError(f"capital.base.{symbol} must be a finite Decimal >= 0, was {amount!r}")


@dataclass(slots=True)
class _Reservation:
    currency: str
    amount: Decimal
    per_unit: Decimal | None
    """Reserved per base unit of the order (consumed per fill), or None: released whole at the first fill."""


class Book:
    """The bot's positions and cash (see the module docstring)."""

    def __init__(self, capital: CapitalConfig, account_currency: str) -> None:
        """Start from the allocation alone: the budget in `account_currency` and the assigned base amounts."""
        self.capital = capital
        self.account_currency = account_currency
        self._positions: dict[str, Decimal] = {s: a for s, a in capital.base.items() if a}
        self._entries: dict[str, Decimal] = {}
        self._cash: dict[str, Decimal] = {account_currency: capital.quote}
        self._reservations: dict[ClientOrderId, _Reservation] = {}
        self._reserved: dict[str, Decimal] = {}
        self._bases: dict[str, str] = {}
        self._balances: dict[str, Balance] | None = None
        """`balances()` as of the last change (a fill, a reservation); None once the book changed."""
        self._free: dict[str, Decimal] = {}
        """`free_quote()` by currency as of the last change (emptied with `_balances`)."""

    @classmethod
    def from_ledger(cls, ledger: Ledger, capital: CapitalConfig, account_currency: str) -> Book:
        """Rebuild the book from the ledger's fills of the bot's own orders; reserve for its pending limit orders.

        Blocking (SQLite): call it once at start, off the event loop in async code.
        """
        book = cls(capital, account_currency)
        for fill in ledger.own_fills():
            book.apply_fill(fill)
        for order in ledger.orders(PENDING_STATES):
            if order.type is OrderType.LIMIT and order.price is not None:
                remaining = order.amount - order.filled
                if remaining > 0:
                    base, quote = split_symbol(order.symbol)
                    if order.side is Side.BUY:
                        book.reserve(order.client_order_id, quote, remaining * order.price, for_amount=remaining)
                    else:
                        book.reserve(order.client_order_id, base, remaining, for_amount=remaining)
        return book

    # ------------------------------------------------------------------------------------- reads

    def position(self, symbol: str) -> Decimal:
        """The bot's signed position in `symbol` (base currency): assigned base plus its own fills."""
        return self._positions.get(symbol, ZERO)

    def entry_price(self, symbol: str) -> Decimal:
        """Average entry price of the open position (0 when flat or when only assigned base is held)."""
        return self._entries.get(symbol, ZERO)

    def cash(self, currency: str) -> Decimal:
        """The bot's cash in `currency` (what open orders reserve included)."""
        return self._cash.get(currency, ZERO)

    def reserved(self, currency: str) -> Decimal:
        """What open orders reserve of `currency`."""
        return self._reserved.get(currency, ZERO)

    def free_quote(self, quote_ccy: str) -> Decimal:
        """Cash in `quote_ccy` a new order may spend: cash less what open buy orders reserve (never below 0)."""
        free = self._free.get(quote_ccy)
        if free is None:  # read on every candle, changed only by fills and reservations
            free = self._free[quote_ccy] = max(self.cash(quote_ccy) - self.reserved(quote_ccy), ZERO)
        return free

    def positions(self) -> dict[str, Decimal]:
        """Every non-flat position, by symbol."""
        return {s: a for s, a in self._positions.items() if a}

    def holdings(self) -> dict[str, Decimal]:
        """The bot's total holding per currency: cash plus the positions whose base it is."""
        held = dict(self._cash)
        for symbol, amount in self._positions.items():
            base = self._base(symbol)
            held[base] = held.get(base, ZERO) + amount
        return held

    def balances(self) -> dict[str, Balance]:
        """The bot's holdings as balances (free = total less reserved), for `bot.engine.valuation.mark_equity`."""
        if self._balances is None:
            out: dict[str, Balance] = {}
            for currency, total in self.holdings().items():
                used = min(self.reserved(currency), max(total, ZERO))
                out[currency] = Balance(currency, total - used, used)
            self._balances = out
        return dict(self._balances)  # read on every candle, changed only by fills and reservations

    def flatten_request(
        self, symbol: str, market: Market, client_order_id: ClientOrderId, *, price: Decimal | None = None
    ) -> OrderRequest | None:
        """The market order that closes only the bot's position in `symbol`, or None (flat, or below the minimum).

        The amount is rounded down to the lot step; with `price` (the last close) the minimum notional is checked.
        """
        position = self.position(symbol)
        amount = market.round_amount(abs(position))
        if amount <= 0:
            return None
        if amount < market.min_amount:
            return None
        if price is not None and price > 0:
            try:
                market.check_order(amount, price)
            except InvalidOrder:
                return None
        side = Side.SELL if position > 0 else Side.BUY
        return OrderRequest(client_order_id, symbol, side, OrderType.MARKET, amount)

    # ------------------------------------------------------------------------------------- writes

    def _changed(self) -> None:
        self._balances = None
        self._free.clear()

    def _base(self, symbol: str) -> str:
        base = self._bases.get(symbol)
        if base is None:
            base = self._bases[symbol] = split_symbol(symbol)[0]
        return base

    def apply_fill(self, fill: Fill) -> None:
        """Book one fill of the bot's own order (the caller checks it is the bot's and new)."""
        self._changed()
        base, quote = split_symbol(fill.symbol)
        fee_base = fill.fee if fill.fee_currency == base else ZERO
        qty = fill.side.sign * fill.amount - fee_base
        held = self._positions.get(fill.symbol, ZERO)
        new = held + qty
        entry = self._entries.get(fill.symbol, ZERO)
        if new == 0:
            entry = ZERO
        elif held == 0 or _sign(held) == _sign(qty):
            entry = (abs(held) * entry + abs(qty) * fill.price) / abs(new)
        elif _sign(new) != _sign(held):
            entry = fill.price  # flipped: the rest opens at this price
        self._positions[fill.symbol] = new
        self._entries[fill.symbol] = entry
        cash = self._cash
        cash[quote] = cash.get(quote, ZERO) - fill.side.sign * fill.amount * fill.price
        if fill.fee_currency != base:
            cash[fill.fee_currency] = cash.get(fill.fee_currency, ZERO) - fill.fee
        reservation = self._reservations.get(fill.client_order_id)
        if reservation is not None:
            if reservation.per_unit is None:
                self.release(fill.client_order_id)
            else:
                used = min(reservation.amount, reservation.per_unit * fill.amount)
                reservation.amount -= used
                self._reserved[reservation.currency] -= used
                if reservation.amount <= 0:
                    self.release(fill.client_order_id)

    def reserve(
        self, client_order_id: ClientOrderId, currency: str, amount: Decimal, *, for_amount: Decimal | None = None
    ) -> None:
        """Set aside `amount` of `currency` for an open order; with `for_amount` (its base amount) fills consume it."""
        self.release(client_order_id)
        self._changed()
        if amount <= 0:
            return
        per_unit = None if for_amount is None or for_amount <= 0 else amount / for_amount
        self._reservations[client_order_id] = _Reservation(currency, amount, per_unit)
        self._reserved[currency] = self._reserved.get(currency, ZERO) + amount

    def release(self, client_order_id: ClientOrderId) -> None:
        """Free what an order reserved (it is final, or its fills consumed it)."""
        reservation = self._reservations.pop(client_order_id, None)
        if reservation is not None:
            self._changed()
            self._reserved[reservation.currency] -= reservation.amount
