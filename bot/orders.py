"""Order manager: client order ids, order sizing, the order state machine, submission, timeouts, reconciliation.

The submit flow never loses or duplicates an order across a crash:

1. The order is written to the ledger *before* it is sent, in one durable commit that records NEW and the
   NEW -> SENT transition (one commit instead of two keeps the pre-send write inside the latency budget; a row
   in NEW and a row in SENT are treated alike by reconciliation, so nothing depends on the split).
2. ``venue.create_order`` is awaited; its answer updates the ledger. A rejection ends the order (REJECTED). Any
   outcome that leaves doubt (``OrderStateUnknown``, a transient error, a timeout, cancellation, an unexpected
   exception) marks it UNKNOWN and resolves it by ``venue.fetch_order(symbol, client_order_id)``.
3. An order is only ever re-sent with the SAME client order id, and only from the submit path right after the
   venue confirmed it does not have it. Venues refuse (or return) a duplicate client order id, so a resend
   cannot create a second order.

At start (and periodically) :meth:`OrderManager.reconcile` brings the ledger in line with the venue: every
order the ledger holds in NEW, SENT, UNKNOWN, OPEN or PARTIALLY_FILLED is looked up by client order id, fills
since the last one seen are recorded (idempotently, by trade id), open orders the ledger does not know and
balances that differ from what the ledger's fills explain raise :class:`ReconciliationError` naming what
differs. The daemon must not trade until reconciliation passes.

Ledger calls block (SQLite), so the async methods run them in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import re
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import structlog

from adapters.errors import FatalError, InvalidOrder, OrderNotFound, OrderRejected
from adapters.types import (
    Balance,
    ClientOrderId,
    Fill,
    Market,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    ms_from_utc,
)
from adapters.venue import ExchangeAdapter
from bot.events import Event, FillEvent, OrderEvent
from bot.ledger import FillResult, Ledger, split_symbol

log = structlog.get_logger()

T = TypeVar("T")
ZERO = Decimal(0)

S = OrderStatus
RECENT_FILLS = 1024
"""Fills `OrderManager.fills_recorded` keeps in memory (the latest ones; the ledger keeps every fill)."""

ALLOWED_TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    # NEW is written before sending; reconciliation may find it on the venue in any state, or not at all.
    S.NEW: frozenset({S.SENT, S.OPEN, S.PARTIALLY_FILLED, S.FILLED, S.CANCELLED, S.REJECTED, S.UNKNOWN}),
    S.SENT: frozenset({S.OPEN, S.PARTIALLY_FILLED, S.FILLED, S.CANCELLED, S.REJECTED, S.UNKNOWN}),
    S.UNKNOWN: frozenset({S.OPEN, S.PARTIALLY_FILLED, S.FILLED, S.CANCELLED, S.REJECTED}),
    S.OPEN: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.CANCELLED, S.UNKNOWN}),
    S.PARTIALLY_FILLED: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.CANCELLED, S.UNKNOWN}),
    S.FILLED: frozenset(),
    S.CANCELLED: frozenset(),
    S.REJECTED: frozenset(),
}
"""Legal state changes; anything else is a bug or a venue inconsistency and raises IllegalTransition."""

PENDING_STATES = frozenset({S.NEW, S.SENT, S.UNKNOWN, S.OPEN, S.PARTIALLY_FILLED})
"""States reconciliation must resolve against the venue."""

UNCONFIRMED_STATES = frozenset({S.NEW, S.SENT, S.UNKNOWN})
"""States in which the venue may or may not have the order."""


class IllegalTransition(Exception):
    """An order was asked to move between states the state machine does not allow."""


class ReconciliationError(Exception):
    """The ledger and the venue disagree in a way that cannot be resolved automatically: do not trade."""

    def __init__(self, discrepancies: list[str]) -> None:
        self.discrepancies = discrepancies
        super().__init__("reconciliation failed: " + "; ".join(discrepancies))


def check_transition(client_order_id: str, current: OrderStatus, new: OrderStatus) -> None:
    """Raise IllegalTransition (and log it) unless the state machine allows `current` -> `new`."""
    if new in ALLOWED_TRANSITIONS[current]:
        return
    log.error(
        "order_transition_illegal", client_order_id=client_order_id, from_status=current.value, to_status=new.value
    )
    raise IllegalTransition(f"order {client_order_id}: illegal transition {current.value} -> {new.value}")


# --------------------------------------------------------------------------------------------- ids and sizing

_ID_COUNTER = itertools.count(1)
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9]")
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _BASE36[r] + out
        if not n:
            return out


def new_client_order_id(bot_id: str, symbol: str, *, now: datetime | None = None) -> ClientOrderId:
    """Return a fresh client order id: bot, symbol, time, a process counter and random bits (≤ 36 chars).

    Unique across restarts (time + random) and within a process (the counter), and made of letters, digits
    and dashes only, which every exchange accepts (Binance: ``^[.A-Z:/a-z0-9_-]{1,36}$``).
    """
    bot = _ID_UNSAFE.sub("", bot_id)[:6] or "bot"
    sym = _ID_UNSAFE.sub("", symbol)[:8].lower() or "sym"
    ts_ms = ms_from_utc(now) if now is not None else time.time_ns() // 1_000_000
    counter = _base36(next(_ID_COUNTER) % 36**4)
    return ClientOrderId(f"{bot}-{sym}-{_base36(ts_ms)}{counter}-{os.urandom(3).hex()}")


@dataclass(frozen=True, slots=True)
class OrderPlan:
    """The order that moves a position to its target, or why there is none."""

    request: OrderRequest | None
    """The order to send (amount and price rounded by the market's rules), or None."""
    reason: str | None
    """Why no order is needed or possible (None when there is an order)."""
    target_amount: Decimal
    """Target position in the base currency."""
    delta: Decimal
    """Target minus current position, before rounding."""


def plan_order(
    target_fraction: float | Decimal,
    current_position: Decimal,
    price: Decimal,
    market: Market,
    equity: Decimal,
    *,
    client_order_id: ClientOrderId,
    order_type: OrderType = OrderType.MARKET,
    allow_short: bool = False,
) -> OrderPlan:
    """Size the order that brings `current_position` to `target_fraction` of `equity` at `price`.

    The target is a signed fraction of equity (1 = all equity long, -1 = all short, clipped to [-1, 1], and to
    [0, 1] without `allow_short`). The amount is rounded down to the lot step and a limit price to the tick;
    an order below the market's minimum amount or notional gives no request and a reason.
    """
    fraction = Decimal(str(target_fraction)) if isinstance(target_fraction, float) else target_fraction
    if not fraction.is_finite():
        raise ValueError(f"plan_order {market.symbol}: target fraction must be finite, was {target_fraction}")
    if price <= 0 or not price.is_finite():
        raise ValueError(f"plan_order {market.symbol}: price must be a finite number > 0, was {price}")
    low = Decimal(-1) if allow_short else ZERO
    fraction = min(max(fraction, low), Decimal(1))
    target = fraction * max(equity, ZERO) / price
    delta = target - current_position
    amount = market.round_amount(abs(delta))
    if amount <= 0:
        return OrderPlan(None, "at_target", target, delta)
    limit_price = market.round_price(price) if order_type is OrderType.LIMIT else None
    try:
        market.check_order(amount, price)
    except InvalidOrder as e:
        return OrderPlan(None, f"below_minimum: {e}", target, delta)
    request = OrderRequest(
        client_order_id=client_order_id,
        symbol=market.symbol,
        side=Side.BUY if delta > 0 else Side.SELL,
        type=order_type,
        amount=amount,
        price=limit_price,
    )
    return OrderPlan(request, None, target, delta)


# --------------------------------------------------------------------------------------------- reconciliation report


@dataclass
class ReconciliationReport:
    """What a reconciliation changed and found."""

    orders_updated: list[tuple[ClientOrderId, OrderStatus, OrderStatus]] = field(default_factory=list)
    """(client order id, state before, state after) of each order the venue's answer changed."""
    fills_recorded: int = 0
    """Fills new to the ledger."""
    foreign_fills: list[str] = field(default_factory=list)
    """Trade ids of recorded fills whose client order id the ledger does not know."""
    baselines_set: dict[str, Decimal] = field(default_factory=dict)
    """Currencies whose balance baseline (holdings not explained by the ledger's fills) was set this time."""
    discrepancies: list[str] = field(default_factory=list)
    """Disagreements that could not be resolved (empty when reconciliation passed)."""


def utc_now() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)


