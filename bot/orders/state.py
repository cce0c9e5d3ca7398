"""The order state machine: which state changes are legal, and which states still need the venue's answer."""

from __future__ import annotations

import structlog

from adapters.types import OrderStatus

log = structlog.get_logger()

S = OrderStatus


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


def check_transition(client_order_id: str, current: OrderStatus, new: OrderStatus) -> None:
    """Raise IllegalTransition (and log it) unless the state machine allows `current` -> `new`."""
    if new in ALLOWED_TRANSITIONS[current]:
        return
    log.error(
        "order_transition_illegal", client_order_id=client_order_id, from_status=current.value, to_status=new.value
    )
    raise IllegalTransition(f"order {client_order_id}: illegal transition {current.value} -> {new.value}")
