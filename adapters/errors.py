"""Errors raised by adapters, named for what the caller should do about them."""

from __future__ import annotations


class AdapterError(Exception):
    """Base class of every error an adapter raises."""


class DataError(AdapterError, ValueError):
    """Market data is unusable as given (corrupt file, gaps under the `error` policy, unknown format)."""


class TransientError(AdapterError):
    """A temporary failure: retry with jittered backoff, but only for idempotent calls."""


class OrderRejected(AdapterError):
    """The venue (or our own pre-checks) refused the order: record it, do not retry."""


class InvalidOrder(OrderRejected, ValueError):
    """The order is malformed or breaks the market's rules (unknown symbol, below minimum, bad size)."""


class InsufficientFunds(OrderRejected):
    """The account cannot pay for the order."""


class OrderNotFound(AdapterError):
    """The venue does not know the order asked for."""


class OrderStateUnknown(AdapterError):
    """An order was sent but its outcome is unknown: resolve it by client order id, never resend blindly."""


class FatalError(AdapterError):
    """Stop trading and alert: authentication failed, the account is locked, the config is wrong."""
