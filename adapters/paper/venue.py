"""Paper venue: simulate fills against a candle feed (live candles or a replay) with exact Decimal balances.

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


class PaperVenue(PaperBook):
    """A simulated exchange: the `ExchangeAdapter` API over exact balances and a candle-driven fill model.

    The async methods are the normal API. Each wraps a synchronous core (`submit_order`, `cancel`,
    `on_candle`, ...) that a fast backtest may call directly without awaiting per candle.
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
        self._candle_guard = candle_guard
        super().__init__(config)
        self._feed = feed
        self._fill_listener: FillListener | None = None

    def set_fill_listener(self, listener: FillListener | None) -> None:
        """Push the fills of each candle (and their orders as they are after it) to `listener`, before the candle
        is yielded by `candles()`: the engine learns of its fills without polling each pending order."""
        self._fill_listener = listener

    # ----------------------------------------------------------------- async ExchangeAdapter API

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def load_markets(self) -> Mapping[str, Market]:
        """Return the configured markets by symbol."""
        return dict(self._markets)

    async def fetch_ohlcv(
        self, symbol: str, timeframe: str, since_ms: int | None = None, limit: int | None = None
    ) -> list[Candle]:
        """Return closed candles from the feed."""
        self.market(symbol)
        return await self._require_feed().fetch_ohlcv(symbol, timeframe, since_ms, limit)

    async def candles(self, symbol: str, timeframe: str) -> AsyncIterator[Candle]:
        """Yield the feed's closed candles, filling pending orders against each one before it is yielded."""
        self.market(symbol)
        guard = CandleGuard(self._candle_guard) if self._candle_guard is not None else None
        async for candle in self._require_feed().candles(symbol, timeframe):
            if guard is not None and guard.check(candle) is not None:
                yield candle  # a glitch never makes a fill; the engine refuses it too
                continue
            fills = self.on_candle(candle)
            if fills and self._fill_listener is not None:
                orders = {f.client_order_id: self.get_order(f.symbol, ClientOrderId(f.client_order_id)) for f in fills}
                self._fill_listener(fills, list(orders.values()))
            yield candle

    async def fetch_balances(self) -> dict[str, Balance]:
        """Return balances by currency."""
        return self.balances()

    async def create_order(self, request: OrderRequest) -> Order:
        """Round, check and accept an order; it fills on later candles (see the module docstring)."""
        return self.submit_order(request)

    async def cancel_order(self, symbol: str, client_order_id: ClientOrderId) -> Order:
        """Cancel an open order by our client order id and release what it reserved."""
        return self.cancel(symbol, client_order_id)

    async def fetch_order(self, symbol: str, client_order_id: ClientOrderId) -> Order:
        """Look an order up by our client order id."""
        return self.get_order(symbol, client_order_id)

    async def fetch_open_orders(self, symbol: str | None = None) -> list[Order]:
        """Return orders still open (new or partially filled), oldest first."""
        return self.open_orders(symbol)

    async def fetch_my_trades(self, symbol: str, since_ms: int | None = None) -> list[Fill]:
        """Return our fills of `symbol` at or after `since_ms`."""
        return self.trades(symbol, since_ms)

    # ----------------------------------------------------------------- candle feed

    def _require_feed(self) -> CandleFeed:
        if self._feed is None:
            raise RuntimeError(f"{self.name}: no candle feed configured; call on_candle() yourself or pass feed=")
        return self._feed
