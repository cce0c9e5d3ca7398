"""The serving side: the daemon that trades ONNX policies (engine, orders, ledger, risk, sinks, the `ai-trading bot`
CLI). Imports `adapters` and, from `monitoring`, only its ground floor (logging, metrics, progress, run store, the
W&B-server check); never `training` or torch (tests/test_import_rules.py).
"""
