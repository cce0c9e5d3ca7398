"""Configuration of the paper venue: its account, markets and fill model, and the default BTC/USDT market."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from adapters.costs import CostModel
from adapters.types import Market

BTC_USDT = Market(
    symbol="BTC/USDT",
    base="BTC",
    quote="USDT",
    amount_step=Decimal("0.00001"),
    price_step=Decimal("0.01"),
    min_amount=Decimal("0.00001"),
    min_notional=Decimal("5"),
)
"""A Binance-like BTC/USDT spot market, the default paper market."""


def _default_balances() -> dict[str, Decimal]:
    return {"USDT": Decimal("10000")}


@dataclass(frozen=True)
class PaperConfig:
    """Account, markets and fill model of a paper venue."""

    initial_balances: Mapping[str, Decimal] = field(default_factory=_default_balances)
    """Starting free balance per currency, e.g. {"USDT": Decimal("10000")}."""
    markets: tuple[Market, ...] = (BTC_USDT,)
    """Markets the venue trades; orders for any other symbol are refused."""
    costs: CostModel = field(default_factory=CostModel)
    """Fees, slippage and the volume-participation cap (the model the training env charges too)."""
    latency_bars: int = 0
    """Extra candles before an order may fill: 0 fills on the candle after submission."""
    fill_at: Literal["next_open", "last_close"] = "next_open"
    """Reference price of market orders: the next candle's open, or (latency 0 only) the last close."""
    volume_limited: bool = True
    """Cap each candle's fill of an order at costs.max_participation × the candle's volume."""
    limit_fill_on_touch: bool = False
    """Fill a resting limit order when the price touches it, not only when it trades through it."""
    submit_price_band: float = 0.05
    """A market buy is refused at submission only if unaffordable at the last close less this fraction."""
    allow_margin: bool = False
    """Let the quote balance go negative (unlimited borrowing; research only)."""
    allow_short: bool = False
    """Let base balances go negative (unlimited shorting; research only)."""
    name: str = "paper"
    """Venue name used in logs and events."""
    first_trade_id: int = 1
    """Trade id of the first fill; a restarted paper account continues after the ids its ledger holds."""
    first_order_id: int = 1
    """Venue order id of the first order (see first_trade_id)."""
    history_limit: int | None = None
    """Finished orders and fills kept in memory, the latest ones (open orders are always kept); None keeps all.

    A backtest reads every fill back (`fills`); a paper daemon, whose ledger keeps the history, runs for months
    and bounds it."""

    def __post_init__(self) -> None:
        if self.history_limit is not None and self.history_limit < 1:
            raise ValueError(f"paper.history_limit must be >= 1 or None, was {self.history_limit}")
        for currency, amount in self.initial_balances.items():
            if not isinstance(amount, Decimal) or not amount.is_finite() or amount < 0:
                raise ValueError(f"paper.initial_balances[{currency!r}] must be a finite Decimal >= 0, was {amount!r}")
        if not self.markets:
            raise ValueError("paper.markets must hold at least one market")
        symbols = [m.symbol for m in self.markets]
        if len(set(symbols)) != len(symbols):
            raise ValueError(f"paper.markets has duplicate symbols: {symbols}")
        if self.latency_bars < 0:
            raise ValueError(f"paper.latency_bars must be >= 0, was {self.latency_bars}")
        if self.fill_at not in ("next_open", "last_close"):
            raise ValueError(f"paper.fill_at must be 'next_open' or 'last_close', was {self.fill_at!r}")
        if self.fill_at == "last_close" and self.latency_bars:
            raise ValueError("paper.fill_at='last_close' fills immediately, so it needs latency_bars=0")
        if not 0 <= self.submit_price_band < 1:
            raise ValueError(f"paper.submit_price_band must be in [0, 1), was {self.submit_price_band}")
