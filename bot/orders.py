"""Order manager: submission, resolution, cancellation and timeouts, on top of tracking and reconciliation.

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

The parts: client order ids and sizing (`bot.order_sizing`), the state machine (`bot.order_state`), applying the
venue's answers and fills to the ledger (`bot.order_tracking`) and reconciliation (`bot.reconciliation`); their
public names stay importable from here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from datetime import timedelta
from typing import Any

import structlog

from adapters.errors import FatalError, OrderNotFound, OrderRejected
from adapters.types import ClientOrderId, Order, OrderRequest
from adapters.venue import ExchangeAdapter
from bot.clock import utc_now
from bot.ledger import Ledger
from bot.order_sizing import OrderPlan, new_client_order_id, plan_order
from bot.order_state import (
    ALLOWED_TRANSITIONS,
    PENDING_STATES,
    UNCONFIRMED_STATES,
    IllegalTransition,
    S,
    check_transition,
)
from bot.order_tracking import LAST_FILL_PREFIX, RECENT_FILLS
from bot.reconciliation import BASELINE_PREFIX, OrderReconciler, ReconciliationError, ReconciliationReport

__all__ = [
    "ALLOWED_TRANSITIONS",
    "BASELINE_PREFIX",
    "LAST_FILL_PREFIX",
    "PENDING_STATES",
    "RECENT_FILLS",
    "UNCONFIRMED_STATES",
    "IllegalTransition",
    "OrderManager",
    "OrderPlan",
    "ReconciliationError",
    "ReconciliationReport",
    "check_transition",
    "new_client_order_id",
    "plan_order",
    "reconcile",
    "utc_now",
]

log = structlog.get_logger()


class OrderManager(OrderReconciler):
    """Send orders through the state machine, keep the ledger in step with the venue, and reconcile the two."""

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


async def reconcile(
    ledger: Ledger, venue: ExchangeAdapter, symbols: Collection[str], *, bot_id: str, **kwargs: Any
) -> ReconciliationReport:
    """Reconcile `ledger` with `venue` for `symbols`; raise ReconciliationError if they cannot be brought to agree."""
    return await OrderManager(ledger, venue, bot_id=bot_id, **kwargs).reconcile(symbols)
