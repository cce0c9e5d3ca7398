"""Orders: the order manager (submission, unknown outcomes resolved by client order id, cancellation, timeouts),
the state machine, tracking of the venue's answers, sizing, reconciliation, and the bot's own book (the
allocation it trades and the position its fills made).

Imports adapters (types, errors, the venue protocol) and bot's clock, events and ledger.
"""
