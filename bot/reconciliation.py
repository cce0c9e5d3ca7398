"""Reconciliation: bring the ledger in line with the venue, and refuse to trade while they disagree.

Every order the ledger holds in NEW, SENT, UNKNOWN, OPEN or PARTIALLY_FILLED is looked up by client order id,
fills since the last one seen are recorded (idempotently, by trade id), open orders the ledger does not know and
balances that differ from what the ledger's fills explain raise :class:`ReconciliationError` naming what differs.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from decimal import Decimal

from adapters.errors import OrderNotFound
from adapters.types import Balance, ClientOrderId, Fill, Order, OrderStatus
from bot.ledger import split_symbol
from bot.order_state import PENDING_STATES, UNCONFIRMED_STATES, S
from bot.order_tracking import OrderTracker

ZERO = Decimal(0)


class ReconciliationError(Exception):
    """The ledger and the venue disagree in a way that cannot be resolved automatically: do not trade."""

    def __init__(self, discrepancies: list[str]) -> None:
        self.discrepancies = discrepancies
        super().__init__("reconciliation failed: " + "; ".join(discrepancies))


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


BASELINE_PREFIX = "reconcile.baseline."


class OrderReconciler(OrderTracker):
    """Reconcile the ledger with the venue (see the module docstring)."""

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
