"""Paper venue: the async `ExchangeAdapter` API over a `PaperBook`, driven by a candle feed (live or a replay).

The venue owns its book (`adapters.paper.book.PaperBook`: exact Decimal balances, orders and the fill rules, all
synchronous) and adds what an exchange adapter is: the async API, the candle feed, the candle guard and the push of
each candle's fills to a listener. The fill rules are documented where they are coded, in `adapters.paper.book`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import Protocol, Self

from adapters.candle_guard import CandleGuard, CandleGuardConfig
from adapters.paper.book import PaperBook
from adapters.paper.config import PaperConfig
from adapters.types import Balance, Candle, ClientOrderId, Fill, Market, Order, OrderRequest

FillListener = Callable[[list[Fill], list[Order]], None]
"""Receives the fills of one candle and their orders as they are after it (`PaperVenue.set_fill_listener`)."""


class CandleFeed(Protocol):
    """Where the paper venue gets its candles: a `ReplayFeed`, or a live venue's closed-candle stream."""

    def candles(self, symbol: str, timeframe: str) -> AsyncIterator[Candle]:
        """Yield each candle once it has closed."""
        ...

    async def fetch_ohlcv(
        self, symbol: str, timeframe: str, since_ms: int | None = None, limit: int | None = None
    ) -> list[Candle]:
        """Return closed candles."""
        ...


class PaperVenue:
    """A simulated exchange: the `ExchangeAdapter` API over its `book` (exact balances, a candle-driven fill model).

    The async methods are the normal API. Each calls the book's synchronous core (`book.submit_order`,
    `book.cancel`, `book.on_candle`, ...), which a fast backtest or a test may call directly.
    """

    def __init__(
        self,
        config: PaperConfig | None = None,
        feed: CandleFeed | None = None,
        candle_guard: CandleGuardConfig | None = None,
    ) -> None:
        """Open an account with `config`'s balances; `feed` supplies `candles()` and `fetch_ohlcv()`.

        With `candle_guard`, a candle the guard refuses (`adapters.candle_guard`: invalid, duplicate, out of
        order, a spike) fills nothing; it is still yielded, for the engine's own guard to report.
        """
        self.book = PaperBook(config)
        """Balances, orders, fills and the fill rules; the venue's synchronous core."""
        self.name = self.book.name
        self._candle_guard = candle_guard
        self._guards: dict[str, CandleGuard] = {}
        self._feed = feed
        self._fill_listener: FillListener | None = None

    def reanchor_candle_guards(self) -> None:
        """Let the next valid candle of each symbol be its guard's reference (the engine's `resume` calls this)."""
        for guard in self._guards.values():
            guard.reanchor()

    def set_fill_listener(self, listener: FillListener | None) -> None:
        """Push the fills of each candle (and their orders as they are after it) to `listener`, before the candle
        is yielded by `candles()`: the engine learns of its fills without polling each pending order."""
        self._fill_listener = listener

    # ----------------------------------------------------------------- async ExchangeAdapter API

    def market(self, symbol: str) -> Market:
        """Return one market; raise InvalidOrder for an unknown symbol."""
        return self.book.market(symbol)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def load_markets(self) -> Mapping[str, Market]:
        """Return the configured markets by symbol."""
        return {m.symbol: m for m in self.book.config.markets}

    async def fetch_ohlcv(
        self, symbol: str, timeframe: str, since_ms: int | None = None, limit: int | None = None
    ) -> list[Candle]:
        """Return closed candles from the feed."""
        self.market(symbol)
        return await self._require_feed().fetch_ohlcv(symbol, timeframe, since_ms, limit)

    async def candles(self, symbol: str, timeframe: str) -> AsyncIterator[Candle]:
        """Yield the feed's closed candles, filling pending orders against each one before it is yielded."""
        self.market(symbol)
        guard = None
        if self._candle_guard is not None:
            guard = self._guards.setdefault(symbol, CandleGuard(self._candle_guard))
        async for candle in self._require_feed().candles(symbol, timeframe):
            if guard is not None and guard.check(candle) is not None:
                yield candle  # a glitch never makes a fill; the engine refuses it too
                continue
            fills = self.book.on_candle(candle)
            if fills and self._fill_listener is not None:
                book = self.book
                orders = {f.client_order_id: book.get_order(f.symbol, ClientOrderId(f.client_order_id)) for f in fills}
                self._fill_listener(fills, list(orders.values()))
            yield candle

    async def fetch_balances(self) -> dict[str, Balance]:
        """Return balances by currency."""
        return self.book.balances()

    async def create_order(self, request: OrderRequest) -> Order:
        """Round, check and accept an order; it fills on later candles (see the module docstring)."""
        return self.book.submit_order(request)

    async def cancel_order(self, symbol: str, client_order_id: ClientOrderId) -> Order:
        """Cancel an open order by our client order id and release what it reserved."""
        return self.book.cancel(symbol, client_order_id)

    async def fetch_order(self, symbol: str, client_order_id: ClientOrderId) -> Order:
        """Look an order up by our client order id."""
        return self.book.get_order(symbol, client_order_id)

    async def fetch_open_orders(self, symbol: str | None = None) -> list[Order]:
        """Return orders still open (new or partially filled), oldest first."""
        return self.book.open_orders(symbol)

    async def fetch_my_trades(self, symbol: str, since_ms: int | None = None) -> list[Fill]:
        """Return our fills of `symbol` at or after `since_ms`."""
        return self.book.trades(symbol, since_ms)

    # ----------------------------------------------------------------- candle feed

    def _require_feed(self) -> CandleFeed:
        if self._feed is None:
            raise RuntimeError(f"{self.name}: no candle feed configured; call on_candle() yourself or pass feed=")
        return self._feed
