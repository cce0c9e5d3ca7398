"""Test support: local services that speak real wire formats (see tests/support/binance_server.py)."""
