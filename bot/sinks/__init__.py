"""Where the daemon's events go besides the ledger: the non-blocking event bus, the W&B live run and its charts,
MQTT (events out, commands in) and the scheduled daily report. A new sink is one module here, registered in
bot/wiring.py; Prometheus metrics live in monitoring/metrics.py.

Imports bot's clock, events, ledger, config and commands, and monitoring's metrics (and, for the daily report only,
monitoring.reports).
"""
