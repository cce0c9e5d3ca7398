"""The trading engine: the candle-driven loop and its decision core (features, policy, target, sizing, risk), its
command handler, its state records, valuation and scheduled jobs. A new kind of decision step lives here; a new
risk limit lives in bot/risk.py.

Imports adapters' ground modules (types, errors, costs, the venue protocol, the candle guard) and bot's clock,
errors, events, model, orders, ledger, risk, shadow and sinks.
"""
