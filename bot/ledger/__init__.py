"""The ledger: orders, fills, positions, closed trades, equity, events and bot state in SQLite or PostgreSQL
through SQLAlchemy Core; its schema and migrations, its record types and position accounting. Imports adapters'
types and bot's clock, events and errors.
"""
