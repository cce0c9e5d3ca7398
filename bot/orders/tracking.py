"""Order tracking: keep the ledger's orders and fills in step with the venue's answers, and emit their events.

Every state change goes through the state machine (`bot.orders.state`); fills are recorded once (by trade id).
Ledger calls block (SQLite), so the async methods run them in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import structlog

from adapters.types import ClientOrderId, Fill, Order, OrderStatus, ms_from_utc
from adapters.venue import ExchangeAdapter
from bot.clock import utc_now
from bot.events import Event, FillEvent, OrderEvent
from bot.ledger.store import Ledger
from bot.ledger.types import ClosedTrade, FillResult
from bot.orders.book import Book
from bot.orders.state import IllegalTransition, S, check_transition

log = structlog.get_logger()

T = TypeVar("T")
ZERO = Decimal(0)

RECENT_FILLS = 1024
"""Fills `OrderTracker.fills_recorded` keeps in memory (the latest ones; the ledger keeps every fill)."""

LAST_FILL_PREFIX = "fills.last_ms."


class WarningsOnly:
    """A bound logger that drops info and debug lines and passes warnings and errors on."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def debug(self, *args: Any, **kwargs: Any) -> None:
        """Drop the line."""

    info = debug

    def warning(self, *args: Any, **kwargs: Any) -> None:
        """Log the line."""
        self._inner.warning(*args, **kwargs)

    def error(self, *args: Any, **kwargs: Any) -> None:
        """Log the line."""
        self._inner.error(*args, **kwargs)

    def exception(self, *args: Any, **kwargs: Any) -> None:
        """Log the line with the exception."""
        self._inner.exception(*args, **kwargs)

    def bind(self, **kwargs: Any) -> WarningsOnly:
        """Return this logger with more context."""
        return WarningsOnly(self._inner.bind(**kwargs))