BASELINE_PREFIX = "reconcile.baseline."
LAST_FILL_PREFIX = "fills.last_ms."


# --------------------------------------------------------------------------------------------- the manager


class OrderManager:
    """Send orders through the state machine, keep the ledger in step with the venue, and reconcile the two."""

    def __init__(
        self,
        ledger: Ledger,
        venue: ExchangeAdapter,
        *,
        bot_id: str,
        clock: Callable[[], datetime] = utc_now,
        order_timeout_s: float = 60.0,
        submit_timeout_s: float = 10.0,
        max_resends: int = 1,
        balance_tolerance: Decimal = Decimal("1e-8"),
        fill_lookback_s: float = 86_400.0,
        emit: Callable[[Event], None] | None = None,
    ) -> None:
        """Manage orders of `venue`, recorded in `ledger`.

        Args:
            order_timeout_s: an open order older than this is cancelled by `check_timeouts`.
            submit_timeout_s: deadline of one `create_order` call; past it the order is UNKNOWN and resolved.
            max_resends: how often an order the venue confirms it lacks is re-sent (same id) after a failure.
            balance_tolerance: absolute difference between venue and ledger balances still taken as equal.
            fill_lookback_s: how far before the oldest ledger order to look for fills on the first sync.
            emit: receives every order and fill event (to forward to the sinks).
        """
        self.ledger = ledger
        self.venue = venue
        self.bot_id = bot_id
        self.clock = clock
        self.order_timeout_s = order_timeout_s
        self.submit_timeout_s = submit_timeout_s
        self.max_resends = max_resends
        self.balance_tolerance = balance_tolerance
        self.fill_lookback_s = fill_lookback_s
        self._emit = emit
        self._log = log.bind(bot_id=bot_id, venue=venue.name)
        self.fills_recorded: deque[Fill] = deque(maxlen=RECENT_FILLS)
        """The latest fills this manager recorded as new, in order (bounded: the ledger keeps them all)."""
        self._fill_watchers: list[list[Fill]] = []

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # SQLite writes block; keep them off the event loop.
        return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))

    def _send_event(self, event: Event) -> None:
        if self._emit is not None:
            self._emit(event)

    def _order_event(self, order: Order, reason: str | None, model_sha: str | None = None) -> OrderEvent:
        return OrderEvent(
            ts=self.clock(),
            bot_id=self.bot_id,
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,
            order_type=order.type,
            amount=order.amount,
            status=order.status,
            filled=order.filled,
            price=order.price,
            average_price=order.average_price,
            venue_order_id=order.venue_order_id,
            reason=reason,
            model_sha=model_sha,
        )

    # ------------------------------------------------------------------------------------- state changes

    async def _set_status(self, client_order_id: ClientOrderId, status: OrderStatus, reason: str) -> Order:
        order = await self._db(self.ledger.get_order, client_order_id)
        if order is None:
            raise IllegalTransition(f"order {client_order_id}: not in the ledger")
        if order.status is status:
            return order
        check_transition(client_order_id, order.status, status)
        await self._db(
            self.ledger.update_order,
            client_order_id,
            status,
            ts=self.clock(),
            expected_from=order.status,
            reason=reason,
        )
        self._log.info(
            "order_status_changed",
            client_order_id=client_order_id,
            symbol=order.symbol,
            from_status=order.status.value,
            to_status=status.value,
            reason=reason,
        )
        updated = await self._db(self.ledger.get_order, client_order_id)
        assert updated is not None
        self._send_event(self._order_event(updated, reason))
        return updated

    def _mark_unknown_now(self, client_order_id: ClientOrderId, reason: str) -> None:
        """Mark an order UNKNOWN synchronously (used while a cancellation unwinds, when nothing may be awaited)."""
        order = self.ledger.get_order(client_order_id)
        if order is not None and order.status in (S.NEW, S.SENT):
            self.ledger.update_order(
                client_order_id, S.UNKNOWN, ts=self.clock(), expected_from=order.status, reason=reason
            )

    async def apply(self, venue_order: Order, *, reason: str | None = None) -> Order:
        """Bring the ledger's copy of an order in line with the venue's snapshot; record new fills."""
        cid = venue_order.client_order_id
        current = await self._db(self.ledger.get_order, cid)
        if current is None:
            raise IllegalTransition(f"order {cid}: the venue returned an order the ledger does not hold")
        new_status = venue_order.status
        # A venue reports a fresh order as open; our NEW/SENT are internal states it never uses.
        if new_status in (S.NEW, S.SENT):
            new_status = S.OPEN
        if venue_order.filled < current.filled:
            self._log.warning(
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
        await self._db(
            self.ledger.update_order,
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
        updated = await self._db(self.ledger.get_order, cid)
        assert updated is not None
        if new_status is not current.status:
            self._log.info(
                "order_status_changed",
                client_order_id=cid,
                symbol=updated.symbol,
                from_status=current.status.value,
                to_status=new_status.value,
                reason=reason,
            )
        self._send_event(self._order_event(updated, reason))
        if updated.filled > current.filled:
            await self.sync_fills([updated.symbol])
        return updated

    # ------------------------------------------------------------------------------------- submit

    async def submit(self, request: OrderRequest, *, model_sha: str | None = None) -> Order:
        """Record the order durably, send it, and return the ledger's view of it afterwards.

        Raises:
            DuplicateOrderError: the client order id was used before (nothing is sent).
            FatalError: the venue said to stop trading; the order is left UNKNOWN for reconciliation.
        """
        cid = request.client_order_id
        await self._db(self.ledger.record_new_order, request, ts=self.clock(), model_sha=model_sha, sent=True)
        self._log.info(
            "order_submitted",
            client_order_id=cid,
            symbol=request.symbol,
            side=request.side.value,
            amount=str(request.amount),
            price=None if request.price is None else str(request.price),
        )
        sent = Order(cid, request.symbol, request.side, request.type, request.amount, S.SENT, price=request.price)
        self._send_event(self._order_event(sent, None, model_sha))
        return await self._send(request, attempt=0)

    async def _send(self, request: OrderRequest, *, attempt: int) -> Order:
        cid = request.client_order_id
        try:
            async with asyncio.timeout(self.submit_timeout_s):
                venue_order = await self.venue.create_order(request)
        except OrderRejected as e:
            self._log.warning("order_rejected", client_order_id=cid, symbol=request.symbol, error=str(e))
            return await self._set_status(cid, S.REJECTED, f"rejected: {e}")
        except FatalError as e:
            await self._set_status(cid, S.UNKNOWN, f"fatal venue error: {e}")
            raise
        except asyncio.CancelledError:
            # Whether the venue got it is unknown; record that before unwinding (reconciliation resolves it).
            self._mark_unknown_now(cid, "submission cancelled")
            raise
        except Exception as e:
            # OrderStateUnknown, TransientError, TimeoutError or anything unexpected: the order may exist.
            self._log.warning(
                "order_state_unknown", client_order_id=cid, symbol=request.symbol, error=f"{type(e).__name__}: {e}"
            )
            await self._set_status(cid, S.UNKNOWN, f"{type(e).__name__}: {e}")
            return await self.resolve(cid, request=request, attempt=attempt)
        return await self.apply(venue_order)

    async def resolve(
        self, client_order_id: ClientOrderId, *, request: OrderRequest | None = None, attempt: int = 0
    ) -> Order:
        """Look an order up on the venue by client order id and record what it says.

        An unconfirmed order the venue does not have is re-sent with the same id when `request` is given and
        resends remain; otherwise it is marked REJECTED (it never reached the venue).
        """
        order = await self._db(self.ledger.get_order, client_order_id)
        if order is None:
            raise IllegalTransition(f"resolve: order {client_order_id} is not in the ledger")
        try:
            venue_order = await self.venue.fetch_order(order.symbol, client_order_id)
        except OrderNotFound:
            if order.status not in UNCONFIRMED_STATES:
                self._log.error("order_missing_on_venue", client_order_id=client_order_id, status=order.status.value)
                return await self._set_status(client_order_id, S.UNKNOWN, "missing on venue")
            if request is not None and attempt < self.max_resends:
                self._log.info("order_resent", client_order_id=client_order_id, attempt=attempt + 1)
                return await self._send(request, attempt=attempt + 1)
            return await self._set_status(client_order_id, S.REJECTED, "not found on venue: never placed")
        return await self.apply(venue_order, reason="resolved by lookup")

    # ------------------------------------------------------------------------------------- cancel and timeouts

    async def cancel(self, client_order_id: ClientOrderId, *, reason: str = "cancel requested") -> Order:
        """Cancel an open order on the venue and record the result."""
        order = await self._db(self.ledger.get_order, client_order_id)
        if order is None:
            raise IllegalTransition(f"cancel: order {client_order_id} is not in the ledger")
        if order.status.is_final:
            return order
        try:
            venue_order = await self.venue.cancel_order(order.symbol, client_order_id)
        except OrderNotFound:
            return await self.resolve(client_order_id)
        return await self.apply(venue_order, reason=reason)

    async def check_timeouts(self) -> list[Order]:
        """Cancel open orders older than the timeout and resolve unconfirmed ones; return the orders touched."""
        now = self.clock()
        limit = timedelta(seconds=self.order_timeout_s)
        touched = []
        for order in await self._db(self.ledger.orders, PENDING_STATES):
            if order.created_at is None or now - order.created_at < limit:
                continue
            if order.status in UNCONFIRMED_STATES:
                touched.append(await self.resolve(order.client_order_id))
            else:
                self._log.info(
                    "order_timed_out",
                    client_order_id=order.client_order_id,
                    symbol=order.symbol,
                    age_s=(now - order.created_at).total_seconds(),
                )
                touched.append(await self.cancel(order.client_order_id, reason="timeout"))
        return touched

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
                result = await self._db(self.ledger.record_fill, fill)
                newest = max(newest, ms_from_utc(fill.timestamp))
                if result.inserted:
                    results.append(fill)
                    self.fills_recorded.append(fill)
                    for watcher in self._fill_watchers:
                        watcher.append(fill)
                    if await self._db(self.ledger.get_order, fill.client_order_id) is None:
                        self._log.warning(
                            "fill_unknown_order",
                            symbol=symbol,
                            trade_id=fill.trade_id,
                            client_order_id=fill.client_order_id,
                        )
                    self._on_new_fill(fill, result)
            if newest != since_ms:
                await self._db(self.ledger.set_state, LAST_FILL_PREFIX + symbol, str(newest), ts=self.clock())
        return results

    async def _fill_cursor(self, symbol: str) -> int | None:
        stored = await self._db(self.ledger.get_state, LAST_FILL_PREFIX + symbol)
        if stored is not None:
            return int(stored)
        ours = await self._db(self.ledger.orders, None, symbol)
        if not ours:
            return None  # nothing of ours to look for yet
        oldest = min(o.created_at for o in ours if o.created_at is not None)
        return ms_from_utc(oldest - timedelta(seconds=self.fill_lookback_s))

    def _on_new_fill(self, fill: Fill, result: FillResult) -> None:
        self._log.info(
            "fill_received",
            client_order_id=fill.client_order_id,
            symbol=fill.symbol,
            trade_id=fill.trade_id,
            amount=str(fill.amount),
            price=str(fill.price),
        )
        slippage: float | None = None
        if fill.requested_price is not None and fill.requested_price > 0:
            slippage = float(fill.side.sign * (fill.price - fill.requested_price) / fill.requested_price * 10_000)
        self._send_event(
            FillEvent(
                ts=fill.timestamp,
                bot_id=self.bot_id,
                trade_id=fill.trade_id,
                client_order_id=fill.client_order_id,
                symbol=fill.symbol,
                side=fill.side,
                amount=fill.amount,
                price=fill.price,
                fee=fill.fee,
                fee_currency=fill.fee_currency,
                is_maker=fill.is_maker,
                requested_price=fill.requested_price,
                slippage_bps=slippage,
            )
        )
        if result.closed_trade is not None:
            self._send_event(result.closed_trade.to_event(self.bot_id))

    # ------------------------------------------------------------------------------------- reconciliation

    async def _resolve_pending(self, report: ReconciliationReport) -> list[Order]:
        pending = await self._db(self.ledger.orders, PENDING_STATES)
        for order in pending:
            try:
                venue_order = await self.venue.fetch_order(order.symbol, order.client_order_id)
            except OrderNotFound:
                if order.status in UNCONFIRMED_STATES:
                    # Written before sending but never placed: close it without sending (the decision is stale).
                    reason = "never sent" if order.status is S.NEW else "not found on venue: never placed"
                    target = S.CANCELLED if order.status is S.NEW else S.REJECTED
                    await self._set_status(order.client_order_id, target, reason)
                    report.orders_updated.append((order.client_order_id, order.status, target))
                else:
                    report.discrepancies.append(
                        f"order {order.client_order_id} ({order.symbol}) is {order.status.value} in the ledger but "
                        f"the venue does not know it"
                    )
                continue
            updated = await self.apply(venue_order, reason="reconciliation")
            if updated.status is not order.status:
                report.orders_updated.append((order.client_order_id, order.status, updated.status))
        return pending

    async def reconcile(self, symbols: Collection[str], *, raise_on_discrepancy: bool = True) -> ReconciliationReport:
        """Resolve every pending ledger order on the venue, record missed fills, and compare open orders and balances.

        Raises:
            ReconciliationError: something differs that cannot be resolved (listed in the message).
        """
        report = ReconciliationReport()
        new_fills: list[Fill] = []
        self._fill_watchers.append(new_fills)
        try:
            pending = await self._resolve_pending(report)
            await self.sync_fills(symbols)
        finally:
            self._fill_watchers.remove(new_fills)
        report.fills_recorded = len(new_fills)
        # Orders are looked up one by one (new fills', venue's open ones): loading every order ever placed would
        # grow with the ledger (issue 6).
        known: dict[ClientOrderId, bool] = {}

        async def is_known(cid: ClientOrderId) -> bool:
            if cid not in known:
                known[cid] = await self._db(self.ledger.get_order, cid) is not None
            return known[cid]

        report.foreign_fills = [f.trade_id for f in new_fills if not await is_known(f.client_order_id)]

        for order in pending:
            ledger_order = await self._db(self.ledger.get_order, order.client_order_id)
            if ledger_order is None or ledger_order.filled == 0:
                continue
            by_fills = await self._db(self.ledger.filled_by_fills, order.client_order_id)
            if abs(by_fills - ledger_order.filled) > self.balance_tolerance:
                report.discrepancies.append(
                    f"order {order.client_order_id} ({order.symbol}): venue reports filled {ledger_order.filled} but "
                    f"the fills recorded add up to {by_fills}"
                )

        for symbol in symbols:
            for venue_order in await self.venue.fetch_open_orders(symbol):
                if not await is_known(venue_order.client_order_id):
                    report.discrepancies.append(
                        f"open order {venue_order.client_order_id} ({symbol} {venue_order.side.value} "
                        f"{venue_order.amount}) on the venue is not in the ledger; cancel it or adopt it first"
                    )

        await self._compare_balances(symbols, report)
        await self._db(self.ledger.set_state, "reconcile.last_at", self.clock().isoformat(), ts=self.clock())
        log_fn = self._log.error if report.discrepancies else self._log.info
        log_fn(
            "reconciliation_done",
            orders_updated=len(report.orders_updated),
            fills_recorded=report.fills_recorded,
            foreign_fills=len(report.foreign_fills),
            discrepancies=report.discrepancies,
        )
        if report.discrepancies and raise_on_discrepancy:
            raise ReconciliationError(report.discrepancies)
        return report

    async def _compare_balances(self, symbols: Collection[str], report: ReconciliationReport) -> None:
        currencies = sorted({c for s in symbols for c in split_symbol(s)})
        balances = await self.venue.fetch_balances()
        flows = await self._db(self.ledger.currency_flows)
        stored = await self._db(self.ledger.state, BASELINE_PREFIX)
        to_store: dict[str, str] = {}
        for currency in currencies:
            total = balances.get(currency, Balance(currency, ZERO)).total
            unexplained = total - flows.get(currency, ZERO)
            key = BASELINE_PREFIX + currency
            if key not in stored:
                to_store[key] = str(unexplained)
                report.baselines_set[currency] = unexplained
                continue
            baseline = Decimal(stored[key])
            if abs(unexplained - baseline) > self.balance_tolerance:
                report.discrepancies.append(
                    f"balance {currency}: venue holds {total}, the ledger's fills explain {flows.get(currency, ZERO)} "
                    f"on top of the baseline {baseline}, so {unexplained - baseline:+} is unaccounted for "
                    f"(deposit, withdrawal or a trade outside the bot? accept it with accept_balances)"
                )
        if to_store:
            await self._db(self.ledger.set_states, to_store, ts=self.clock())

    async def accept_balances(self, symbols: Collection[str]) -> dict[str, Decimal]:
        """Take the venue's current balances as the new baseline (after a human checked a deposit or withdrawal)."""
        currencies = sorted({c for s in symbols for c in split_symbol(s)})
        balances = await self.venue.fetch_balances()
        flows = await self._db(self.ledger.currency_flows)
        baselines = {c: balances.get(c, Balance(c, ZERO)).total - flows.get(c, ZERO) for c in currencies}
        await self._db(
            self.ledger.set_states, {BASELINE_PREFIX + c: str(v) for c, v in baselines.items()}, ts=self.clock()
        )
        self._log.warning("reconciliation_baseline_accepted", baselines={c: str(v) for c, v in baselines.items()})
        return baselines


async def reconcile(
    ledger: Ledger, venue: ExchangeAdapter, symbols: Collection[str], *, bot_id: str, **kwargs: Any
) -> ReconciliationReport:
    """Reconcile `ledger` with `venue` for `symbols`; raise ReconciliationError if they cannot be brought to agree."""
    return await OrderManager(ledger, venue, bot_id=bot_id, **kwargs).reconcile(symbols)
