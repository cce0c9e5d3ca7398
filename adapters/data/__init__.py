"""Candle data: loading (parquet, CSV, Freqtrade), validation with per-problem policies, cleaning, reports, splits,
download, the bundled sample and the `ai-trading data` CLI. Imports adapters' ground modules and adapters.ccxt
(download only).
"""