class OrderTracker:
    """Apply the venue's view of orders and fills to the ledger (and the bot's book), through the state machine."""

    def __init__(
        self,
        ledger: Ledger,
        venue: ExchangeAdapter,
        *,
        bot_id: str,
        book: Book | None = None,
        clock: Callable[[], datetime] = utc_now,
        fill_lookback_s: float = 86_400.0,
        emit: Callable[[Event], None] | None = None,
        on_trade_closed: Callable[[ClosedTrade], None] | None = None,
        inline_db: bool = False,
        quiet: bool = False,
    ) -> None:
        """Track orders of `venue`, recorded in `ledger`; the bot's own fills also go to `book`.

        Args:
            fill_lookback_s: how far before the oldest ledger order to look for fills on the first sync.
            emit: receives every order and fill event (to forward to the sinks).
            on_trade_closed: called with every round trip a fill of the bot's closes (e.g. the risk cooldown).
            inline_db: run ledger calls on the calling thread (a backtest: nothing else waits on its event loop,
                and a thread hop per call would cost more than the call), else in a worker thread.
            quiet: log warnings and errors only (a backtest: one info line per order and fill would be thousands).
        """
        self.ledger = ledger
        self.venue = venue
        self.bot_id = bot_id
        self.book = book
        self.clock = clock
        self.fill_lookback_s = fill_lookback_s
        self._emit = emit
        self._on_trade_closed = on_trade_closed
        self.inline_db = inline_db
        bound = log.bind(bot_id=bot_id, venue=venue.name)
        self.log: Any = WarningsOnly(bound) if quiet else bound
        self.fills_recorded: deque[Fill] = deque(maxlen=RECENT_FILLS)
        """The latest fills of the bot's orders recorded as new, in order (bounded: the ledger keeps them all)."""
        self.fill_watchers: list[list[Fill]] = []
        """Lists that receive every new fill (the bot's and others') while registered (reconciliation)."""

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking ledger call: in a worker thread (SQLite writes block; keep them off the event loop), or
        inline for a backtest (`inline_db`)."""
        if self.inline_db:
            return fn(*args, **kwargs)
        return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))

    @property
    def publishing(self) -> bool:
        """Whether events go anywhere (callers build none otherwise: a backtest without sinks)."""
        return self._emit is not None

    def send_event(self, event: Event) -> None:
        if self._emit is not None:
            self._emit(event)

    def order_event(self, order: Order, reason: str | None, model_sha: str | None = None) -> OrderEvent:
        return OrderEvent.of(order, ts=self.clock(), bot_id=self.bot_id, reason=reason, model_sha=model_sha)

    def _log_status_change(
        self,
        client_order_id: ClientOrderId,
        symbol: str,
        from_status: OrderStatus,
        to_status: OrderStatus,
        reason: str | None,
    ) -> None:
        self.log.info(
            "order_status_changed",
            client_order_id=client_order_id,
            symbol=symbol,
            from_status=from_status.value,
            to_status=to_status.value,
            reason=reason,
        )

    # ------------------------------------------------------------------------------------- state changes

    async def set_status(self, client_order_id: ClientOrderId, status: OrderStatus, reason: str) -> Order:
        order = await self.db(self.ledger.get_order, client_order_id)
        if order is None:
            raise IllegalTransition(f"order {client_order_id}: not in the ledger")
        if order.status is status:
            return order
        check_transition(client_order_id, order.status, status)
        updated = await self.db(
            self.ledger.transition_order,
            client_order_id,
            status,
            ts=self.clock(),
            expected_from=order.status,
            reason=reason,
        )
        self._log_status_change(client_order_id, order.symbol, order.status, status, reason)
        self._released_if_final(updated)
        if self.publishing:
            self.send_event(self.order_event(updated, reason))
        return updated

    def _released_if_final(self, order: Order) -> None:
        if self.book is not None and order.status.is_final:
            self.book.release(order.client_order_id)

    def mark_unknown_now(self, client_order_id: ClientOrderId, reason: str) -> None:
        """Mark an order UNKNOWN synchronously (used while a cancellation unwinds, when nothing may be awaited)."""
        order = self.ledger.get_order(client_order_id)
        if order is not None and order.status in (S.NEW, S.SENT):
            self.ledger.update_order(
                client_order_id, S.UNKNOWN, ts=self.clock(), expected_from=order.status, reason=reason
            )

    async def apply(self, venue_order: Order, *, reason: str | None = None, fills_pushed: bool = False) -> Order:
        """Bring the ledger's copy of an order in line with the venue's snapshot; record new fills.

        `fills_pushed`: the venue pushed this order's fills (already recorded), so its trade history is not read.
        """
        cid = venue_order.client_order_id
        current = await self.db(self.ledger.get_order, cid)
        if current is None:
            raise IllegalTransition(f"order {cid}: the venue returned an order the ledger does not hold")
        new_status = venue_order.status
        # A venue reports a fresh order as open; our NEW/SENT are internal states it never uses.
        if new_status in (S.NEW, S.SENT):
            new_status = S.OPEN
        if venue_order.filled < current.filled:
            self.log.warning(
                "order_fill_went_backwards",
                client_order_id=cid,
                ledger_filled=str(current.filled),
                venue_filled=str(venue_order.filled),
            )
        unchanged = (
            new_status is current.status
            and venue_order.filled == current.filled
            and (venue_order.venue_order_id is None or venue_order.venue_order_id == current.venue_order_id)
        )
        if unchanged:
            return current
        if new_status is not current.status:
            check_transition(cid, current.status, new_status)
        updated = await self.db(
            self.ledger.transition_order,
            cid,
            new_status,
            ts=self.clock(),
            expected_from=current.status,
            reason=reason,
            venue_order_id=venue_order.venue_order_id,
            filled=max(venue_order.filled, current.filled),
            average_price=venue_order.average_price,
            fee=venue_order.fee,
            fee_currency=venue_order.fee_currency,
        )
        if new_status is not current.status:
            self._log_status_change(cid, updated.symbol, current.status, new_status, reason)
        if self.publishing:
            self.send_event(self.order_event(updated, reason))
        if updated.filled > current.filled and not fills_pushed:
            await self.sync_fills([updated.symbol])
        self._released_if_final(updated)
        return updated

    # ------------------------------------------------------------------------------------- fills

    async def sync_fills(self, symbols: Iterable[str]) -> list[Fill]:
        """Record the venue's fills since the last one seen (idempotent by trade id); return the new ones."""
        results: list[Fill] = []
        for symbol in symbols:
            since_ms = await self._fill_cursor(symbol)
            if since_ms is None:
                continue
            trades = await self.venue.fetch_my_trades(symbol, since_ms)
            newest = since_ms
            for fill in trades:
                newest = max(newest, ms_from_utc(fill.timestamp))
                if await self.record_fill(fill) is not None:
                    results.append(fill)
            if newest != since_ms:
                await self.db(self.ledger.set_state, LAST_FILL_PREFIX + symbol, str(newest), ts=self.clock())
        return results

    async def record_fill(self, fill: Fill) -> FillResult | None:
        """Record one fill (pushed by a venue or fetched); return what it did, or None when it was known already.

        A fill of the bot's own order updates the ledger's position and the book; a fill of an order the ledger
        does not hold (the user's own trade on the account) is kept as a fact and changes neither.
        """
        result = await self.db(self.ledger.record_fill, fill)
        if not result.inserted:
            return None
        for watcher in self.fill_watchers:
            watcher.append(fill)
        if not result.own:
            self.log.warning(
                "fill_unknown_order",
                symbol=fill.symbol,
                trade_id=fill.trade_id,
                client_order_id=fill.client_order_id,
                detail="not the bot's order: counted as the account's holdings outside the bot",
            )
            return result
        self.fills_recorded.append(fill)
        if self.book is not None:
            self.book.apply_fill(fill)
        self._on_new_fill(fill, result)
        return result

    async def _fill_cursor(self, symbol: str) -> int | None:
        stored = await self.db(self.ledger.get_state, LAST_FILL_PREFIX + symbol)
        if stored is not None:
            return int(stored)
        ours = await self.db(self.ledger.orders, None, symbol)
        if not ours:
            return None  # nothing of ours to look for yet
        oldest = min(o.created_at for o in ours if o.created_at is not None)
        return ms_from_utc(oldest - timedelta(seconds=self.fill_lookback_s))

    def _on_new_fill(self, fill: Fill, result: FillResult) -> None:
        self.log.info(
            "fill_received",
            client_order_id=fill.client_order_id,
            symbol=fill.symbol,
            trade_id=fill.trade_id,
            amount=str(fill.amount),
            price=str(fill.price),
        )
        if self.publishing:
            self.send_event(FillEvent.of(fill, self.bot_id))
        if result.closed_trade is not None:
            if self.publishing:
                self.send_event(result.closed_trade.to_event(self.bot_id))
            if self._on_trade_closed is not None:
                self._on_trade_closed(result.closed_trade)
