"""The async interface every venue implements: ccxt exchanges, the paper venue, and replay-driven backtests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from adapters.types import Balance, Candle, ClientOrderId, Fill, Market, Order, OrderRequest


@runtime_checkable
class ExchangeAdapter(Protocol):
    """A market we can read candles from and send orders to; use it as an async context manager."""

    name: str

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def load_markets(self) -> Mapping[str, Market]:
        """Return markets by symbol (precision, limits, fees); cached after the first call."""
        ...

    def market(self, symbol: str) -> Market:
        """Return one loaded market; raise InvalidOrder for an unknown symbol."""
        ...

    async def fetch_ohlcv(
        self, symbol: str, timeframe: str, since_ms: int | None = None, limit: int | None = None
    ) -> list[Candle]:
        """Return closed candles from `since_ms` (paged internally up to `limit`)."""
        ...

    def candles(self, symbol: str, timeframe: str) -> AsyncIterator[Candle]:
        """Yield each candle once it has closed, forever (or until the feed ends, for replay)."""
        ...

    async def fetch_balances(self) -> dict[str, Balance]:
        """Return balances by currency."""
        ...

    async def create_order(self, request: OrderRequest) -> Order:
        """Round, check and send an order; raise OrderStateUnknown if the outcome is unknown."""
        ...

    async def cancel_order(self, symbol: str, client_order_id: ClientOrderId) -> Order:
        """Cancel an open order by our client order id."""
        ...

    async def fetch_order(self, symbol: str, client_order_id: ClientOrderId) -> Order:
        """Look an order up by our client order id."""
        ...

    async def fetch_open_orders(self, symbol: str | None = None) -> list[Order]:
        """Return orders still open."""
        ...

    async def fetch_my_trades(self, symbol: str, since_ms: int | None = None) -> list[Fill]:
        """Return our fills since `since_ms`."""
        ...
