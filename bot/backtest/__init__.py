"""Backtests: candles replayed through the daemon's engine, orders, ledger and risk on the paper venue in market
time, and the daemon's `mode=backtest`.

Imports adapters (data, the paper venue and replay), the rest of bot, and monitoring's progress and run store.
"""
