"""Reconciliation: bring the ledger in line with the venue, and refuse to trade while they disagree.

Functions the order manager calls (composition: they take its `OrderTracker`, they are no base class of it).
Every order the ledger holds in NEW, SENT, UNKNOWN, OPEN or PARTIALLY_FILLED is looked up by client order id,
fills since the last one seen are recorded (idempotently, by trade id), and open orders the ledger does not know
raise :class:`ReconciliationError`.

Balances. With the bot's :class:`~bot.orders.book.Book`, every currency of the traded symbols must satisfy

    venue total = outside baseline + the book's holding + fills of orders that are not the bot's

where the *outside baseline* is what the account held outside the bot at its first start (venue total minus
the allocation), recorded in the ledger's state (``book.outside.<CCY>``). An allocation larger than the account,
a venue holding less than the book, or any other difference (a deposit, a withdrawal) is a discrepancy: the
bot refuses to trade until a human looks (and, for a deposit or withdrawal, calls ``accept_balances``). A change
of ``bot.capital`` between runs moves money between the outside and the bot (logged). Without a book (older
callers and tests) the venue's balances are compared with what the ledger's fills explain on top of a baseline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from decimal import Decimal

from adapters.errors import OrderNotFound
from adapters.types import Balance, ClientOrderId, Fill, Order, OrderStatus, ms_from_utc, split_symbol
from bot.errors import RefuseToTrade
from bot.orders.book import Book
from bot.orders.state import PENDING_STATES, UNCONFIRMED_STATES, S
from bot.orders.tracking import LAST_FILL_PREFIX, OrderTracker

ZERO = Decimal(0)

BASELINE_PREFIX = "reconcile.baseline."
"""Ledger-state keys of the book-less baseline (venue balance minus what the ledger's fills explain)."""
OUTSIDE_PREFIX = "book.outside."
"""Ledger-state keys of what the account held outside the bot, per currency (set at the first start)."""
CAPITAL_PREFIX = "book.capital."
"""Ledger-state keys of the allocation per currency the outside baseline was computed with."""


class ReconciliationError(RefuseToTrade):
    """The ledger and the venue disagree in a way that cannot be resolved automatically: do not trade (exit 3).

    The caller should stop trading and tell a human what `discrepancies` lists.
    """

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
    """Trade ids of recorded fills whose client order id the ledger does not know (not the bot's)."""
    baselines_set: dict[str, Decimal] = field(default_factory=dict)
    """Currencies whose baseline (holdings outside the bot) was set this time."""
    discrepancies: list[str] = field(default_factory=list)
    """Disagreements that could not be resolved (empty when reconciliation passed)."""


ResolveUnconfirmed = Callable[[Order], Awaitable[Order]]
"""Resolve an unconfirmed order the venue's lookup does not know (other sources, or wait): the order manager's."""


async def _resolve_pending(
    tracker: OrderTracker, report: ReconciliationReport, resolve_unconfirmed: ResolveUnconfirmed | None
) -> list[Order]:
    pending = await tracker.db(tracker.ledger.orders, PENDING_STATES)
    for order in pending:
        try:
            venue_order = await tracker.venue.fetch_order(order.symbol, order.client_order_id)
        except OrderNotFound:
            if order.status is S.NEW:
                # Written but never handed to the venue: close it without sending (the decision is stale).
                await tracker.set_status(order.client_order_id, S.CANCELLED, "never sent")
                report.orders_updated.append((order.client_order_id, order.status, S.CANCELLED))
            elif order.status in UNCONFIRMED_STATES:
                updated = (
                    await resolve_unconfirmed(order)
                    if resolve_unconfirmed is not None
                    else await tracker.set_status(order.client_order_id, S.REJECTED, "not found on venue: never placed")
                )
                if updated.status is not order.status:
                    report.orders_updated.append((order.client_order_id, order.status, updated.status))
            else:
                report.discrepancies.append(
                    f"order {order.client_order_id} ({order.symbol}) is {order.status.value} in the ledger but "
                    f"the venue does not know it"
                )
            continue
        updated = await tracker.apply(venue_order, reason="reconciliation")
        if updated.status is not order.status:
            report.orders_updated.append((order.client_order_id, order.status, updated.status))
    return pending


async def reconcile(
    tracker: OrderTracker,
    symbols: Collection[str],
    *,
    tolerance: Decimal = Decimal("1e-8"),
    resolve_unconfirmed: ResolveUnconfirmed | None = None,
    raise_on_discrepancy: bool = True,
) -> ReconciliationReport:
    """Resolve every pending ledger order on the venue, record missed fills, and compare open orders and balances.

    Raises:
        ReconciliationError: something differs that cannot be resolved (listed in the message).
    """
    report = ReconciliationReport()
    new_fills: list[Fill] = []
    tracker.fill_watchers.append(new_fills)
    try:
        pending = await _resolve_pending(tracker, report, resolve_unconfirmed)
        await tracker.sync_fills(symbols)
    finally:
        tracker.fill_watchers.remove(new_fills)
    report.fills_recorded = len(new_fills)
    # Orders are looked up one by one (new fills', venue's open ones): loading every order ever placed would
    # grow with the ledger (issue 6).
    known: dict[ClientOrderId, bool] = {}

    async def is_known(cid: ClientOrderId) -> bool:
        if cid not in known:
            known[cid] = await tracker.db(tracker.ledger.get_order, cid) is not None
        return known[cid]

    report.foreign_fills = [f.trade_id for f in new_fills if not await is_known(f.client_order_id)]

    for order in pending:
        ledger_order = await tracker.db(tracker.ledger.get_order, order.client_order_id)
        if ledger_order is None or ledger_order.filled == 0:
            continue
        by_fills = await tracker.db(tracker.ledger.filled_by_fills, order.client_order_id)
        if abs(by_fills - ledger_order.filled) > tolerance:
            report.discrepancies.append(
                f"order {order.client_order_id} ({order.symbol}): venue reports filled {ledger_order.filled} but "
                f"the fills recorded add up to {by_fills}"
            )

    for symbol in symbols:
        for venue_order in await tracker.venue.fetch_open_orders(symbol):
            if not await is_known(venue_order.client_order_id):
                report.discrepancies.append(
                    f"open order {venue_order.client_order_id} ({symbol} {venue_order.side.value} "
                    f"{venue_order.amount}) on the venue is not in the ledger; cancel it or adopt it first"
                )

    if tracker.book is not None:
        await _compare_with_book(tracker, tracker.book, symbols, report, tolerance)
    else:
        await _compare_balances(tracker, symbols, report, tolerance)
    now = tracker.clock()
    await tracker.db(tracker.ledger.set_state, "reconcile.last_at", now.isoformat(), ts=now)
    log_fn = tracker.log.error if report.discrepancies else tracker.log.info
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


def _currencies(symbols: Collection[str]) -> list[str]:
    return sorted({c for s in symbols for c in split_symbol(s)})


def _capital(book: Book, currencies: Collection[str]) -> dict[str, Decimal]:
    """The allocation per currency: the quote budget and the assigned base amounts."""
    out = dict.fromkeys(currencies, ZERO)
    out[book.account_currency] = out.get(book.account_currency, ZERO) + book.capital.quote
    for symbol, amount in book.capital.base.items():
        base = split_symbol(symbol)[0]
        out[base] = out.get(base, ZERO) + amount
    return out


async def _compare_with_book(
    tracker: OrderTracker, book: Book, symbols: Collection[str], report: ReconciliationReport, tolerance: Decimal
) -> None:
    currencies = _currencies(symbols)
    balances = await tracker.venue.fetch_balances()
    foreign = await tracker.db(tracker.ledger.foreign_flows)
    stored = await tracker.db(tracker.ledger.state, "book.")
    holdings = book.holdings()
    capital = _capital(book, currencies)
    to_store: dict[str, str] = {}
    for currency in currencies:
        total = balances.get(currency, Balance(currency, ZERO)).total
        bot = holdings.get(currency, ZERO)
        outside_now = total - bot - foreign.get(currency, ZERO)
        key = OUTSIDE_PREFIX + currency
        if key not in stored:
            if outside_now < -tolerance:
                report.discrepancies.append(
                    f"balance {currency}: the account holds {total} but the bot's allocation (bot.capital) is {bot}; "
                    f"lower bot.capital or fund the account"
                )
                continue
            to_store[key] = str(outside_now)
            to_store[CAPITAL_PREFIX + currency] = str(capital[currency])
            report.baselines_set[currency] = outside_now
            tracker.log.info("book_baseline_set", currency=currency, outside=str(outside_now), bot=str(bot))
            continue
        outside = Decimal(stored[key])
        before = Decimal(stored.get(CAPITAL_PREFIX + currency, str(capital[currency])))
        if before != capital[currency]:
            # bot.capital changed between runs: the difference moves between the user's holdings and the bot's.
            outside -= capital[currency] - before
            to_store[key] = str(outside)
            to_store[CAPITAL_PREFIX + currency] = str(capital[currency])
            tracker.log.warning(
                "book_capital_changed", currency=currency, before=str(before), now=str(capital[currency])
            )
        if total < bot - tolerance:
            report.discrepancies.append(
                f"balance {currency}: the venue holds {total}, less than the bot's own {bot} (coins of the bot "
                f"sold or withdrawn outside it?)"
            )
        elif outside < -tolerance:
            report.discrepancies.append(
                f"balance {currency}: bot.capital now asks for more than the account held outside the bot "
                f"({outside + capital[currency] - before} at the last baseline); lower bot.capital"
            )
        elif abs(outside_now - outside) > tolerance:
            report.discrepancies.append(
                f"balance {currency}: venue holds {total}; the bot's book {bot}, trades outside the bot "
                f"{foreign.get(currency, ZERO)} and the baseline {outside} held outside it leave "
                f"{outside_now - outside:+} unaccounted for (deposit, withdrawal? accept it with accept_balances)"
            )
    if report.baselines_set:
        # From now on every trade of the account is seen: the baseline already holds the earlier ones.
        cursors = await tracker.db(tracker.ledger.state, LAST_FILL_PREFIX)
        now_ms = str(ms_from_utc(tracker.clock()))
        to_store.update({LAST_FILL_PREFIX + s: now_ms for s in symbols if LAST_FILL_PREFIX + s not in cursors})
    if to_store:
        await tracker.db(tracker.ledger.set_states, to_store, ts=tracker.clock())


async def _compare_balances(
    tracker: OrderTracker, symbols: Collection[str], report: ReconciliationReport, tolerance: Decimal
) -> None:
    currencies = _currencies(symbols)
    balances = await tracker.venue.fetch_balances()
    flows = await tracker.db(tracker.ledger.currency_flows)
    stored = await tracker.db(tracker.ledger.state, BASELINE_PREFIX)
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
        if abs(unexplained - baseline) > tolerance:
            report.discrepancies.append(
                f"balance {currency}: venue holds {total}, the ledger's fills explain {flows.get(currency, ZERO)} "
                f"on top of the baseline {baseline}, so {unexplained - baseline:+} is unaccounted for "
                f"(deposit, withdrawal or a trade outside the bot? accept it with accept_balances)"
            )
    if to_store:
        await tracker.db(tracker.ledger.set_states, to_store, ts=tracker.clock())


async def accept_balances(tracker: OrderTracker, symbols: Collection[str]) -> dict[str, Decimal]:
    """Take the venue's current balances as the new baseline (after a human checked a deposit or withdrawal)."""
    currencies = _currencies(symbols)
    balances = await tracker.venue.fetch_balances()
    if tracker.book is not None:
        foreign = await tracker.db(tracker.ledger.foreign_flows)
        holdings = tracker.book.holdings()
        capital = _capital(tracker.book, currencies)
        baselines = {
            c: balances.get(c, Balance(c, ZERO)).total - holdings.get(c, ZERO) - foreign.get(c, ZERO)
            for c in currencies
        }
        values = {OUTSIDE_PREFIX + c: str(v) for c, v in baselines.items()}
        values.update({CAPITAL_PREFIX + c: str(capital[c]) for c in currencies})
    else:
        flows = await tracker.db(tracker.ledger.currency_flows)
        baselines = {c: balances.get(c, Balance(c, ZERO)).total - flows.get(c, ZERO) for c in currencies}
        values = {BASELINE_PREFIX + c: str(v) for c, v in baselines.items()}
    await tracker.db(tracker.ledger.set_states, values, ts=tracker.clock())
    tracker.log.warning("reconciliation_baseline_accepted", baselines={c: str(v) for c, v in baselines.items()})
    return baselines
