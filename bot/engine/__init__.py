"""The trading engine: the candle-driven loop and its decision core (features, policy, target, sizing, risk), its
command handler, its state records, valuation and scheduled jobs. A new kind of decision step lives here; a new
risk limit lives in bot/risk.py.
"""
