"""Valuation across quote currencies: what one unit of each currency is worth in the account's, and the equity.

The account is valued in the first symbol's quote; a symbol quoted in another currency needs that currency's
``<quote>/<account>`` symbol traded too, so that its last close prices the quote.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Protocol, TypeVar

from adapters.types import split_symbol

ZERO = Decimal(0)
ONE = Decimal(1)


class Priced(Protocol):
    """A traded symbol's state as valuation reads it."""

    @property
    def last_close(self) -> float | None:
        """Close of the symbol's latest candle, or None before the first."""
        ...


P = TypeVar("P", bound=Priced)


def account_currency(symbols: Sequence[str]) -> str:
    """Return the currency the account is valued in; raise ValueError if a quote of `symbols` cannot be valued."""
    # The account is valued in the first symbol's quote; another quote needs its <quote>/<account> symbol.
    account = split_symbol(symbols[0])[1]
    for quote in sorted({split_symbol(s)[1] for s in symbols} - {account}):
        if f"{quote}/{account}" not in symbols:
            raise ValueError(
                f"cannot value {quote} in {account}: trade {quote}/{account} too, or only {account}-quoted symbols"
            )
    return account


def pricing_order(account: str, states: Mapping[str, P]) -> list[tuple[str, str, P, bool]]:
    """Return (base, quote, state, quotes) of each symbol in the order `priced_values` prices them (account-quoted
    first); `quotes` says whether the base is another symbol's quote (a cross pair needs its value).

    Fixed for a set of symbols: the engine computes it once, then prices each candle with `priced_values`."""
    # Account-quoted symbols first, so that a cross pair's quote (e.g. BTC of ETH/BTC) is priced already.
    ordered = sorted(states, key=lambda s: split_symbol(s)[1] != account)
    quotes = {split_symbol(s)[1] for s in states}
    return [(base, quote, states[s], base in quotes) for s in ordered for base, quote in [split_symbol(s)]]


def priced_values(
    account: str, order: Iterable[tuple[str, str, Priced, bool]], held: Mapping[str, Any] | None = None
) -> dict[str, Decimal]:
    """Return the `account`-currency value of one unit of each currency, pricing the symbols in `order`.

    With `held` (balances by currency, as `mark_equity` reads them), a base neither held nor another symbol's quote
    is left out: it adds nothing to the equity (a flat bot's candles skip the Decimal price)."""
    values = {account: ONE}
    for base, quote, state, quotes in order:
        close = state.last_close
        if close is None or base in values:
            continue
        if held is not None and not quotes:
            balance = held.get(base)
            if balance is None or not balance.total:
                continue
        rate = values.get(quote)
        if rate is not None:
            price = Decimal(repr(close))
            values[base] = price if rate is ONE else price * rate
    return values


def mark_equity(balances: Mapping[str, Any], account: str, values: Mapping[str, Decimal]) -> tuple[Decimal, Decimal]:
    """Return (equity, total absolute position value) of `balances` in `account`, at the unit `values`."""
    cash = balances.get(account)
    equity = ZERO if cash is None else cash.total
    notional = ZERO
    for currency, unit_value in values.items():
        if currency == account:
            continue
        balance = balances.get(currency)
        if balance is None or not balance.total:
            continue  # nothing held: adds nothing
        value = balance.total * unit_value
        equity += value
        notional += abs(value)
    return equity, notional
