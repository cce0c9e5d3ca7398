"""Talking to a real exchange through ccxt: the async adapter, candle streams, its config, payload conversion, the
one place ccxt errors are mapped, and the exchange profiles (a new exchange is one profile file here plus a
YAML). Imports only adapters' ground modules (types, errors, venue, costs, secrets, candle_guard).
"""
