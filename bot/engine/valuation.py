"""Valuation across quote currencies: what one unit of each currency is worth in the account's, and the equity.

The account is valued in the first symbol's quote; a symbol quoted in another currency needs that currency's
``<quote>/<account>`` symbol traded too, so that its last close prices the quote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Protocol

from bot.ledger.types import split_symbol

ZERO = Decimal(0)
ONE = Decimal(1)


class Priced(Protocol):
    """A traded symbol's state as valuation reads it."""

    @property
    def last_close(self) -> float | None:
        """Close of the symbol's latest candle, or None before the first."""
        ...


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


def unit_values(account: str, states: Mapping[str, Priced]) -> dict[str, Decimal]:
    """Return the `account`-currency value of one unit of each currency priced by the symbols' last closes."""
    values = {account: ONE}
    # Account-quoted symbols first, so that a cross pair's quote (e.g. BTC of ETH/BTC) is priced already.
    for symbol in sorted(states, key=lambda s: split_symbol(s)[1] != account):
        state = states[symbol]
        base, quote = split_symbol(symbol)
        if state.last_close is None or quote not in values or base in values:
            continue
        values[base] = Decimal(repr(state.last_close)) * values[quote]
    return values


def mark_equity(balances: Mapping[str, Any], account: str, values: Mapping[str, Decimal]) -> tuple[Decimal, Decimal]:
    """Return (equity, total absolute position value) of `balances` in `account`, at the unit `values`."""
    cash = balances[account].total if account in balances else ZERO
    notional = ZERO
    equity = cash
    for currency, unit_value in values.items():
        if currency == account or currency not in balances:
            continue
        value = balances[currency].total * unit_value
        equity += value
        notional += abs(value)
    return equity, notional
