"""Order manager: submission, resolution of unknown outcomes, cancellation, timeouts and reconciliation.

The submit flow never loses an order across a crash and never sends a second order for one intent:

1. The order is written to the ledger *before* it is sent, in one durable commit that records NEW and the
   NEW -> SENT transition (one commit instead of two keeps the pre-send write inside the latency budget; a row
   in NEW and a row in SENT are treated alike by reconciliation, so nothing depends on the split).
2. ``venue.create_order`` is awaited; its answer updates the ledger. A rejection ends the order (REJECTED). Any
   outcome that leaves doubt (``OrderStateUnknown``, a transient error, a timeout, cancellation, an unexpected
   exception) marks it UNKNOWN.
3. An UNKNOWN order is resolved by its client order id through the order lookup, the open orders and the
   account's trade history (myTrades), retried over ``LookupConfig.window_s``. It is **never re-sent**: on Binance a
   duplicate client order id is refused only while the first order is open, so a filled market order whose lookup
   lags would be placed twice. Until it is resolved :meth:`OrderManager.is_blocked` is true for its symbol and
   :meth:`OrderManager.submit` refuses new orders for that symbol. Only when no source has seen the order over
   the whole window is it taken as never placed (REJECTED); a fill that still turns up later is booked (it is the
   bot's order), and reconciliation checks the balances.

At start (and periodically) :meth:`OrderManager.reconcile` brings the ledger in line with the venue
(`bot.orders.reconciliation`); the daemon must not trade until it passes.

The parts, composed: `bot.orders.tracking.OrderTracker` applies the venue's answers and fills to the ledger and
the bot's book, `bot.orders.reconciliation` compares ledger, book and venue, `bot.orders.state` is the state machine,
`bot.orders.sizing` makes client order ids and sizes orders. Ledger calls block (SQLite), so they run in a worker
thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import structlog

from adapters.errors import AdapterError, FatalError, OrderNotFound, OrderRejected
from adapters.types import ClientOrderId, Fill, Order, OrderRequest, Side, ms_from_utc, split_symbol
from adapters.venue import ExchangeAdapter
from bot.clock import utc_now
from bot.events import Event
from bot.ledger.store import Ledger
from bot.ledger.types import ClosedTrade
from bot.orders.book import Book
from bot.orders.reconciliation import ReconciliationReport, accept_balances, reconcile
from bot.orders.state import PENDING_STATES, UNCONFIRMED_STATES, IllegalTransition, S
from bot.orders.tracking import OrderTracker

log = structlog.get_logger()

ZERO = Decimal(0)
T = TypeVar("T")


@dataclass(frozen=True)
class LookupConfig:
    """How an order whose outcome is unknown is looked for (config/bot/default.yaml `bot.order_lookup`)."""

    window_s: float = 60.0
    """How long the venue is asked before an order no source has seen is taken as never placed."""
    attempts: int = 6
    """Lookups after the first one, spread over the window with doubling gaps."""
    trades_margin_s: float = 60.0
    """The trade history is searched from this long before the order was written (venue clock skew)."""

    def __post_init__(self) -> None:
        if not self.window_s > 0:
            raise ValueError(f"order_lookup.window_s must be > 0, was {self.window_s}")
        if self.attempts < 1:
            raise ValueError(f"order_lookup.attempts must be >= 1, was {self.attempts}")
        if self.trades_margin_s < 0:
            raise ValueError(f"order_lookup.trades_margin_s must be >= 0, was {self.trades_margin_s}")

    def delays(self) -> list[float]:
        """Seconds to wait before each retry: doubling gaps that add up to the window."""
        unit = self.window_s / (2**self.attempts - 1)
        return [unit * 2**i for i in range(self.attempts)]


class SymbolBlocked(Exception):
    """An order of this symbol has an unknown outcome still being resolved: send nothing for it until then."""


class OrderManager:
    """Send orders through the state machine, keep the ledger and book in step with the venue, and reconcile."""

    def __init__(
        self,
        ledger: Ledger,
        venue: ExchangeAdapter,
        *,
        bot_id: str,
        book: Book | None = None,
        clock: Callable[[], datetime] = utc_now,
        order_timeout_s: float = 60.0,
        submit_timeout_s: float = 10.0,
        lookup: LookupConfig | None = None,
        balance_tolerance: Decimal = Decimal("1e-8"),
        fill_lookback_s: float = 86_400.0,
        emit: Callable[[Event], None] | None = None,
        on_trade_closed: Callable[[ClosedTrade], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        inline_db: bool = False,
        quiet: bool = False,
    ) -> None:
        """Manage orders of `venue`, recorded in `ledger` (and, for the bot's own fills, in `book`).

        Args:
            order_timeout_s: an open order older than this is cancelled by `check_timeouts`.
            submit_timeout_s: deadline of one `create_order` call; past it the order is UNKNOWN and resolved.
            lookup: how an order with an unknown outcome is looked for.
            balance_tolerance: absolute difference between venue and ledger balances still taken as equal.
            fill_lookback_s: how far before the oldest ledger order to look for fills on the first sync.
            emit: receives every order and fill event (to forward to the sinks).
            on_trade_closed: called with each round trip the bot's fills close (the risk manager's cooldown).
            sleep: waits between lookups (tests pass one that does not wait).
            inline_db: run the ledger calls on the event loop's thread (a backtest; see `OrderTracker`).
            quiet: log warnings and errors only (a backtest).
        """
        self.tracker = OrderTracker(
            ledger,
            venue,
            bot_id=bot_id,
            book=book,
            clock=clock,
            fill_lookback_s=fill_lookback_s,
            emit=emit,
            on_trade_closed=on_trade_closed,
            inline_db=inline_db,
            quiet=quiet,
        )
        self.order_timeout_s = order_timeout_s
        self.submit_timeout_s = submit_timeout_s
        self.lookup = lookup or LookupConfig()
        self.balance_tolerance = balance_tolerance
        self._sleep = sleep
        self._log = self.tracker.log
        self._unresolved: dict[ClientOrderId, str] = {}
        self._tasks: dict[ClientOrderId, asyncio.Task[Order]] = {}

    @property
    def ledger(self) -> Ledger:
        """The ledger the orders are recorded in."""
        return self.tracker.ledger

    @property
    def venue(self) -> ExchangeAdapter:
        """The venue the orders go to."""
        return self.tracker.venue

    @property
    def book(self) -> Book | None:
        """The bot's own book (None when the manager runs without one)."""
        return self.tracker.book

    @property
    def clock(self) -> Callable[[], datetime]:
        """The manager's clock."""
        return self.tracker.clock

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking ledger call the way this manager's tracker does (worker thread, or inline)."""
        return await self.tracker.db(fn, *args, **kwargs)

    @property
    def fills_recorded(self) -> deque[Fill]:
        """The latest fills of the bot's orders recorded as new."""
        return self.tracker.fills_recorded

    # ------------------------------------------------------------------------------------- submit

    def is_blocked(self, symbol: str) -> bool:
        """Whether an order of `symbol` has an unknown outcome still being resolved (send nothing new for it)."""
        return symbol in self._unresolved.values()

    def is_resolving(self, client_order_id: ClientOrderId) -> bool:
        """Whether the outcome of this order is being looked up in the background (ask the venue nothing else)."""
        return client_order_id in self._unresolved

    async def resolve_missing(self, order: Order) -> Order:
        """An unconfirmed order the venue's order lookup does not know: resolve it over the lookup window."""
        return await self._resolve_unconfirmed(order)

    async def submit(
        self, request: OrderRequest, *, model_sha: str | None = None, reference_price: Decimal | None = None
    ) -> Order:
        """Record the order durably, send it once, and return the ledger's view of it afterwards.

        The result may be UNKNOWN: it is then being resolved in the background and the symbol is blocked.
        `reference_price` (the decision's price) sizes what a market buy reserves of the book's quote.

        Raises:
            SymbolBlocked: an earlier order of the symbol is unresolved (nothing is sent).
            DuplicateOrderError: the client order id was used before (nothing is sent).
            FatalError: the venue said to stop trading; the order is left UNKNOWN for reconciliation.
        """
        cid = request.client_order_id
        if self.is_blocked(request.symbol):
            raise SymbolBlocked(
                f"submit {request.symbol} {cid}: an earlier order of {request.symbol} has an unknown outcome "
                "still being resolved; nothing is sent until it is"
            )
        tracker = self.tracker
        await tracker.db(tracker.ledger.record_new_order, request, ts=self.clock(), model_sha=model_sha, sent=True)
        self._reserve(request, reference_price)
        self._log.info(
            "order_submitted",
            client_order_id=cid,
            symbol=request.symbol,
            side=request.side.value,
            amount=str(request.amount),
            price=None if request.price is None else str(request.price),
        )
        sent = Order(cid, request.symbol, request.side, request.type, request.amount, S.SENT, price=request.price)
        if tracker.publishing:
            tracker.send_event(tracker.order_event(sent, None, model_sha))
        return await self._send(request)

    def _reserve(self, request: OrderRequest, reference_price: Decimal | None) -> None:
        book = self.book
        if book is None:
            return
        base, quote = split_symbol(request.symbol)
        if request.side is Side.BUY:
            price = request.price if request.price is not None else reference_price
            if price is not None:
                book.reserve(request.client_order_id, quote, request.amount * price, for_amount=request.amount)
        else:
            book.reserve(request.client_order_id, base, request.amount, for_amount=request.amount)

    async def _send(self, request: OrderRequest) -> Order:
        cid = request.client_order_id
        tracker = self.tracker
        try:
            async with asyncio.timeout(self.submit_timeout_s):
                venue_order = await self.venue.create_order(request)
        except OrderRejected as e:
            self._log.warning("order_rejected", client_order_id=cid, symbol=request.symbol, error=str(e))
            return await tracker.set_status(cid, S.REJECTED, f"rejected: {e}")
        except FatalError as e:
            self._unresolved[cid] = request.symbol
            await tracker.set_status(cid, S.UNKNOWN, f"fatal venue error: {e}")
            raise
        except asyncio.CancelledError:
            # Whether the venue got it is unknown; record that before unwinding (reconciliation resolves it).
            self._unresolved[cid] = request.symbol
            tracker.mark_unknown_now(cid, "submission cancelled")
            raise
        except Exception as e:
            # OrderStateUnknown, TransientError, TimeoutError or anything unexpected: the order may exist.
            self._log.warning(
                "order_state_unknown", client_order_id=cid, symbol=request.symbol, error=f"{type(e).__name__}: {e}"
            )
            self._unresolved[cid] = request.symbol
            await tracker.set_status(cid, S.UNKNOWN, f"{type(e).__name__}: {e}")
            order = await self.resolve(cid)
            if order.status in UNCONFIRMED_STATES:
                self._start_resolution(order)
            else:
                self._unresolved.pop(cid, None)
            return order
        return await tracker.apply(venue_order)

    # ------------------------------------------------------------------------------------- resolution

    async def resolve(self, client_order_id: ClientOrderId) -> Order:
        """Look an order up once by client order id: order lookup, then open orders, then the trade history.

        Records what the venue says and returns the ledger's view. Never sends anything; an order no source
        knows keeps its state (the caller decides, after the lookup window, that it was never placed).
        """
        tracker = self.tracker
        order = await tracker.db(tracker.ledger.get_order, client_order_id)
        if order is None:
            raise IllegalTransition(f"resolve: order {client_order_id} is not in the ledger")
        try:
            venue_order = await self.venue.fetch_order(order.symbol, client_order_id)
        except OrderNotFound:
            pass
        except AdapterError as e:
            self._log.info("order_lookup_failed", client_order_id=client_order_id, source="order", error=str(e))
        else:
            return await tracker.apply(venue_order, reason="resolved by lookup")
        if order.status.is_final:
            return order
        try:
            for venue_order in await self.venue.fetch_open_orders(order.symbol):
                if venue_order.client_order_id == client_order_id:
                    return await tracker.apply(venue_order, reason="resolved by open orders")
        except AdapterError as e:
            self._log.info("order_lookup_failed", client_order_id=client_order_id, source="open_orders", error=str(e))
        return await self._resolve_by_trades(order)

    async def _resolve_by_trades(self, order: Order) -> Order:
        tracker = self.tracker
        assert order.created_at is not None
        since = ms_from_utc(order.created_at - timedelta(seconds=self.lookup.trades_margin_s))
        try:
            trades = await self.venue.fetch_my_trades(order.symbol, since)
        except AdapterError as e:
            self._log.info(
                "order_lookup_failed", client_order_id=order.client_order_id, source="my_trades", error=str(e)
            )
            return order
        ours = [f for f in trades if f.client_order_id == order.client_order_id]
        if not ours:
            return order
        for fill in ours:
            await tracker.record_fill(fill)
        filled = await tracker.db(tracker.ledger.filled_by_fills, order.client_order_id)
        status = S.FILLED if filled >= order.amount else S.PARTIALLY_FILLED
        reason = "resolved by trade history"
        current = await tracker.db(tracker.ledger.get_order, order.client_order_id)
        assert current is not None
        if current.status.is_final:
            return current
        notional = sum((f.amount * f.price for f in ours), ZERO)
        updated = await tracker.db(
            tracker.ledger.transition_order,
            order.client_order_id,
            status,
            ts=self.clock(),
            expected_from=current.status,
            reason=reason,
            venue_order_id=ours[0].venue_order_id,
            filled=filled,
            average_price=notional / sum((f.amount for f in ours), ZERO),
        )
        self._log.info(
            "order_status_changed",
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            from_status=current.status.value,
            to_status=status.value,
            reason=reason,
        )
        if self.book is not None and status is S.FILLED:
            self.book.release(order.client_order_id)
        if tracker.publishing:
            tracker.send_event(tracker.order_event(updated, reason))
        return updated

    def _start_resolution(self, order: Order) -> None:
        cid = order.client_order_id
        self._unresolved[cid] = order.symbol
        if cid not in self._tasks:
            task = asyncio.get_running_loop().create_task(self._resolve_over_window(order), name=f"resolve-{cid}")
            self._tasks[cid] = task

    async def _resolve_over_window(self, order: Order) -> Order:
        cid = order.client_order_id
        try:
            elapsed = 0.0
            if order.created_at is not None:
                elapsed = max((self.clock() - order.created_at).total_seconds(), 0.0)
            for delay in self.lookup.delays():
                if elapsed >= self.lookup.window_s:
                    break
                await self._sleep(delay)
                elapsed += delay
                current = await self.resolve(cid)
                if current.status not in UNCONFIRMED_STATES:
                    self._log.info("order_state_resolved", client_order_id=cid, status=current.status.value)
                    return current
            latest = await self.tracker.db(self.ledger.get_order, cid)
            if latest is not None and latest.status not in UNCONFIRMED_STATES:
                return latest  # resolved meanwhile (reconciliation, a pushed fill)
            self._log.warning(
                "order_never_placed",
                client_order_id=cid,
                symbol=order.symbol,
                window_s=self.lookup.window_s,
                detail="no order lookup, open order or trade of this client order id over the window",
            )
            return await self.tracker.set_status(
                cid, S.REJECTED, f"not found on the venue over {self.lookup.window_s:g} s: never placed"
            )
        finally:
            self._unresolved.pop(cid, None)
            self._tasks.pop(cid, None)

    async def _resolve_unconfirmed(self, order: Order) -> Order:
        """Reconciliation's hook: an unconfirmed order the lookup does not know."""
        current = await self.resolve(order.client_order_id)
        if current.status in UNCONFIRMED_STATES:
            age = None if current.created_at is None else (self.clock() - current.created_at).total_seconds()
            if age is not None and age >= self.lookup.window_s and order.client_order_id not in self._tasks:
                # Older than the lookup window (a restart long after the crash): no source knows it, so it was
                # never placed.
                self._log.warning("order_never_placed", client_order_id=order.client_order_id, age_s=age)
                return await self.tracker.set_status(
                    order.client_order_id, S.REJECTED, f"not found on the venue {age:.0f} s after sending: never placed"
                )
            self._start_resolution(current)
        elif order.client_order_id not in self._tasks:
            self._unresolved.pop(order.client_order_id, None)
        return current

    async def wait_resolved(self, symbol: str | None = None) -> None:
        """Wait until the background resolutions (of `symbol`, or all) are done."""
        tasks = [t for cid, t in self._tasks.items() if symbol is None or self._unresolved.get(cid) == symbol]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Stop the background resolutions (their orders stay UNKNOWN; the next reconciliation resolves them)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------------------------- fills

    async def apply(self, venue_order: Order, *, reason: str | None = None, fills_pushed: bool = False) -> Order:
        """Bring the ledger's copy of an order in line with the venue's snapshot; record new fills (unless the
        venue pushed them: `fills_pushed`)."""
        return await self.tracker.apply(venue_order, reason=reason, fills_pushed=fills_pushed)

    async def record_fill(self, fill: Fill) -> bool:
        """Record a fill a venue pushed (ledger once by trade id, book, events); return whether it was new."""
        return await self.tracker.record_fill(fill) is not None

    async def sync_fills(self, symbols: Iterable[str]) -> list[Fill]:
        """Record the venue's fills since the last one seen; return the new ones."""
        return await self.tracker.sync_fills(symbols)

    # ------------------------------------------------------------------------------------- cancel and timeouts

    async def cancel(self, client_order_id: ClientOrderId, *, reason: str = "cancel requested") -> Order:
        """Cancel an open order on the venue and record the result."""
        tracker = self.tracker
        order = await tracker.db(tracker.ledger.get_order, client_order_id)
        if order is None:
            raise IllegalTransition(f"cancel: order {client_order_id} is not in the ledger")
        if order.status.is_final:
            return order
        try:
            venue_order = await self.venue.cancel_order(order.symbol, client_order_id)
        except OrderNotFound:
            return await self.resolve(client_order_id)
        return await tracker.apply(venue_order, reason=reason)

    async def check_timeouts(self) -> list[Order]:
        """Cancel open orders older than the timeout and resolve unconfirmed ones; return the orders touched."""
        now = self.clock()
        limit = timedelta(seconds=self.order_timeout_s)
        touched = []
        for order in await self.tracker.db(self.ledger.orders, PENDING_STATES):
            if order.created_at is None or now - order.created_at < limit:
                continue
            if order.status in UNCONFIRMED_STATES:
                if order.client_order_id not in self._tasks:
                    touched.append(await self._resolve_unconfirmed(order))
            else:
                self._log.info(
                    "order_timed_out",
                    client_order_id=order.client_order_id,
                    symbol=order.symbol,
                    age_s=(now - order.created_at).total_seconds(),
                )
                touched.append(await self.cancel(order.client_order_id, reason="timeout"))
        return touched

    # ------------------------------------------------------------------------------------- reconciliation

    async def reconcile(self, symbols: Collection[str], *, raise_on_discrepancy: bool = True) -> ReconciliationReport:
        """Bring the ledger (and book) in line with the venue; raise ReconciliationError on what cannot be explained."""
        return await reconcile(
            self.tracker,
            symbols,
            tolerance=self.balance_tolerance,
            resolve_unconfirmed=self._resolve_unconfirmed,
            raise_on_discrepancy=raise_on_discrepancy,
        )

    async def accept_balances(self, symbols: Collection[str]) -> dict[str, Decimal]:
        """Take the venue's current balances as the new baseline (after a human checked a deposit or withdrawal)."""
        return await accept_balances(self.tracker, symbols)
