"""ccxt exceptions to adapter errors, mapped in one place, narrowest first."""

from __future__ import annotations

import ccxt

from adapters.errors import (
    AdapterError,
    FatalError,
    InsufficientFunds,
    InvalidOrder,
    OrderNotFound,
    OrderRejected,
    TransientError,
)


class OrderNotPlaced(TransientError):
    """An order whose submission failed is confirmed absent at the venue: resend it with the same client order id."""


def _is_order_action(action: str) -> bool:
    return action.startswith(("create_order", "cancel_order"))


def map_ccxt_error(e: Exception, action: str) -> AdapterError:
    """Translate a ccxt exception into the adapter error that says what the caller should do."""
    message = f"{action} failed: {type(e).__name__}: {e}"
    # Narrowest first: ccxt's OrderNotFound is an InvalidOrder, InsufficientFunds and BadSymbol are ExchangeErrors,
    # InvalidNonce and the rate-limit errors are NetworkErrors.
    if isinstance(e, ccxt.OrderNotFound):
        return OrderNotFound(message)
    if isinstance(e, ccxt.InsufficientFunds):
        return InsufficientFunds(message)
    if isinstance(e, ccxt.InvalidOrder | ccxt.BadSymbol):
        return InvalidOrder(message)
    if isinstance(e, ccxt.AuthenticationError | ccxt.AccountNotEnabled | ccxt.NotSupported):
        return FatalError(message)
    if isinstance(e, ccxt.InvalidNonce):
        return TransientError(message + " (clock skew: the adapter re-syncs with the exchange clock)")
    if isinstance(e, ccxt.OperationFailed | TimeoutError):
        # NetworkError (timeouts, 5xx, 429/418, maintenance), BadResponse, CancelPending.
        return TransientError(message)
    if isinstance(e, ccxt.BadRequest | ccxt.OperationRejected):
        return OrderRejected(message) if _is_order_action(action) else FatalError(message)
    if isinstance(e, ccxt.ExchangeError) and _is_order_action(action):
        return OrderRejected(message)
    return FatalError(message)
