"""The simulated venue: its fill rules and account book, its config, and the historical replay feed that drives it
in a backtest. Imports adapters' ground modules and adapters.data.
"""
